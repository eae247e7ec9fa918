"""The README queries (rvos_batch.query) on a small OUT store, locally and on S3, and their plain pyarrow twins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from rvos_batch import query, storage
from rvos_batch.maskstore import MaskStore, concat_masks, mask_file_bytes, mask_table, video_table

H, W = 20, 30  # 600 pixels: 1% is 6 pixels


def square(side: int, top: int = 0, left: int = 0) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[top : top + side, left : left + side] = True
    return m


def build_store(out: str) -> dict[tuple[str, int, int], np.ndarray]:
    """Two committed shards (videos a, b) and one uncommitted (video c); returns the committed masks."""
    store = MaskStore(out)
    truth: dict[tuple[str, int, int], np.ndarray] = {}
    for shard, video in enumerate(["a", "b", "c"]):
        tables = []
        for f in range(4):
            # object 3 grows: f=0 -> 1 px (too small), f=1 -> 4 px, f=2 -> 9 px, f=3 -> 16 px (> 6 px)
            masks = np.stack([square(5, 10, 10), square(f + 1)])
            tables.append(mask_table(video, f, [1, 3], masks, [0.9, 0.8]))
            if video != "c":
                truth[(video, f, 1)], truth[(video, f, 3)] = masks[0], masks[1]
        videos = video_table(
            [{"video_id": video, "num_frames": 4, "num_objects": 2, "status": "ok", "error": None, "seconds": 0.5}]
        )
        if video == "c":  # a worker died between writing data and the marker
            fs, root = storage.get_fs(out)
            fs.pipe_file(
                storage.join(root.rstrip("/"), "masks", "shard-00002.parquet"), mask_file_bytes(concat_masks(tables))
            )
        else:
            store.commit_shard(shard, concat_masks(tables), videos, {"videos": 1})
    return truth


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def out(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty OUT location: a local folder, or a fresh prefix on the moto S3 server of tests/conftest.py."""
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def test_video_masks(out: str) -> None:
    truth = build_store(out)
    table = query.video_masks(out, "b")
    keys = list(zip(table.column("frame_index").to_pylist(), table.column("object_id").to_pylist(), strict=True))
    assert keys == [(f, o) for f in range(4) for o in (1, 3)]
    for i, (f, o) in enumerate(keys):
        np.testing.assert_array_equal(query.decode_mask(table, i), truth[("b", f, o)])
    assert query.video_masks(out, "c").num_rows == 0  # uncommitted shard
    assert query.video_masks(out, "nope").num_rows == 0


def test_frames_where(out: str) -> None:
    build_store(out)
    table = query.frames_where(out, video_id="a", object_id=3, min_area_fraction=0.01)
    assert table.column("frame_index").to_pylist() == [2, 3]  # 9 and 16 pixels > 6
    assert set(table.column("object_id").to_pylist()) == {3}
    everywhere = query.frames_where(out, object_id=3, min_area_fraction=0.02)  # > 12 px
    assert list(zip(everywhere["video_id"].to_pylist(), everywhere["frame_index"].to_pylist(), strict=True)) == [
        ("a", 3),
        ("b", 3),
    ]
    row = everywhere.slice(1, 1).to_pylist()[0]
    np.testing.assert_array_equal(query.decode_mask(row), square(4))


def test_videos(out: str) -> None:
    build_store(out)
    table = query.videos(out)
    assert table.column("video_id").to_pylist() == ["a", "b"]
    assert table.column("num_frames").to_pylist() == [4, 4]


def test_plain_pyarrow_equivalents_match_locally(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    build_store(out)
    # plain pyarrow cannot see commit markers: it also reads the uncommitted file of video c, so filter by video
    masks = ds.dataset(out + "/masks")
    assert set(masks.to_table(columns=["video_id"])["video_id"].to_pylist()) == {"a", "b", "c"}
    plain = masks.to_table(
        filter=(pc.field("video_id") == "a")
        & (pc.field("object_id") == 3)
        & (pc.field("area") > pc.field("height") * pc.field("width") * 0.01)
    )
    assert plain.sort_by("frame_index").equals(query.frames_where(out, video_id="a"))
    assert masks.to_table(filter=pc.field("video_id") == "b").equals(query.video_masks(out, "b"))
    assert ds.dataset(out + "/videos").to_table().sort_by("video_id").equals(query.videos(out))


def test_decode_mask_index_error(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    build_store(out)
    with pytest.raises(IndexError):
        query.decode_mask(query.video_masks(out, "a"), 99)
