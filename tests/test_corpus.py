"""corpus: writer -> reader round trips (local and S3) are byte-identical; the writer is all-or-nothing; the reader
streams one row group at a time and rejects every broken layout with an error naming the file, video or column."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rvos_batch.corpus import CorpusReader, CorpusWriter, FrameRecord, VideoEntry
from rvos_batch.errors import CorpusError
from rvos_batch.schema import FRAME_ROW_GROUP_ROWS, FRAME_SCHEMA
from rvos_batch.storage import get_fs


def _frames(video_id: str, n: int, start: int = 0, size: tuple[int, int] = (32, 24)):
    """Fake frames: distinct bytes per frame (the corpus does not decode images)."""
    return [
        (start + i, f"{video_id}:{start + i}".encode() * 3, size[0], size[1], f"{video_id}/{start + i:05d}.jpg")
        for i in range(n)
    ]


VIDEOS = {"alpha": 5, "beta": 2 * FRAME_ROW_GROUP_ROWS + 10, "gamma": 1}


def _write(url: str, videos: dict[str, int] = VIDEOS, per_file: int = 2) -> list[str]:
    with CorpusWriter(url, videos_per_file=per_file) as w:
        for vid, n in videos.items():
            assert w.add_video(vid, iter(_frames(vid, n))) == n
    return w.close()


def _check_round_trip(url: str) -> None:
    reader = CorpusReader(url)
    entries = reader.list_videos()
    assert [e.video_id for e in entries] == list(VIDEOS)
    assert [e.num_frames for e in entries] == list(VIDEOS.values())
    assert entries[0].file == entries[1].file != entries[2].file  # 2 videos per file
    assert entries[0].row_groups == (0,)
    assert entries[1].row_groups == (1, 2, 3)  # 138 rows in groups of 64: a row group never spans videos
    assert (entries[0].width, entries[0].height) == (32, 24)
    for e in entries:
        got = list(reader.iter_frames(e))
        want = _frames(e.video_id, VIDEOS[e.video_id])
        assert [(r.frame_index, r.image, r.width, r.height) for r in got] == [f[:4] for f in want]
        assert all(isinstance(r, FrameRecord) and r.video_id == e.video_id for r in got)


def test_round_trip_local(tmp_path: Path) -> None:
    url = str(tmp_path / "corpus")
    files = _write(url)
    assert [os.path.basename(f) for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(os.listdir(tmp_path / "corpus" / "frames")) == ["part-00000.parquet", "part-00001.parquet"]
    _check_round_trip(url)
    table = pq.read_table(files[0])
    assert table.schema.equals(FRAME_SCHEMA)
    assert table.column("source")[0].as_py() == "alpha/00000.jpg"


@pytest.mark.s3
def test_round_trip_s3(s3_bucket: str) -> None:
    files = _write(s3_bucket)
    assert all(f.startswith("s3://") for f in files)
    fs, path = get_fs(s3_bucket)
    fs.invalidate_cache()
    assert sorted(os.path.basename(p) for p in fs.ls(path + "/frames")) == ["part-00000.parquet", "part-00001.parquet"]
    _check_round_trip(s3_bucket)


@pytest.mark.s3
def test_abort_s3_leaves_nothing(s3_bucket: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with CorpusWriter(s3_bucket, videos_per_file=1) as w:
            w.add_video("a", _frames("a", 70))
            w.add_video("b", _frames("b", 3))
            raise RuntimeError("boom")
    fs, path = get_fs(s3_bucket)
    fs.invalidate_cache()
    assert not fs.exists(path + "/frames") or fs.ls(path + "/frames") == []


def test_iter_frames_streams_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "c")
    _write(url)
    reader = CorpusReader(url)
    beta = reader.list_videos()[1]
    reads: list[int] = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        reads.append(i)
        return real(self, i, *args, **kwargs)

    def no_full_read(self, *args, **kwargs):
        raise AssertionError("iter_frames must not read whole files")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", no_full_read)
    it = reader.iter_frames(beta)
    first = next(it)
    assert first.frame_index == 0 and reads == [1]  # lazily: one row group so far
    rest = list(it)
    assert len(rest) == beta.num_frames - 1 and reads == [1, 2, 3]


def test_row_groups_shared_between_videos(tmp_path: Path) -> None:
    """Files written by other tools may pack several videos in one row group; the reader filters them."""
    (tmp_path / "c" / "frames").mkdir(parents=True)
    rows = _frames("a", 3) + _frames("b", 4) + _frames("c", 2)
    table = _table([("a", r) for r in rows[:3]] + [("b", r) for r in rows[3:7]] + [("c", r) for r in rows[7:]])
    pq.write_table(table, tmp_path / "c" / "frames" / "x.parquet", row_group_size=4)
    reader = CorpusReader(str(tmp_path / "c"))
    entries = {e.video_id: e for e in reader.list_videos()}
    assert entries["a"].row_groups == (0,) and entries["b"].row_groups == (0, 1) and entries["c"].row_groups == (1, 2)
    assert [r.frame_index for r in reader.iter_frames(entries["b"])] == [0, 1, 2, 3]
    assert [r.image for r in reader.iter_frames(entries["b"])] == [r[1] for r in rows[3:7]]
    assert [r.image for r in reader.iter_frames(entries["c"])] == [r[1] for r in rows[7:]]


def _table(rows: list[tuple[str, tuple]], schema: pa.Schema = FRAME_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"video_id": vid, "frame_index": fi, "image": img, "width": w, "height": h, "source": s}
            for vid, (fi, img, w, h, s) in rows
        ],
        schema=schema,
    )


def _corpus_with(tmp_path: Path, files: dict[str, pa.Table]) -> str:
    frames = tmp_path / "bad" / "frames"
    frames.mkdir(parents=True)
    for name, table in files.items():
        pq.write_table(table, frames / name)
    return str(tmp_path / "bad")


# --------------------------------------------------------------------------------------------- reader errors


def test_missing_frames_folder_and_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=rf"{tmp_path}/nowhere/frames: no frames/ folder"):
        CorpusReader(str(tmp_path / "nowhere")).list_videos()
    (tmp_path / "empty" / "frames").mkdir(parents=True)
    (tmp_path / "empty" / "frames" / "_tmp-x-part-00000.parquet").write_bytes(b"junk")
    (tmp_path / "empty" / "frames" / ".hidden.parquet").write_bytes(b"junk")
    with pytest.raises(CorpusError, match="empty corpus"):
        CorpusReader(str(tmp_path / "empty")).list_videos()


def test_temporaries_and_hidden_files_ignored(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    _write(url)
    (tmp_path / "c" / "frames" / "_tmp-123-part-00009.parquet").write_bytes(b"partial")
    (tmp_path / "c" / "frames" / "README.txt").write_text("not parquet")
    assert [e.video_id for e in CorpusReader(url).list_videos()] == list(VIDEOS)


def test_non_contiguous_video_names_file_and_video(tmp_path: Path) -> None:
    a, b = _frames("a", 4), _frames("b", 2)
    table = _table([("a", a[0]), ("a", a[1]), ("b", b[0]), ("a", a[2]), ("b", b[1])])
    url = _corpus_with(tmp_path, {"part-00000.parquet": table})
    with pytest.raises(CorpusError, match=r"part-00000\.parquet: rows of video 'a' are not contiguous"):
        CorpusReader(url).list_videos()


def test_frame_order_names_file_video_and_index(tmp_path: Path) -> None:
    a = _frames("a", 4)
    table = _table([("a", a[0]), ("a", a[2]), ("a", a[1]), ("a", a[3])])
    url = _corpus_with(tmp_path, {"p.parquet": table})
    with pytest.raises(CorpusError, match=r"p\.parquet: video 'a': frame_index 1 follows 2"):
        CorpusReader(url).list_videos()
    dup = _table([("a", a[0]), ("a", a[0])])
    url = _corpus_with(tmp_path / "2", {"p.parquet": dup})
    with pytest.raises(CorpusError, match="frame_index 0 follows 0"):
        CorpusReader(url).list_videos()


def test_video_in_two_files_names_both(tmp_path: Path) -> None:
    a = _frames("a", 4)
    url = _corpus_with(
        tmp_path,
        {"p0.parquet": _table([("a", a[0]), ("a", a[1])]), "p1.parquet": _table([("a", a[2]), ("a", a[3])])},
    )
    with pytest.raises(CorpusError, match=r"video 'a' appears in two files: .*p0\.parquet and .*p1\.parquet"):
        CorpusReader(url).list_videos()


def test_wrong_column_type_names_column(tmp_path: Path) -> None:
    bad_schema = pa.schema(
        [f if f.name != "frame_index" else pa.field("frame_index", pa.string()) for f in FRAME_SCHEMA]
    )
    rows = [{"video_id": "a", "frame_index": "0", "image": b"x", "width": 1, "height": 1, "source": None}]
    url = _corpus_with(tmp_path, {"p.parquet": pa.Table.from_pylist(rows, schema=bad_schema)})
    with pytest.raises(CorpusError, match=r"p\.parquet: column 'frame_index' has type string"):
        CorpusReader(url).list_videos()
    no_image = pa.table({"video_id": ["a"], "frame_index": pa.array([0], pa.int32())})
    url = _corpus_with(tmp_path / "2", {"q.parquet": no_image})
    with pytest.raises(CorpusError, match=r"q\.parquet: missing required column 'image'"):
        CorpusReader(url).list_videos()


def test_null_video_id_refused(tmp_path: Path) -> None:
    loose = pa.schema([pa.field(f.name, f.type) for f in FRAME_SCHEMA])  # nullable everything
    rows = [{"video_id": None, "frame_index": 0, "image": b"x"}, {"video_id": "a", "frame_index": 1, "image": b"y"}]
    url = _corpus_with(tmp_path, {"p.parquet": pa.Table.from_pylist(rows, schema=loose)})
    with pytest.raises(CorpusError, match=r"p\.parquet: column 'video_id' has 1 null"):
        CorpusReader(url).list_videos()


def test_truncated_parquet_names_file(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    files = _write(url)
    data = Path(files[1]).read_bytes()
    Path(files[1]).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"part-00001\.parquet: not a readable Parquet file"):
        CorpusReader(url).list_videos()


def test_corrupt_row_group_names_file(tmp_path: Path) -> None:
    """Footer intact, data pages overwritten: listing may pass, streaming the frames must fail cleanly."""
    url = str(tmp_path / "c")
    files = _write(url, {"v": 3 * FRAME_ROW_GROUP_ROWS}, per_file=1)
    reader = CorpusReader(url)
    (entry,) = reader.list_videos()
    md = pq.ParquetFile(files[0]).metadata
    col = md.row_group(2).column(2)  # the image column of the last row group
    data = bytearray(Path(files[0]).read_bytes())
    start = col.data_page_offset
    data[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    Path(files[0]).write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=r"part-00000\.parquet: cannot read row group 2"):
        list(reader.iter_frames(entry))


# --------------------------------------------------------------------------------------------- writer


def test_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with CorpusWriter(str(out), videos_per_file=1) as w:
            w.add_video("a", _frames("a", 3))
            w.add_video("b", _frames("b", 3))
            raise RuntimeError("boom")
    assert not out.exists()


def test_writer_failure_inside_frames_iterator_aborts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def broken():
        yield from _frames("a", 70)
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        with CorpusWriter(str(out)) as w:
            w.add_video("a", broken())
    assert list(out.iterdir()) == []  # OUT existed before: kept, but empty


def test_writer_validates_videos(tmp_path: Path) -> None:
    w = CorpusWriter(str(tmp_path / "out"))
    try:
        with pytest.raises(CorpusError, match="non-empty"):
            w.add_video("", _frames("x", 1))
        w.add_video("a", _frames("a", 2))
        with pytest.raises(CorpusError, match="'a' added twice"):
            w.add_video("a", _frames("a", 2))
        with pytest.raises(CorpusError, match="'b': frame_index 3 follows 5"):
            w.add_video("b", [_frames("b", 1, start=5)[0], _frames("b", 1, start=3)[0]])
        with pytest.raises(CorpusError, match="'c' has no frames"):
            w.add_video("c", [])
    finally:
        w.abort()
    assert not (tmp_path / "out").exists()


def test_writer_refuses_existing_corpus(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    _write(url)
    with pytest.raises(CorpusError, match="already holds 2 part files"):
        CorpusWriter(url)


def test_video_entry_is_hashable_and_frozen() -> None:
    e = VideoEntry("v", "/x/part-00000.parquet", 3, (0,), 32, 24)
    assert hash(e) == hash(VideoEntry("v", "/x/part-00000.parquet", 3, (0,), 32, 24))
    with pytest.raises(AttributeError):
        e.video_id = "w"  # type: ignore[misc]


def test_parallel_map_keeps_order_and_raises_the_first_error_in_order():
    import threading

    from rvos_batch import storage

    fs, _ = storage.get_fs("/tmp")
    seen = set()

    def work(i: int) -> int:
        seen.add(threading.current_thread().name)
        return i * i

    assert storage.parallel_map(fs, work, range(50), workers=8) == [i * i for i in range(50)]
    assert any(name.startswith("rvos-io") for name in seen)
    assert storage.parallel_map(fs, work, [], workers=8) == []

    def fail(i: int) -> int:
        if i in (3, 30):
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 3"):
        storage.parallel_map(fs, fail, range(40), workers=8)


def test_videos_of_one_file_reuse_its_open_file_and_threads_never_share_one(tmp_path: Path) -> None:
    import threading

    url = str(tmp_path / "c")
    videos = {f"v{i}": 3 + i for i in range(6)}
    _write(url, videos, per_file=3)  # two files of three videos
    reader = CorpusReader(url)
    entries = reader.list_videos()
    opened: list[str] = []
    real_open = reader._open

    def counting_open(file: str):
        opened.append(file)
        return real_open(file)

    reader._open = counting_open  # type: ignore[method-assign]
    for e in entries:  # one after another: each file opened once
        assert [r.frame_index for r in reader.iter_frames(e)] == list(range(videos[e.video_id]))
    assert sorted(opened) == sorted({e.file for e in entries})
    # a video abandoned half-way, or one that fails, does not give its file back
    opened.clear()
    it = reader.iter_frames(entries[0])
    next(it)
    it.close()
    list(reader.iter_frames(entries[1]))
    assert len(opened) == 1  # entries[1] took the idle file; the abandoned one was closed, not kept
    # many threads at once, repeatedly: each gets its own file object and the right frames
    errors: list[BaseException] = []

    def read_all(e) -> None:
        try:
            for _ in range(5):
                got = [(r.video_id, r.frame_index, r.image) for r in reader.iter_frames(e)]
                want = [(e.video_id, f[0], f[1]) for f in _frames(e.video_id, videos[e.video_id])]
                assert got == want
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read_all, args=(e,)) for e in entries * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    reader.close()
    assert [r.frame_index for r in reader.iter_frames(entries[2])] == list(range(videos["v2"]))  # still usable
