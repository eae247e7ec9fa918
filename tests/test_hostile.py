"""Hostile input: every bad frame, video, file, id or prompt gets a clear error naming it, and nothing else is lost.

What each hostile input gets (the tests below, or the existing test named):

- corrupt, truncated, empty or garbage frame bytes; a decompression bomb (a header claiming 10^10 pixels, or
  81 Mpx against the 64 Mpx limit); an EPS "frame" (never handed to Ghostscript): that video fails, its row in
  OUT/videos says which frame and why, every other video of the shard is labeled exactly as without it
  (test_bad_frames_fail_their_video_only). Unit level: test_imaging.py (truncation, garbage, pixel limit).
- grey, RGBA, 16-bit, palette and CMYK frames; frames of different sizes within a video: labeled normally,
  masks at each frame's own size (test_bad_frames_fail_their_video_only; test_job.py::test_worker_failures_are_data).
- a zero-frame video at ingest (an empty frame folder, a video file without decodable frames): an error naming
  it and nothing written; ingest is all-or-nothing by design (rvos_batch.ingest), so the user removes or fixes
  the video and reruns (test_zero_frame_videos_at_ingest; test_ingest.py::test_missing_folders_name_expected_path).
- corpus-level damage: duplicate frame indices, a missing or mistyped column, a truncated Parquet file,
  frame_index outside int32: ``rvos-batch label`` refuses with one line naming the file (and video), no
  traceback, and writes nothing (test_corpus_damage_is_refused_naming_the_file; reader level: test_corpus.py).
- data pages damaged behind an intact footer, a null image: found while streaming; that video fails, the rest
  of the shard lands (test_damage_found_while_streaming_fails_that_video_only).
- video ids with '/', '..', NUL, newlines, right-to-left marks, emoji, 300 characters: labeling works (ids are
  Parquet strings); export keeps every path inside DEST and fails only the ids that cannot be a folder name
  (test_hostile_video_ids_label_query_and_export; test_export_show.py::test_hostile_video_ids_stay_inside_dest).
- malformed RLE counts: RLEError, never another exception (test_rle.py::test_malformed_rle_raises and
  test_fuzz_decode_arbitrary_counts, 500 hypothesis examples against pycocotools). In a prompts table:
  test_malformed_prompt_fails_its_video_only; prompts of the wrong size: test_wrong_size_prompt_fails_its_video_only;
  prompts naming videos not in the corpus: test_job.py::test_one_shot_with_prompts_for_a_missing_video.
- fuzzing with hypothesis: image bytes (mutated JPEG/PNG/TIFF/GIF/BMP/WebP and random bytes: decode_image,
  image_size, check_image, read_palette_png raise ImageDecodeError or succeed consistently) and corpus tables
  (random columns, types, nulls and values: CorpusReader lists and streams, or raises CorpusError).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jobkit import frame_jpeg, tiny_model
from PIL import Image

from rvos_batch import query
from rvos_batch.corpus import CorpusReader, CorpusWriter
from rvos_batch.errors import CorpusError, ImageDecodeError, InputLayoutError
from rvos_batch.export import export_davis
from rvos_batch.imaging import check_image, decode_image, image_size, read_palette_png
from rvos_batch.ingest import IngestConfig, ingest
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.plan import plan_shards
from rvos_batch.job.worker import ShardWorker, run_in_process
from rvos_batch.maskstore import MaskStore, mask_table, write_mask_dataset
from rvos_batch.schema import FRAME_SCHEMA

SIZE = (60, 90)  # (h, w) of the generated frames


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (with a valid CRC): a decompression bomb's header."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _bad_precision_jpeg() -> bytes:
    """A JPEG whose frame header claims 99 bits per sample."""
    data = bytearray(frame_jpeg(1))
    sof = data.index(b"\xff\xc0")
    data[sof + 4] = 99
    return bytes(data)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _label(tmp: Path, videos: dict[str, list[bytes]], model: str, name: str) -> tuple[MaskStore, dict]:
    """Write ``videos`` as a corpus and label it as one shard with the actors' worker (no Ray)."""
    corpus = str(tmp / f"{name}-corpus")
    with CorpusWriter(corpus, videos_per_file=64) as w:
        for vid, frames in videos.items():
            w.add_video(vid, ((t, b, None, None, None) for t, b in enumerate(frames)))
    cfg = LabelConfig(corpus=corpus, out=str(tmp / f"{name}-out"), model=model, batch_videos=1, min_area=1,
                      videos_per_shard=64)
    assert len(run_in_process(cfg)) == 1
    store = MaskStore(cfg.out)
    return store, {r["video_id"]: r for r in store.videos_dataset().to_table().to_pylist()}


