"""DAVIS PNG export (round trip, overlaps, hostile video ids, id limits) and the contact sheet."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos_batch import imaging
from rvos_batch.cli import export as cli_export
from rvos_batch.cli import show as cli_show
from rvos_batch.export import UnsafeVideoIdError, export_davis, safe_video_dir
from rvos_batch.maskstore import MaskStore, concat_masks, mask_table, video_table, write_mask_dataset
from rvos_batch.show import contact_sheet, pick_frames

H, W = 24, 40
DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2017-val-osvos"


def commit_videos(
    out: str, videos: dict[str, dict[int, np.ndarray]], num_frames: dict[str, int], first_shard: int = 0
) -> None:
    """Commit each video as its own shard; ``videos[v][f]`` is an (H, W) id map of that frame."""
    store = MaskStore(out)
    for shard, (video, frames) in enumerate(videos.items(), start=first_shard):
        tables = []
        for f, ids in frames.items():
            objs = [int(o) for o in np.unique(ids) if o]
            tables.append(mask_table(video, f, objs, np.stack([ids == o for o in objs]).reshape(len(objs), *ids.shape)))
        rows = [{"video_id": video, "num_frames": num_frames[video], "num_objects": 1, "status": "ok", "seconds": 0.0}]
        store.commit_shard(shard, concat_masks(tables), video_table(rows), {})


def id_map(seed: int, ids: tuple[int, ...] = (1, 2, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array((0, *ids), dtype=np.uint8), size=(H, W))


def test_export_round_trip_and_empty_frames(tmp_path: Path) -> None:
    out, dest = str(tmp_path / "out"), tmp_path / "dest"
    frames = {0: id_map(0), 1: id_map(1), 3: id_map(3, (4, 200))}  # frame 2 has no masks
    commit_videos(out, {"cat": frames, "dog": {0: id_map(9)}}, {"cat": 5, "dog": 1})
    report = export_davis(out, dest)
    assert report.ok and [v.video_id for v in report.videos] == ["cat", "dog"]
    assert sorted(os.listdir(dest / "cat")) == [f"{i:05d}.png" for i in range(5)]  # 0..4: num_frames is known
    for f in range(5):
        back = imaging.read_palette_png(dest / "cat" / f"{f:05d}.png")
        np.testing.assert_array_equal(back, frames.get(f, np.zeros((H, W), np.uint8)))
    np.testing.assert_array_equal(imaging.read_palette_png(dest / "dog" / "00000.png"), id_map(9))
    with Image.open(dest / "cat" / "00000.png") as im:
        assert im.mode == "P" and im.size == (W, H)


def test_overlapping_masks_highest_score_wins(tmp_path: Path) -> None:
    a = np.zeros((H, W), bool)
    a[:, :20] = True
    b = np.zeros((H, W), bool)
    b[:, 10:30] = True
    store = MaskStore(str(tmp_path / "out"))
    table = concat_masks(
        [mask_table("v", 0, [1, 2], np.stack([a, b]), [0.9, 0.3]), mask_table("v", 1, [1, 2], np.stack([a, b]))]
    )
    rows = [{"video_id": "v", "num_frames": 2, "num_objects": 2, "status": "ok", "seconds": 0.0}]
    store.commit_shard(0, table, video_table(rows), {})
    export_davis(str(tmp_path / "out"), tmp_path / "dest")
    f0 = imaging.read_palette_png(tmp_path / "dest" / "v" / "00000.png")
    assert (f0[:, 10:20] == 1).all() and (f0[:, 20:30] == 2).all() and (f0[:, 30:] == 0).all()
    f1 = imaging.read_palette_png(tmp_path / "dest" / "v" / "00001.png")  # equal scores: higher id on top
    assert (f1[:, :10] == 1).all() and (f1[:, 10:30] == 2).all()


@pytest.mark.skipif(not DAVIS.is_dir(), reason="shared DAVIS masks not present")
def test_export_real_davis_masks_round_trip(tmp_path: Path) -> None:
    video = sorted(os.listdir(DAVIS))[0]
    frames = {f: imaging.read_palette_png(DAVIS / video / f"{f:05d}.png") for f in range(3)}
    commit_videos(str(tmp_path / "out"), {video: frames}, {video: 3})
    assert export_davis(str(tmp_path / "out"), tmp_path / "dest").ok
    for f, ids in frames.items():
        exported = (tmp_path / "dest" / video / f"{f:05d}.png").read_bytes()
        np.testing.assert_array_equal(imaging.read_palette_png(exported), ids)


HOSTILE = ["../evil", "/abs", "a/b", "..", ".", "a\\b", "nul\x00x", "line\nbreak", "C:evil", "link"]


def test_hostile_video_ids_stay_inside_dest(tmp_path: Path) -> None:
    out, dest, outside = str(tmp_path / "out"), tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    os.symlink(outside, dest / "link")  # an existing symlink out of DEST
    commit_videos(
        out, {v: {0: id_map(i)} for i, v in enumerate(["fine", *HOSTILE])}, dict.fromkeys(["fine", *HOSTILE], 1)
    )
    report = export_davis(out, dest)
    errors = {v.video_id: v.error for v in report.errors}
    assert set(errors) == set(HOSTILE)
    assert [v.video_id for v in report.videos if v.error is None] == ["fine"]
    assert os.listdir(dest / "fine") == ["00000.png"]
    assert sorted(os.listdir(dest)) == ["fine", "link"] and os.listdir(outside) == []
    assert sorted(os.listdir(tmp_path)) == ["dest", "out", "outside"]
    for bad in HOSTILE:
        with pytest.raises(UnsafeVideoIdError, match="video id"):
            safe_video_dir(dest, bad)
    assert safe_video_dir(dest, "ok..name") == dest.resolve() / "ok..name"


def test_object_ids_above_255_fail_that_video_only(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    store = MaskStore(out)
    m = np.zeros((1, H, W), bool)
    m[0, 2:5, 2:5] = True
    rows = [{"video_id": "big", "num_frames": 1, "num_objects": 1, "status": "ok", "seconds": 0.0}]
    store.commit_shard(0, mask_table("big", 0, [300], m), video_table(rows), {})
    commit_videos(out, {"small": {0: id_map(1)}}, {"small": 1}, first_shard=1)
    report = export_davis(out, tmp_path / "dest")
    assert [v.video_id for v in report.errors] == ["big"]
    assert "300" in report.errors[0].error and "1..255" in report.errors[0].error
    assert os.listdir(tmp_path / "dest" / "small") == ["00000.png"]
    assert not (tmp_path / "dest" / "big").exists()


def test_export_plain_mask_dataset_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = str(tmp_path / "corpus" / "prompts")
    ids = id_map(5)
    objs = [1, 2, 3]
    write_mask_dataset(prompts, concat_masks([mask_table("v1", 7, objs, np.stack([ids == o for o in objs]))]))
    parser = argparse.ArgumentParser()
    cli_export.configure_parser(parser)
    args = parser.parse_args([prompts, str(tmp_path / "dest"), "--videos", "v1", "missing"])
    assert cli_export.run(args) == 1  # "missing" is not there
    captured = capsys.readouterr()
    assert "'missing'" in captured.err and "exported 1 of 2 videos (1 frames)" in captured.out
    assert os.listdir(tmp_path / "dest" / "v1") == ["00007.png"]  # frame count unknown: only frames with masks
    np.testing.assert_array_equal(imaging.read_palette_png(tmp_path / "dest" / "v1" / "00007.png"), ids)


# ------------------------------------------------------------------------------------------ show


def test_pick_frames() -> None:
    assert pick_frames(10, 4) == [0, 3, 6, 9]
    assert pick_frames(3, 8) == [0, 1, 2]
    assert pick_frames(5, 1) == [0]
    assert pick_frames(0, 3) == []


def write_corpus(url: str, video: str, n: int) -> None:
    from rvos_batch.corpus import CorpusWriter

    def frames():
        for f in range(n):
            rgb = np.full((H, W, 3), 200, np.uint8)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            yield f, buf.getvalue(), W, H, None

    with CorpusWriter(url) as writer:
        writer.add_video(video, frames())


def test_show_with_corpus_from_run_json(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    mask = np.zeros((H, W), np.uint8)
    mask[4:20, 4:20] = 1
    commit_videos(out, {"cat": {f: mask for f in range(6)}}, {"cat": 6})
    write_corpus(str(tmp_path / "corpus"), "cat", 6)
    MaskStore(out).write_run({"corpus": str(tmp_path / "corpus")})
    sheet = contact_sheet(out, "cat", str(tmp_path / "sheet.png"), frames=4, cols=3, tile_width=80)
    assert sheet.note is None and sheet.frame_indices == (0, 2, 3, 5)
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.size == sheet.image.size
    assert sheet.image.size == (3 * 80, 2 * 48)  # tiles 80 x 48 (24 x 40 scaled by 2), 2 rows
    px = np.asarray(sheet.image)
    assert tuple(px[45, 70]) == (200, 200, 200)  # frame pixel outside the mask
    r, g, b = px[30, 12]
    assert r > g + 40 and r > b + 40  # inside the mask: blended towards object 1's dark red
    assert tuple(px[96 - 1, 3 * 80 - 1]) == (0, 0, 0)  # the sixth slot is empty


def test_show_without_corpus_draws_on_black_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    mask = np.zeros((H, W), np.uint8)
    mask[:, :10] = 2
    commit_videos(out, {"cat": {0: mask, 9: mask}}, {"cat": 10})
    sheet = contact_sheet(out, "cat", frames=3, cols=4, tile_width=40)
    assert "black" in sheet.note and sheet.frame_indices == (0, 4, 9)
    assert sheet.image.size == (3 * 40, 24)
    parser = argparse.ArgumentParser()
    cli_show.configure_parser(parser)
    png = tmp_path / "preview.png"
    args = parser.parse_args([out, "--video", "cat", "--out", str(png), "--frames", "5", "--cols", "2"])
    assert cli_show.run(args) == 0
    assert "black" in capsys.readouterr().err
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (2 * 320, 3 * 192)  # 5 tiles of 320 x 192 in 2 columns


def test_failed_video_is_reported_not_exported(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    rows = [
        {"video_id": "ok", "num_frames": 1, "num_objects": 1, "status": "ok", "seconds": 0.0},
        {
            "video_id": "broken",
            "num_frames": 0,
            "num_objects": 0,
            "status": "failed",
            "error": "bad frame 3",
            "seconds": 0.0,
        },
    ]
    ids = id_map(2)
    masks = mask_table("ok", 0, [1, 2, 3], np.stack([ids == o for o in (1, 2, 3)]))
    MaskStore(out).commit_shard(0, masks, video_table(rows), {})
    report = export_davis(out, tmp_path / "dest")
    assert [(v.video_id, v.frames) for v in report.videos] == [("broken", 0), ("ok", 1)]
    assert "bad frame 3" in report.errors[0].error and len(report.errors) == 1


def test_show_with_unreadable_corpus_says_so(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    commit_videos(out, {"cat": {0: id_map(3)}}, {"cat": 1})
    sheet = contact_sheet(out, "cat", corpus=str(tmp_path / "no-such-corpus"), frames=2, tile_width=40)
    assert "no-such-corpus" in sheet.note and "black" in sheet.note
    assert sheet.image.size == (40, 24)
    write_corpus(str(tmp_path / "corpus"), "other", 2)
    sheet = contact_sheet(out, "cat", corpus=str(tmp_path / "corpus"), frames=2, tile_width=40)
    assert "not in corpus" in sheet.note
