"""Mask tables (round trip, order, row groups with statistics) and the OUT store's commit protocol."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rvos_batch import maskstore, rle, storage
from rvos_batch.errors import CorpusError, MaskStoreError
from rvos_batch.maskstore import (
    MaskStore,
    concat_masks,
    mask_table,
    read_mask_dataset,
    sort_masks,
    video_table,
    write_mask_dataset,
    write_mask_file,
)
from rvos_batch.schema import MASK_SCHEMA, VIDEO_SCHEMA


def random_masks(rng: np.random.Generator, k: int, h: int = 12, w: int = 17) -> np.ndarray:
    masks = rng.random((k, h, w)) < 0.3
    if k:
        masks[0] = False  # an empty mask
    return masks


def numpy_bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def shard_tables(shard: int, videos: list[str], frames: int = 3, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed + shard)
    tables = [mask_table(v, f, [1, 2], random_masks(rng, 2), [0.5, 0.9]) for v in videos for f in range(frames)]
    rows = [
        {"video_id": v, "num_frames": frames, "num_objects": 2, "status": "ok", "error": None, "seconds": 0.1}
        for v in videos
    ]
    return concat_masks(tables), video_table(rows)


# ------------------------------------------------------------------------------------------ mask tables


def test_mask_table_round_trip() -> None:
    rng = np.random.default_rng(1)
    masks = random_masks(rng, 3)
    ids = [7, 2, 5]  # not sorted: rows come out sorted by object_id
    table = mask_table("vid", 4, ids, masks, scores=[0.1, 0.2, 0.3])
    assert table.schema.equals(MASK_SCHEMA)
    assert table.column("object_id").to_pylist() == [2, 5, 7]
    by_id = dict(zip(ids, masks, strict=True))
    scores = dict(zip(ids, [0.1, 0.2, 0.3], strict=True))
    for row in table.to_pylist():
        mask = by_id[row["object_id"]]
        decoded = rle.decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
        np.testing.assert_array_equal(decoded, mask)
        assert row["area"] == int(mask.sum())
        assert row["bbox"] == pytest.approx(numpy_bbox(mask))
        assert row["score"] == pytest.approx(scores[row["object_id"]])
        assert (row["video_id"], row["frame_index"], row["height"], row["width"]) == ("vid", 4, 12, 17)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(0, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_mask_table_round_trip_property(k: int, h: int, w: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((k, h, w)) < density
    ids = rng.permutation(50)[:k] + 1
    table = mask_table("v", 1, ids, masks)
    order = np.argsort(ids)
    assert table.column("object_id").to_pylist() == ids[order].tolist()
    for i, row in enumerate(table.to_pylist()):
        decoded = rle.decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
        np.testing.assert_array_equal(decoded, masks[order[i]])
        assert row["area"] == int(masks[order[i]].sum())
        assert row["bbox"] == pytest.approx(numpy_bbox(masks[order[i]]))


def test_mask_table_defaults_and_empty() -> None:
    rng = np.random.default_rng(2)
    table = mask_table("v", 0, [3], random_masks(rng, 1))
    assert table.column("score").to_pylist() == [1.0]
    empty = mask_table("v", 0, [], np.zeros((0, 4, 5), bool))
    assert empty.num_rows == 0 and empty.schema.equals(MASK_SCHEMA)


@pytest.mark.parametrize(
    "ids, masks, scores, match",
    [
        ([1, 2], np.zeros((3, 4, 4), bool), None, "3 masks but 2 object ids"),
        ([1, 1], np.zeros((2, 4, 4), bool), None, "unique"),
        ([1], np.zeros((4, 4), bool), None, "shape"),
        ([1], np.zeros((1, 4, 4), bool), [0.1, 0.2], "scores"),
        ([-1], np.zeros((1, 4, 4), bool), None, "object ids must be"),
    ],
)
def test_mask_table_rejects(ids, masks, scores, match) -> None:
    with pytest.raises(ValueError, match=match):
        mask_table("v", 0, ids, masks, scores)


def test_sort_and_concat() -> None:
    rng = np.random.default_rng(3)
    parts = [mask_table(v, f, [2, 1], random_masks(rng, 2)) for v, f in [("b", 1), ("a", 2), ("b", 0), ("a", 0)]]
    table = concat_masks(parts)
    keys = list(zip(*(table.column(c).to_pylist() for c in ("video_id", "frame_index", "object_id")), strict=True))
    assert keys == sorted(keys) and len(keys) == 8
    shuffled = table.take(pa.array(rng.permutation(8)))
    assert sort_masks(shuffled).equals(table)
    assert concat_masks([]).num_rows == 0


def test_write_mask_file_sorted_row_groups_and_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maskstore, "MASK_ROW_GROUP_ROWS", 5)
    rng = np.random.default_rng(4)
    parts = [mask_table(v, f, [1, 2, 3], random_masks(rng, 3)) for v in ("c", "a", "b") for f in (2, 0, 1)]
    table = pa.concat_tables(parts)  # unsorted input
    fs, path = storage.get_fs(str(tmp_path / "m.parquet"))
    info = write_mask_file(fs, path, table)
    data = (tmp_path / "m.parquet").read_bytes()
    assert info == {"rows": 27, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]  # no temporary left behind
    back = pq.read_table(path)
    assert back.schema.equals(MASK_SCHEMA)
    assert back.equals(sort_masks(table))
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 6  # 27 rows in groups of 5
    for rg in range(meta.num_row_groups):
        for col in ("video_id", "frame_index", "object_id", "area", "score"):
            column = meta.row_group(rg).column(MASK_SCHEMA.get_field_index(col))
            assert column.compression == "ZSTD"
            assert column.statistics is not None and column.statistics.has_min_max
    # statistics make a video filter skip row groups: only the groups holding "b" are read
    first, last = meta.row_group(0).column(0).statistics, meta.row_group(5).column(0).statistics
    assert (first.min, last.max) == ("a", "c")


def test_mask_dataset_write_read_filter(tmp_path: Path) -> None:
    table, _ = shard_tables(0, ["x", "y"])
    url = str(tmp_path / "prompts")
    assert write_mask_dataset(url, table) == url
    assert sorted(os.listdir(url)) == ["part-00000.parquet"]
    assert read_mask_dataset(url).equals(table)
    only_y = read_mask_dataset(url, filter=pc.field("video_id") == "y")
    assert set(only_y.column("video_id").to_pylist()) == {"y"} and only_y.num_rows == table.num_rows // 2
    write_mask_dataset(url, table.slice(0, 2))  # rewriting replaces
    assert read_mask_dataset(url).num_rows == 2
    pq.write_table(table, os.path.join(url, "part-00001.parquet"))
    with pytest.raises(MaskStoreError, match="other Parquet files"):
        write_mask_dataset(url, table)


def test_read_mask_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        read_mask_dataset(str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"video_id": ["a"], "frame_index": [0]}), bad / "part-00000.parquet")
    with pytest.raises(CorpusError, match="missing required column 'object_id'"):
        read_mask_dataset(str(bad))


def test_video_table() -> None:
    t = video_table([{"video_id": "a", "num_frames": 3, "num_objects": 1, "status": "ok", "seconds": 1.0}])
    assert t.schema.equals(VIDEO_SCHEMA) and t.column("error").to_pylist() == [None]
    with pytest.raises(ValueError, match="unknown keys"):
        video_table([{"video_id": "a", "bogus": 1, "status": "ok"}])
    with pytest.raises(ValueError, match="status must be"):
        video_table([{"video_id": "a", "num_frames": 1, "num_objects": 0, "status": "maybe", "seconds": 0.0}])


# ------------------------------------------------------------------------------------------ the OUT store


def test_commit_makes_visible_and_marker_describes_files(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    store = MaskStore(out)
    assert store.masks_dataset().to_table().num_rows == 0
    assert store.videos_dataset().to_table().num_rows == 0
    masks, videos = shard_tables(3, ["a", "b"])
    marker = store.commit_shard(3, masks, videos, {"seconds": 1.5, "videos": 2})
    assert store.committed_shards() == {3: marker}
    assert store.committed_shard_ids() == {3}
    assert marker["rows"] == {"masks": masks.num_rows, "videos": 2}
    assert marker["stats"] == {"seconds": 1.5, "videos": 2}
    for kind in ("masks", "videos"):
        info = marker["files"][kind]
        assert info["path"] == f"{kind}/shard-00003.parquet"
        data = (tmp_path / "out" / info["path"]).read_bytes()
        assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
    assert store.masks_dataset().to_table().equals(masks)
    assert store.videos_dataset().to_table().equals(videos)
    assert sorted(os.listdir(tmp_path / "out" / "masks")) == ["shard-00003.parquet"]  # no _tmp left


def test_uncommitted_shard_is_invisible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "out")
    store = MaskStore(out)
    masks0, videos0 = shard_tables(0, ["a"])
    store.commit_shard(0, masks0, videos0, {})
    masks1, videos1 = shard_tables(1, ["b"])

    def crash(*args, **kwargs):
        raise OSError("worker died before the marker")

    monkeypatch.setattr(storage, "write_json_atomic", crash)
    with pytest.raises(OSError, match="worker died"):
        store.commit_shard(1, masks1, videos1, {})
    monkeypatch.undo()
    assert (tmp_path / "out" / "masks" / "shard-00001.parquet").exists()  # data is there ...
    assert set(store.committed_shards()) == {0}  # ... but not committed
    assert store.committed_shard_ids() == {0}  # the names-only view agrees
    assert set(store.masks_dataset().to_table().column("video_id").to_pylist()) == {"a"}
    assert store.videos_dataset().to_table().column("video_id").to_pylist() == ["a"]
    store.commit_shard(1, masks1, videos1, {})  # the retry commits it
    assert set(store.masks_dataset().to_table().column("video_id").to_pylist()) == {"a", "b"}


def test_recommit_replaces_not_duplicates(tmp_path: Path) -> None:
    store = MaskStore(str(tmp_path / "out"))
    masks, videos = shard_tables(0, ["a", "b"])
    store.commit_shard(0, masks, videos, {"attempt": 1})
    store.commit_shard(0, masks, videos, {"attempt": 2})
    assert store.masks_dataset().to_table().num_rows == masks.num_rows
    assert store.videos_dataset().to_table().num_rows == 2
    assert store.committed_shards()[0]["stats"] == {"attempt": 2}
    assert sorted(os.listdir(tmp_path / "out" / "_commits")) == ["shard-00000.json"]


def test_plain_pyarrow_dataset_opens_store_and_ignores_tmp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = MaskStore(str(out))
    masks, videos = shard_tables(0, ["a"])
    store.commit_shard(0, masks, videos, {})
    # leftovers of interrupted writers: a whole Parquet file under a _tmp name, and a junk .tmp file
    pq.write_table(masks, out / "masks" / "_tmp-shard-00001-deadbeef.parquet")
    (out / "masks" / ".tmp-0123-shard-00002.parquet").write_bytes(b"not parquet")
    plain = ds.dataset(str(out / "masks"))
    assert [os.path.basename(f) for f in plain.files] == ["shard-00000.parquet"]
    assert plain.to_table().num_rows == masks.num_rows
    assert ds.dataset(str(out / "videos")).to_table().num_rows == 1
    assert store.masks_dataset().to_table().num_rows == masks.num_rows
    assert sorted(os.path.basename(p) for p in store.tmp_files()) == [
        ".tmp-0123-shard-00002.parquet",
        "_tmp-shard-00001-deadbeef.parquet",
    ]
    assert store.cleanup_tmp(min_age_s=3600) == []  # fresh: maybe still being written
    old = time.time() - 7200
    for p in store.tmp_files():
        os.utime(p, (old, old))
    assert len(store.cleanup_tmp(min_age_s=3600)) == 2
    assert store.tmp_files() == []
    assert sorted(os.listdir(out / "masks")) == ["shard-00000.parquet"]


def test_failed_shard_record_cleared_by_commit(tmp_path: Path) -> None:
    store = MaskStore(str(tmp_path / "out"))
    store.failed_shard(4, "CUDA out of memory")
    rec = store.failed_shard(4, "CUDA out of memory again")
    assert rec["attempts"] == 2 and store.failed_shards()[4]["error"] == "CUDA out of memory again"
    assert store.record_failed_shard(4, "gave up", 3)["attempts"] == 3
    masks, videos = shard_tables(4, ["a"])
    store.commit_shard(4, masks, videos, {})
    assert store.failed_shards() == {} and set(store.committed_shards()) == {4}


def test_run_json_and_errors(tmp_path: Path) -> None:
    store = MaskStore(str(tmp_path / "out"))
    assert store.read_run() is None
    store.write_run({"corpus": "/data/corpus", "fingerprint": "abc"})
    assert store.read_run() == {"corpus": "/data/corpus", "fingerprint": "abc"}
    masks, videos = shard_tables(0, ["a"])
    with pytest.raises(MaskStoreError, match="shard id"):
        store.commit_shard(-1, masks, videos, {})
    with pytest.raises(MaskStoreError, match="plain JSON"):
        store.commit_shard(0, masks, videos, {"x": object()})
    store.commit_shard(0, masks, videos, {})
    os.remove(tmp_path / "out" / "masks" / "shard-00000.parquet")
    with pytest.raises(MaskStoreError, match="committed but its file"):
        store.masks_dataset()


def test_lock_excludes_a_second_run(tmp_path: Path) -> None:
    store = MaskStore(str(tmp_path / "out"))
    with store.lock() as holder:
        assert holder["pid"] == os.getpid()
        with pytest.raises(MaskStoreError, match="in use by another run"):
            with MaskStore(str(tmp_path / "out")).lock():
                pass
    assert not (tmp_path / "out" / "_lock.json").exists()
    with store.lock():  # released: can be taken again
        pass


def test_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out"
    out.mkdir()
    lock = {"owner": "x", "host": socket.gethostname(), "pid": int(dead.stdout), "acquired_at": "earlier"}
    (out / "_lock.json").write_text(json.dumps(lock))
    with MaskStore(str(out)).lock() as holder:
        assert json.loads((out / "_lock.json").read_text())["owner"] == holder["owner"]
    (out / "_lock.json").write_text(json.dumps({**lock, "host": "another-host"}))
    with pytest.raises(MaskStoreError, match="another-host"):
        with MaskStore(str(out)).lock():
            pass
    with MaskStore(str(out)).lock(force=True):
        pass
    assert not (out / "_lock.json").exists()


@pytest.mark.s3
def test_lock_on_s3(s3_bucket: str) -> None:
    store = MaskStore(s3_bucket + "/out")
    with store.lock():
        with pytest.raises(MaskStoreError, match="in use by another run"):
            with MaskStore(s3_bucket + "/out").lock():
                pass
    with store.lock():
        pass


@pytest.mark.s3
def test_commit_protocol_on_s3(s3_bucket: str) -> None:
    s3_out = s3_bucket + "/out"
    store = MaskStore(s3_out)
    masks0, videos0 = shard_tables(0, ["a"])
    masks1, videos1 = shard_tables(1, ["b"])
    store.commit_shard(0, masks0, videos0, {"n": 1})
    store.commit_shard(0, masks0, videos0, {"n": 2})  # retry: overwrite
    # shard 1: data present, marker missing
    fs, root = storage.get_fs(s3_out)
    fs.pipe_file(f"{root}/masks/shard-00001.parquet", maskstore.mask_file_bytes(masks1))
    fresh = MaskStore(s3_out)
    assert set(fresh.committed_shards()) == {0}
    assert fresh.masks_dataset().to_table().equals(masks0)
    assert fresh.videos_dataset().to_table().equals(videos0)
    fresh.commit_shard(1, masks1, videos1, {})
    assert fresh.masks_dataset().to_table().num_rows == masks0.num_rows + masks1.num_rows
    assert fs.ls(f"{root}/masks", detail=False, refresh=True) == [
        f"{root}/masks/shard-00000.parquet",
        f"{root}/masks/shard-00001.parquet",
    ]
    fresh.write_run({"corpus": "s3://x/corpus"})
    assert MaskStore(s3_out).read_run() == {"corpus": "s3://x/corpus"}


def test_many_markers_read_in_parallel_come_back_in_order(tmp_path: Path) -> None:
    store = MaskStore(str(tmp_path / "out"))
    for i in (7, 0, 12, 3, 5, 9, 1):
        masks, videos = shard_tables(i, [f"v{i}"])
        store.commit_shard(i, masks, videos, {"videos": i})
    got = store.committed_shards()
    assert list(got) == [0, 1, 3, 5, 7, 9, 12]
    assert [m["stats"]["videos"] for m in got.values()] == [0, 1, 3, 5, 7, 9, 12]
    assert store.committed_shard_ids() == set(got)