def _masks_of(store: MaskStore, video_id: str) -> pa.Table:
    t = store.masks_dataset().to_table(filter=pc.field("video_id") == video_id)
    return t.sort_by([("frame_index", "ascending"), ("object_id", "ascending")])


# --------------------------------------------------------------------------------------------- frames


def test_bad_frames_fail_their_video_only(tmp_path: Path, model: str) -> None:
    good = [frame_jpeg(t) for t in range(3)]
    rgb = _rgb()
    modes = [
        _encode(Image.fromarray(rgb[..., 0], "L"), "PNG"),  # grey
        _encode(Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"), "PNG"),
        _encode(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG"),  # 16-bit grey
        _encode(Image.fromarray(rgb).convert("P"), "PNG"),  # palette
        _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
    ]
    sized = [frame_jpeg(0), frame_jpeg(1, size=(80, 120)), frame_jpeg(2, size=(45, 70))]
    bad = {  # video -> (frames, the frame that fails, words its error must contain)
        "truncated-png": ([good[0], _encode(Image.fromarray(rgb), "PNG")[:300]], 1, "truncated"),
        "bad-jpeg": ([good[0], good[1], _bad_precision_jpeg()], 2, "corrupt"),
        "garbage": ([b"\x00garbage" * 10], 0, "not a readable image"),
        "empty-bytes": ([good[0], b""], 1, "not a readable image"),
        "bomb": ([good[0], _png_claiming(100_000, 100_000)], 1, "too many pixels"),
        "bomb-81mpx": ([_png_claiming(9000, 9000)], 0, "exceeds the limit of 64000000"),
        "eps": ([EPS], 0, "not a readable image"),
    }
    videos = {"good": good, **{k: v[0] for k, v in bad.items()}, "modes": modes, "sizes": sized, "good-2": good[::-1]}
    store, rows = _label(tmp_path, videos, model, "hostile")
    assert {v for v, r in rows.items() if r["status"] == "ok"} == {"good", "modes", "sizes", "good-2"}
    for vid, (_, frame, words) in bad.items():
        assert rows[vid]["status"] == "failed" and rows[vid]["num_objects"] == 0
        assert rows[vid]["error"].startswith(f"frame {frame}: "), rows[vid]["error"]
        assert words in rows[vid]["error"], rows[vid]["error"]
        assert _masks_of(store, vid).num_rows == 0
    assert rows["modes"]["num_frames"] == 5 and rows["sizes"]["num_frames"] == 3
    sizes = {r["frame_index"]: (r["height"], r["width"]) for r in _masks_of(store, "sizes").to_pylist()}
    assert sizes == {0: (60, 90), 1: (80, 120), 2: (45, 70)}
    # nothing else lost: the good videos are labeled exactly as in a corpus without the hostile ones
    clean, _ = _label(tmp_path, {k: videos[k] for k in ("good", "modes", "sizes", "good-2")}, model, "clean")
    for vid in ("good", "modes", "sizes", "good-2"):
        assert _masks_of(store, vid).equals(_masks_of(clean, vid)), vid


def test_decoder_never_runs_ghostscript(tmp_path: Path) -> None:
    """Pillow's EPS loader runs ``gs`` on the file; frames are only opened as raster formats, so it never does."""
    fake = tmp_path / "bin"
    fake.mkdir()
    ran = tmp_path / "gs-ran"
    (fake / "gs").write_text(f"#!/bin/sh\ntouch {ran}\nexit 0\n")
    (fake / "gs").chmod(0o755)
    code = ("import sys\nfrom rvos_batch.imaging import decode_image\nfrom rvos_batch.errors import ImageDecodeError\n"
            "try:\n    decode_image(sys.stdin.buffer.read())\nexcept ImageDecodeError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], input=EPS, capture_output=True, timeout=120,
                       env=dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}"))
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert b"not a readable image" in r.stdout
    assert not ran.exists(), "Ghostscript was run on untrusted bytes"


def test_damage_found_while_streaming_fails_that_video_only(tmp_path: Path, model: str) -> None:
    """A footer that lists fine over damaged data pages, and a null image: the videos they hit fail, others land."""
    corpus = tmp_path / "corpus"
    frames_dir = corpus / "frames"
    frames_dir.mkdir(parents=True)
    loose = pa.schema([pa.field(f.name, f.type) for f in FRAME_SCHEMA])  # nullable, to store a null image
    rows = []
    for vid, n in (("a", 3), ("damaged", 3), ("null-image", 2), ("b", 2)):
        for t in range(n):
            image = None if (vid == "null-image" and t == 1) else frame_jpeg(t, seed=len(rows))
            rows.append({"video_id": vid, "frame_index": t, "image": image, "width": None, "height": None})
    table = pa.Table.from_pylist(rows, schema=loose)
    path = frames_dir / "part-00000.parquet"
    with pq.ParquetWriter(path, loose, compression="none", use_dictionary=False) as w:  # a row group per video
        for start, n in ((0, 3), (3, 3), (6, 2), (8, 2)):
            w.write_table(table.slice(start, n))
    md = pq.ParquetFile(path).metadata
    col = md.row_group(1).column(2)  # the image column of video "damaged"
    data = bytearray(path.read_bytes())
    data[col.data_page_offset : col.data_page_offset + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(data))
    cfg = LabelConfig(corpus=str(corpus), out=str(tmp_path / "out"), model=model, batch_videos=2, min_area=1)
    worker = ShardWorker(cfg)
    [shard] = plan_shards(CorpusReader(str(corpus)).list_videos(), 64)
    result = worker.process_shard(shard)
    worker.close()
    errors = dict(result.failed)
    assert set(errors) == {"damaged", "null-image"}
    assert "part-00000.parquet: cannot read row group 1" in errors["damaged"]
    assert "part-00000.parquet: video 'null-image' frame_index 1: the image is null" in errors["null-image"]
    videos = {r["video_id"]: r for r in MaskStore(cfg.out).videos_dataset().to_table().to_pylist()}
    assert videos["a"]["num_frames"] == 3 and videos["b"]["num_frames"] == 2
    assert videos["a"]["status"] == videos["b"]["status"] == "ok"


# --------------------------------------------------------------------------------------------- ids


HOSTILE_IDS = [
    "../../escape", "a/b", "..", ".", "/abs", "nul\x00byte", "line\nbreak", "\u202eexe.txt", "ünï©ødé 🎥",
    " leading space", "x" * 300, "C:drive", "back\\slash",
]
FOLDER_SAFE = {"\u202eexe.txt", "ünï©ødé 🎥", " leading space", "C:drive"}  # plain names on POSIX (bar C: below)


def test_hostile_video_ids_label_query_and_export(tmp_path: Path, model: str) -> None:
    """Ids are data: labeling and queries work for all; export writes only inside DEST and fails the others."""
    videos = {vid: [frame_jpeg(t, seed=i) for t in range(2)] for i, vid in enumerate(["plain", *HOSTILE_IDS])}
    store, rows = _label(tmp_path, videos, model, "ids")
    assert set(rows) == set(videos) and all(r["status"] == "ok" for r in rows.values())
    for vid in videos:
        assert query.video_masks(store.url, vid).num_rows > 0, vid
    dest = tmp_path / "dest"
    before = sorted(p.name for p in tmp_path.iterdir())
    report = export_davis(store.url, dest)
    ok = {v.video_id for v in report.videos if v.error is None}
    errors = {v.video_id: v.error for v in report.errors}
    assert ok | set(errors) == set(videos)
    assert "plain" in ok and {"../../escape", "a/b", "..", ".", "/abs", "nul\x00byte", "x" * 300} <= set(errors)
    assert ok - {"plain"} <= FOLDER_SAFE
    for vid, error in errors.items():
        assert repr(vid) in error or vid in error, error  # names the video
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "dest"]), "something written outside DEST"
    for path in dest.rglob("*"):
        assert dest.resolve() in path.resolve().parents
    assert sorted(os.listdir(dest)) == sorted(ok)


# --------------------------------------------------------------------------------------------- corpus damage


JPEG = frame_jpeg(0)


def _frames_table(rows: list[tuple[str, int]], schema: pa.Schema = FRAME_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(
        [{"video_id": v, "frame_index": t, "image": JPEG, "width": 90, "height": 60} for v, t in rows],
        schema=schema,
    )


def _damaged_corpora(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (corpus folder whose frames/bad.parquet is damaged, text the error must contain)."""
    cases: dict[str, tuple[Path, str]] = {}

    def corpus(name: str, table: pa.Table | None = None, raw: bytes | None = None, text: str = "") -> None:
        frames = root / name / "frames"
        frames.mkdir(parents=True)
        pq.write_table(_frames_table([("fine", 0), ("fine", 1)]), frames / "a-fine.parquet")
        if table is not None:
            pq.write_table(table, frames / "bad.parquet")
        else:
            (frames / "bad.parquet").write_bytes(raw or b"")
        cases[name] = (root / name, text)

    corpus("duplicate-index", _frames_table([("v", 0), ("v", 1), ("v", 1)]), text="video 'v': frame_index 1 follows 1")
    corpus("missing-column", _frames_table([("v", 0)]).drop_columns(["image"]), text="missing required column 'image'")
    wrong = pa.schema([pa.field("frame_index", pa.string()) if f.name == "frame_index" else f for f in FRAME_SCHEMA])
    corpus("wrong-type", pa.Table.from_pylist([{"video_id": "v", "frame_index": "0", "image": b"x"}], schema=wrong),
           text="column 'frame_index' has type string")
    whole = io.BytesIO()
    pq.write_table(_frames_table([("v", 0), ("v", 1)]), whole)
    corpus("truncated", raw=whole.getvalue()[: len(whole.getvalue()) // 2], text="not a readable Parquet file")
    big = pa.schema([pa.field("frame_index", pa.int64()) if f.name == "frame_index" else f for f in FRAME_SCHEMA])
    corpus("index-out-of-range", _frames_table([("v", 0), ("v", 2**40)], big), text="frame_index 1099511627776 is out")
    corpus("negative-index", _frames_table([("v", -1), ("v", 0)]), text="frame_index -1 is out of range")
    return cases


def test_corpus_damage_is_refused_naming_the_file(tmp_path: Path, model: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`rvos-batch label` on a damaged corpus: exit 2, one line naming the file and what is wrong, OUT untouched."""
    from rvos_batch.cli import main

    for name, (corpus, text) in _damaged_corpora(tmp_path).items():
        out = tmp_path / f"{name}-out"
        rc = main(["label", str(corpus), str(out), "--model", model, "--no-progress", "--no-preview"])
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        line = next(x for x in err.splitlines() if x.startswith("rvos-batch label: error:"))
        assert str(corpus / "frames" / "bad.parquet") in line and text in line, (name, line)
        assert "Traceback" not in err
        assert not out.exists(), f"{name}: the refused run wrote into OUT"


# --------------------------------------------------------------------------------------------- ingest


def test_zero_frame_videos_at_ingest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A video with no frames is an error naming it, and the ingest writes nothing (all or nothing)."""
    import av

    from rvos_batch.cli import main

    frames = tmp_path / "frames"
    (frames / "full").mkdir(parents=True)
    (frames / "full" / "0.jpg").write_bytes(frame_jpeg(0))
    (frames / "empty").mkdir()
    with pytest.raises(InputLayoutError, match=r"frames/empty: no frames"):
        ingest(IngestConfig(src=str(frames), out=str(tmp_path / "c1")))
    assert not (tmp_path / "c1").exists()

    videos = tmp_path / "videos"
    videos.mkdir()
    container = av.open(str(videos / "header-only.mp4"), "w")  # a valid file without a single frame
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height = 32, 24
    container.start_encoding()
    container.close()
    with pytest.raises(ImageDecodeError, match=r"header-only\.mp4: no video stream"):
        ingest(IngestConfig(src=str(videos), out=str(tmp_path / "c2")))
    (videos / "header-only.mp4").unlink()
    (videos / "garbage.mp4").write_bytes(b"\x00\x01garbage" * 100)
    rc = main(["ingest", str(videos), str(tmp_path / "c3"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "garbage.mp4: not a readable video" in err and "Traceback" not in err, err
    assert not (tmp_path / "c2").exists() and not (tmp_path / "c3").exists()


# --------------------------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A one-shot model and a corpus of four 3-frame videos."""
    root = tmp_path_factory.mktemp("oneshot")
    corpus = str(root / "corpus")
    with CorpusWriter(corpus, videos_per_file=8) as w:
        for i, vid in enumerate(["a", "bad", "c", "d"]):
            w.add_video(vid, ((t, frame_jpeg(t, seed=i), None, None, None) for t in range(3)))
    return tiny_model(root / "os.pt", mode="one-shot"), corpus


def _label_with_prompts(tmp: Path, one_shot: tuple[str, str], bad: pa.Table) -> dict[str, tuple[str, str | None]]:
    model, corpus = one_shot
    m = np.zeros((1, *SIZE), bool)
    m[0, 10:30, 20:50] = True
    prompts = str(tmp / "prompts")
    write_mask_dataset(prompts, pa.concat_tables([*(mask_table(v, 0, [1], m) for v in ("a", "c", "d")), bad]))
    cfg = LabelConfig(corpus=corpus, out=str(tmp / "out"), model=model, mode="one-shot", prompts=prompts,
                      batch_videos=2, min_area=1, videos_per_shard=64)
    assert len(run_in_process(cfg)) == 1
    rows = MaskStore(cfg.out).videos_dataset().to_table().to_pylist()
    return {r["video_id"]: (r["status"], r["error"]) for r in rows}


def test_wrong_size_prompt_fails_its_video_only(tmp_path: Path, one_shot: tuple[str, str]) -> None:
    rows = _label_with_prompts(tmp_path, one_shot, mask_table("bad", 0, [1], np.ones((1, 7, 5), bool)))
    assert {v: s for v, (s, _) in rows.items()} == {"a": "ok", "bad": "failed", "c": "ok", "d": "ok"}
    assert "'bad'" in rows["bad"][1] and "(7, 5)" in rows["bad"][1]


def test_malformed_prompt_fails_its_video_only(tmp_path: Path, one_shot: tuple[str, str]) -> None:
    m = np.zeros((1, *SIZE), bool)
    m[0, :5, :5] = True
    row = mask_table("bad", 0, [1], m).to_pylist()[0]
    row["rle_counts"] = "not an RLE!"
    bad = pa.Table.from_pylist([row], schema=mask_table("bad", 0, [1], m).schema)
    rows = _label_with_prompts(tmp_path, one_shot, bad)
    assert {v: s for v, (s, _) in rows.items()} == {"a": "ok", "bad": "failed", "c": "ok", "d": "ok"}
    assert "rle" in rows["bad"][1].lower()


# --------------------------------------------------------------------------------------------- fuzzing


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    return [
        _encode(rgb, "JPEG"), _encode(rgb, "PNG"), _encode(rgb.convert("L"), "PNG"), _encode(rgb.convert("P"), "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(Image.fromarray(np.arange(35, dtype=np.uint16).reshape(5, 7)), "PNG"),
        _encode(rgb, "TIFF"), _encode(rgb, "TIFF", compression="tiff_lzw"), _encode(rgb, "GIF"), _encode(rgb, "BMP"),
        _encode(rgb, "WEBP"), _encode(rgb, "PPM"), _png_claiming(9000, 9000), EPS,
    ]


SEEDS = _seed_images()


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "int"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[:pos]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[pos : pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]))
    return bytes(data)


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bytes())
def test_fuzz_image_bytes(data: bytes) -> None:
    """ImageDecodeError or a consistent success: the decoded shape is the header's size, RGB uint8."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the damage it tolerates
        try:
            w, h = image_size(data)
        except ImageDecodeError:
            with pytest.raises(ImageDecodeError):
                decode_image(data)
            return
        try:
            rgb = decode_image(data)
        except ImageDecodeError:
            with pytest.raises(ImageDecodeError):
                check_image(data)
            return
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
        try:
            ids = read_palette_png(data)
            assert ids.shape == (h, w) and ids.dtype == np.uint8
        except ImageDecodeError:
            pass


_COLUMN_TYPES = {
    "int": st.sampled_from([pa.int8(), pa.int32(), pa.int64(), pa.uint64()]),
    "other": st.sampled_from([pa.string(), pa.binary(), pa.float64(), pa.bool_(), pa.null(), pa.large_string()]),
}


def _values(typ: pa.DataType, n: int) -> st.SearchStrategy:
    if pa.types.is_null(typ):
        value: st.SearchStrategy = st.none()
    elif pa.types.is_unsigned_integer(typ):
        value = st.integers(0, 2**64 - 1)
    elif pa.types.is_integer(typ):
        bits = typ.bit_width
        value = st.one_of(st.integers(-3, 5), st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        value = st.one_of(st.sampled_from(["a", "b", "", "../x"]), st.text(max_size=4))
    elif pa.types.is_binary(typ):
        value = st.one_of(st.sampled_from([SEEDS[0], SEEDS[1], b""]), st.binary(max_size=16))
    elif pa.types.is_floating(typ):
        value = st.floats(allow_nan=True)
    else:
        value = st.booleans()
    return st.lists(st.one_of(st.none(), value) if not pa.types.is_null(typ) else value, min_size=n, max_size=n)


@st.composite
def corpus_tables(draw: st.DrawFn) -> tuple[pa.Table, int]:
    """A small frames table (and its row-group size): half the time a plausible corpus with one hostile twist,
    else random columns of random types."""
    n = draw(st.integers(0, 6))
    if draw(st.booleans()):
        vids = sorted(draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)))
        last: dict[str, int] = {}
        idx = []
        for v in vids:
            last[v] = last.get(v, -1) + draw(st.integers(1, 3))
            idx.append(last[v])
        images: list[bytes | None] = draw(st.lists(st.one_of(st.sampled_from(SEEDS[:2]), st.binary(max_size=8)),
                                                   min_size=n, max_size=n))
        twist = draw(st.sampled_from(["none", "null image", "repeat", "negative", "huge", "interleave", "empty id"]))
        if n and twist != "none":
            i = draw(st.integers(0, n - 1))
            if twist == "null image":
                images[i] = None
            elif twist == "repeat" and i:
                idx[i] = idx[i - 1]
            elif twist == "negative":
                idx[i] = -idx[i] - 1
            elif twist == "huge":
                idx[i] = 2**31 + idx[i]
            elif twist == "interleave":
                vids[i] = draw(st.sampled_from(["a", "b", "c"]))
            elif twist == "empty id":
                vids[i] = ""
        columns = {
            "video_id": pa.array(vids, pa.string()),
            "frame_index": pa.array(idx, pa.int64() if twist == "huge" else pa.int32()),
            "image": pa.array(images, pa.binary()),
            "width": pa.array(draw(_values(pa.int32(), n)), pa.int32()),
        }
        return pa.table(columns), draw(st.integers(1, 3))
    arrays, names = [], []
    natural = {"video_id": pa.string(), "frame_index": pa.int32(), "image": pa.binary(), "source": pa.string()}
    for name in ("video_id", "frame_index", "image", "width", "height", "source", "extra"):
        if name != "extra" and draw(st.integers(0, 5)) == 0:
            continue  # a missing column
        typ = natural.get(name, pa.int32())
        if draw(st.integers(0, 2)) == 0:
            typ = draw(_COLUMN_TYPES[draw(st.sampled_from(["int", "other"]))])
        arrays.append(pa.array(draw(_values(typ, n)), type=typ))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names), draw(st.integers(1, 3))


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(corpus_tables(), min_size=1, max_size=2))
def test_fuzz_corpus_tables(tmp_path: Path, tables: list[tuple[pa.Table, int]]) -> None:
    """Random small tables as frames/*.parquet: the reader lists and streams them, or raises CorpusError."""
    import uuid

    root = tmp_path / uuid.uuid4().hex
    (root / "frames").mkdir(parents=True)
    for i, (table, row_group) in enumerate(tables):
        pq.write_table(table, root / "frames" / f"part-{i:05d}.parquet", row_group_size=row_group)
    reader = CorpusReader(str(root))
    try:
        entries = reader.list_videos()
    except CorpusError as e:
        event(f"refused at listing: {str(e).split(': ', 1)[-1][:30]}")
        return
    event(f"listed {min(len(entries), 2)}+ videos")
    assert len({e.video_id for e in entries}) == len(entries)
    for entry in entries:
        assert isinstance(entry.video_id, str) and entry.video_id and entry.num_frames >= 1
        try:
            records = list(reader.iter_frames(entry))
        except CorpusError:
            event("refused while streaming")
            continue
        indices = [r.frame_index for r in records]
        assert len(records) == entry.num_frames and indices == sorted(set(indices))
        assert all(0 <= i < 2**31 for i in indices) and all(isinstance(r.image, bytes) for r in records)
