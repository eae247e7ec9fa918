"""The frame corpus CORPUS/frames/*.parquet (FRAME_SCHEMA): a validating, streaming reader and an
all-or-nothing writer, on local paths and ``s3://`` alike.

Layout contract (checked by :meth:`CorpusReader.list_videos`): the rows of a video are contiguous, in strictly
increasing ``frame_index`` order (each in [0, 2**31 - 1], as masks store it), and all in one file; a null image
is reported when the video is read. Files whose names start with ``_`` or ``.`` (temporaries,
markers) are not part of the corpus.

Commit protocol of :class:`CorpusWriter`: parts are written as ``frames/_tmp-<run>-part-NNNNN.parquet`` and
get their final names ``frames/part-NNNNN.parquet`` only in :meth:`CorpusWriter.close`. Local files are
fsynced then renamed (atomic per file); on S3 the temporary object is server-side copied to its final key and
deleted (``fs.mv``), so a reader never sees a partial part. ``abort()`` (or an exception inside ``with``)
deletes the temporaries: a failed ingest leaves no part behind.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rvos_batch import storage
from rvos_batch.errors import CorpusError
from rvos_batch.schema import FRAME_REQUIRED, FRAME_ROW_GROUP_ROWS, FRAME_SCHEMA, check_schema
from rvos_batch.storage import get_fs, is_local, join

log = logging.getLogger(__name__)

FRAMES_DIR = "frames"
MAX_FRAME_INDEX = 2**31 - 1  # frame_index is int32 in FRAME_SCHEMA and MASK_SCHEMA
_ARROW_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError)
# Object stores: a row group that cannot be read is read again (the file reopened) this many times, ~1 s and
# ~2 s apart, beyond botocore's own retries, before the video is given up as unreadable.
READ_ATTEMPTS = max(1, int(os.environ.get("RVOS_READ_ATTEMPTS", "3")))
READ_BACKOFF_S = float(os.environ.get("RVOS_READ_BACKOFF_S", "1.0"))
_T = TypeVar("_T")


class CorpusReadError(CorpusError):
    """Listing, opening or reading corpus data failed (retried on object stores before it is raised).

    ``transient`` is True when the object store itself failed (a request error, not data Arrow could not
    parse): the data may be fine, so a caller can fail and retry the whole unit of work instead of recording
    the video as broken.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class VideoEntry:
    """One video of the corpus: where its rows are. Small and picklable, so shard plans can carry it."""

    video_id: str
    file: str  # full path or URL of the part file (s3://bucket/key for S3)
    num_frames: int
    row_groups: tuple[int, ...]  # row groups of ``file`` that hold this video's rows, in order
    width: int | None = None  # set when every frame has the same known width
    height: int | None = None


@dataclass(frozen=True)
class FrameRecord:
    """One frame: the encoded image bytes exactly as stored, and its size if the corpus records it."""

    video_id: str
    frame_index: int
    image: bytes
    width: int | None
    height: int | None


def _url_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The path as a user would write it: local paths as they are, others with their protocol."""
    if is_local(fs):
        return path
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path}"


def _is_part_name(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def _uniform(values: np.ndarray | None) -> int | None:
    """The single value of an int column slice, or None if unknown or mixed."""
    if values is None or len(values) == 0:
        return None
    return int(values[0]) if bool(np.all(values == values[0])) else None


def _int_column(table: pa.Table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    col = table.column(name)
    if col.null_count:
        return None  # some sizes unknown: report the video's size as unknown
    return col.to_numpy().astype(np.int64)


class _OpenFiles:
    """Open corpus files (the fsspec file and its ParquetFile) kept for the next video of the same file, so a
    shard reading many videos of one file opens it once, not once per video (on S3 each opening is a HEAD and a
    footer GET). A borrower has its file to itself; at most ``keep`` idle files stay open, the oldest closed first.
    """

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._idle: list[tuple[str, list[Any]]] = []
        self._lock = threading.Lock()

    def take(self, file: str) -> list[Any] | None:
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == file:
                    return self._idle.pop(i)[1]
        return None

    def give(self, file: str, handle: list[Any]) -> None:
        with self._lock:
            self._idle.append((file, handle))
            evicted = self._idle[: -self._keep] if len(self._idle) > self._keep else []
            del self._idle[: len(evicted)]
        for _, h in evicted:
            h[0].close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, h in idle:
            h[0].close()


class CorpusReader:
    """Lists and validates the videos of ``url``/frames/ and streams their frames.

    ``url``: the corpus root (local folder or s3://bucket/prefix); ``storage_options`` go to fsspec.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.fs, self.root = get_fs(url, dict(storage_options or {}))
        self.frames_path = join(self.root, FRAMES_DIR)
        self._files: list[str] | None = None
        self._open_files = _OpenFiles()

    def close(self) -> None:
        """Close the corpus files kept open between videos (a reader stays usable: it reopens them)."""
        self._open_files.close()

    @property
    def files(self) -> list[str]:
        """The part files of the corpus, sorted (full paths/URLs)."""
        if self._files is None:
            self._files = self._list_files()
        return list(self._files)

    def _list_files(self) -> list[str]:
        where = _url_of(self.fs, self.frames_path)
        names = self._with_retries(lambda: self._ls_frames(where))
        parts = sorted(p for p in names if _is_part_name(posixpath.basename(p.rstrip("/"))))
        if not parts:
            raise CorpusError(f"{where}: empty corpus, no *.parquet files")
        return [_url_of(self.fs, p) for p in parts]

    def _ls_frames(self, where: str) -> list[str]:
        try:
            self.fs.invalidate_cache(self.frames_path)
            if not self.fs.isdir(self.frames_path):
                raise CorpusError(f"{where}: no frames/ folder; a corpus is CORPUS/frames/*.parquet (see ingest)")
            return list(self.fs.ls(self.frames_path, detail=False))
        except FileNotFoundError:
            raise CorpusError(f"{where}: no frames/ folder; a corpus is CORPUS/frames/*.parquet") from None
        except CorpusError:
            raise
        except Exception as e:  # storage unreachable, refused or misconfigured (a wrong endpoint, a bad option)
            raise CorpusReadError(f"{where}: cannot list the corpus ({type(e).__name__}: {e})",
                                  transient=not is_local(self.fs)) from None

    def _with_retries(self, read: Callable[[], _T]) -> _T:
        """``read()``; on an object store a CorpusReadError is retried READ_ATTEMPTS times, ~1, 2 s apart."""
        attempt = 1
        while True:
            try:
                return read()
            except CorpusReadError as e:
                if is_local(self.fs) or attempt >= READ_ATTEMPTS:
                    raise
                log.warning("%s; try %d of %d", e, attempt + 1, READ_ATTEMPTS)
            time.sleep(READ_BACKOFF_S * 2 ** (attempt - 1))
            attempt += 1

    def _store_failed(self, e: BaseException) -> bool:
        """An object-store request error rather than bytes Arrow could not parse."""
        return not is_local(self.fs) and not isinstance(e, (pa.ArrowException, EOFError))

    def _open(self, file: str) -> tuple[Any, pq.ParquetFile]:
        try:
            f = self.fs.open(file, "rb")
        except FileNotFoundError:
            raise CorpusError(f"{file}: not found (the corpus changed since it was listed?)") from None
        except Exception as e:
            raise CorpusReadError(f"{file}: cannot open ({type(e).__name__}: {e})",
                                  transient=not is_local(self.fs)) from None
        try:
            return f, pq.ParquetFile(f)
        except _ARROW_ERRORS as e:
            f.close()
            raise CorpusReadError(f"{file}: not a readable Parquet file (truncated or corrupt?): {e}",
                                  transient=self._store_failed(e)) from None

    def list_videos(self) -> list[VideoEntry]:
        """Every video, in file order then row order, after validating the layout contract.

        Reads only the small columns (video_id, frame_index, width, height), never the images, of many files at
        once (``storage.parallel_map``).
        """
        entries: list[VideoEntry] = []
        seen: dict[str, str] = {}  # video_id -> file
        files = self.files
        scanned = storage.parallel_map(self.fs, self._scan_file, files)  # many footers in flight at once
        for file, file_entries in zip(files, scanned, strict=True):
            for entry in file_entries:
                if entry.video_id in seen:
                    raise CorpusError(
                        f"video {entry.video_id!r} appears in two files: {seen[entry.video_id]} and {file}; "
                        "all frames of a video must be in one file"
                    )
                seen[entry.video_id] = file
                entries.append(entry)
        return entries

    def _scan_file(self, file: str) -> list[VideoEntry]:
        table, rg_rows = self._with_retries(lambda: self._read_index(file))
        return _entries_from_columns(file, table, rg_rows)

    def _read_index(self, file: str) -> tuple[pa.Table, list[int]]:
        f, pf = self._open(file)
        try:
            check_schema(pf.schema_arrow, FRAME_SCHEMA, FRAME_REQUIRED, where=file)
            columns = [c for c in ("video_id", "frame_index", "width", "height") if c in pf.schema_arrow.names]
            try:
                table = pf.read(columns=columns)
            except _ARROW_ERRORS as e:
                raise CorpusReadError(f"{file}: cannot read columns {columns} (truncated or corrupt?): {e}",
                                      transient=self._store_failed(e)) from None
            return table, [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        finally:
            f.close()

    def iter_frames(self, entry: VideoEntry) -> Iterator[FrameRecord]:
        """Frames of one video in order, reading one row group at a time (never the whole video).

        On an object store, opening the file or reading a row group is retried (the file reopened) up to
        ``READ_ATTEMPTS`` times, so a bucket failing for a few seconds does not fail the video; listing is
        retried the same way.
        """
        # the open file and its ParquetFile (a previous video's, if one of this file is idle), reopened after a
        # failed read; given back for the next video only when this one was read to the end without error
        handle: list[Any] = self._open_files.take(entry.file) or [None, None]
        done = False
        try:
            count = 0
            for rg in entry.row_groups:
                table = self._read_row_group(entry, rg, handle)
                names = table.column_names
                vids = table.column("video_id").to_pylist()
                frame_idx = table.column("frame_index").to_pylist()
                images = table.column("image")
                widths = table.column("width").to_pylist() if "width" in names else [None] * len(vids)
                heights = table.column("height").to_pylist() if "height" in names else [None] * len(vids)
                for i, vid in enumerate(vids):
                    if vid != entry.video_id:
                        continue  # a row group shared with a neighbouring video
                    count += 1
                    image = images[i].as_py()
                    if image is None:
                        raise CorpusError(
                            f"{entry.file}: video {entry.video_id!r} frame_index {frame_idx[i]}: the image is null"
                        )
                    yield FrameRecord(vid, int(frame_idx[i]), image, widths[i], heights[i])
                del table, images
            if count != entry.num_frames:
                raise CorpusError(
                    f"{entry.file}: video {entry.video_id!r} has {count} frames in row groups {entry.row_groups}, "
                    f"expected {entry.num_frames} (file changed since it was listed?)"
                )
            done = True
        finally:
            if handle[0] is not None:
                if done:
                    self._open_files.give(entry.file, handle)
                else:
                    handle[0].close()

    def _read_row_group(self, entry: VideoEntry, rg: int, handle: list[Any]) -> pa.Table:
        def read() -> pa.Table:
            if handle[0] is None:
                handle[0], handle[1] = self._open(entry.file)
            names = handle[1].schema_arrow.names
            columns = [c for c in ("video_id", "frame_index", "image", "width", "height") if c in names]
            try:
                return handle[1].read_row_group(rg, columns=columns)
            except _ARROW_ERRORS as e:
                handle[0].close()
                handle[0] = handle[1] = None  # reopened by the next try
                raise CorpusReadError(f"{entry.file}: cannot read row group {rg} (truncated or corrupt?): {e}",
                                      transient=self._store_failed(e)) from None

        return self._with_retries(read)


def _entries_from_columns(file: str, table: pa.Table, rg_rows: list[int]) -> list[VideoEntry]:
    """Split one file's (video_id, frame_index[, width, height]) columns into validated videos."""
    n = table.num_rows
    if n == 0:
        return []
    for name in ("video_id", "frame_index"):
        nulls = table.column(name).null_count
        if nulls:
            raise CorpusError(f"{file}: column {name!r} has {nulls} null values; it must be set on every row")
    vids = np.asarray(table.column("video_id").to_pylist(), dtype=object)
    lo, hi = pc.min(table.column("frame_index")).as_py(), pc.max(table.column("frame_index")).as_py()
    if lo < 0 or hi > MAX_FRAME_INDEX:
        bad = lo if lo < 0 else hi
        row = table.column("frame_index").to_pylist().index(bad)
        raise CorpusError(
            f"{file}: video {vids[row]!r}: frame_index {bad} is out of range; allowed is 0..{MAX_FRAME_INDEX}"
        )
    fidx = table.column("frame_index").to_numpy().astype(np.int64)
    widths = _int_column(table, "width")
    heights = _int_column(table, "height")

    # Runs of equal video_id: a video must be exactly one run.
    starts = np.concatenate([[0], np.flatnonzero(vids[1:] != vids[:-1]) + 1])
    ends = np.concatenate([starts[1:], [n]])
    rg_start = np.concatenate([[0], np.cumsum(rg_rows)])  # row offset where each row group starts

    entries: list[VideoEntry] = []
    first_row: dict[str, int] = {}
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        vid = vids[s]
        if not isinstance(vid, str) or not vid:
            raise CorpusError(f"{file}: row {s} has an empty video_id; video ids must be non-empty strings")
        if vid in first_row:
            raise CorpusError(
                f"{file}: rows of video {vid!r} are not contiguous (rows from {first_row[vid]} and again from {s}); "
                "the rows of a video must be consecutive"
            )
        first_row[vid] = s
        run = fidx[s:e]
        bad = np.flatnonzero(np.diff(run) <= 0)
        if len(bad):
            k = int(bad[0])
            raise CorpusError(
                f"{file}: video {vid!r}: frame_index {int(run[k + 1])} follows {int(run[k])}; "
                "frame_index must be strictly increasing within a video"
            )
        first_rg = int(np.searchsorted(rg_start, s, side="right") - 1)
        last_rg = int(np.searchsorted(rg_start, e - 1, side="right") - 1)
        entries.append(
            VideoEntry(
                video_id=vid,
                file=file,
                num_frames=e - s,
                row_groups=tuple(range(first_rg, last_rg + 1)),
                width=_uniform(widths[s:e] if widths is not None else None),
                height=_uniform(heights[s:e] if heights is not None else None),
            )
        )
    return entries


# A frame as the writer takes it: (frame_index, image bytes, width, height, source)
FrameInput = tuple[int, bytes, int | None, int | None, str | None]


class CorpusWriter:
    """Writes videos to ``url``/frames/part-NNNNN.parquet, ``videos_per_file`` videos per part.

    Rows are buffered ``FRAME_ROW_GROUP_ROWS`` at a time (streaming; one row group in memory) and a row
    group never spans two videos. Nothing is visible under a final name before :meth:`close`; use as a
    context manager so that an exception aborts (deletes the temporaries). Refuses a frames/ folder that
    already holds parts.
    """

    def __init__(
        self, url: str, *, videos_per_file: int = 16, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        if videos_per_file < 1:
            raise ValueError(f"videos_per_file must be >= 1, got {videos_per_file}")
        self.url = url
        self.videos_per_file = int(videos_per_file)
        self.fs, self.root = get_fs(url, dict(storage_options or {}))
        self.frames_path = join(self.root, FRAMES_DIR)
        self._run = uuid.uuid4().hex[:12]
        self._local = is_local(self.fs)
        self._created_dirs: list[str] = []
        self._check_empty()
        self._temps: list[tuple[str, str]] = []  # (temporary path, final path), in part order
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._videos_in_file = 0
        self._video_ids: set[str] = set()
        self._buffer: list[tuple[str, int, bytes, int | None, int | None, str | None]] = []
        self._closed = False
        self.num_videos = 0
        self.num_frames = 0

    def _check_empty(self) -> None:
        try:
            self.fs.invalidate_cache(self.frames_path)
            existing = [p for p in self.fs.ls(self.frames_path, detail=False) if _is_part_name(posixpath.basename(p))]
        except FileNotFoundError:
            existing = []
        if existing:
            raise CorpusError(
                f"{_url_of(self.fs, self.frames_path)} already holds {len(existing)} part files; "
                "write a new corpus to an empty location (or delete the old one)"
            )

    # ---- writing
    def _part_name(self, index: int) -> str:
        return f"part-{index:05d}.parquet"

    def _open_part(self) -> None:
        final = join(self.frames_path, self._part_name(len(self._temps)))
        tmp = join(self.frames_path, f"_tmp-{self._run}-{self._part_name(len(self._temps))}")
        if self._local:
            for d in (self.root, self.frames_path):
                if not os.path.isdir(d):
                    os.makedirs(d, exist_ok=True)
                    self._created_dirs.append(d)
            self._sink = open(tmp, "wb")  # noqa: SIM115 - closed in _close_part/abort
        else:
            self._sink = self.fs.open(tmp, "wb")
        self._temps.append((tmp, final))
        self._writer = pq.ParquetWriter(
            self._sink,
            FRAME_SCHEMA,
            compression={
                "video_id": "zstd",
                "frame_index": "zstd",
                "image": "none",
                "width": "zstd",
                "height": "zstd",
                "source": "zstd",
            },
            write_statistics=["video_id", "frame_index", "width", "height"],  # not the image bytes
            use_dictionary=["video_id"],
        )
        self._videos_in_file = 0

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._sink is not None:
            if self._local:
                self._sink.flush()
                os.fsync(self._sink.fileno())
            self._sink.close()
            self._sink = None

    def _flush(self) -> None:
        if not self._buffer:
            return
        cols = list(zip(*self._buffer, strict=True))
        table = pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(cols, FRAME_SCHEMA, strict=True)], schema=FRAME_SCHEMA
        )
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=FRAME_ROW_GROUP_ROWS)
        self._buffer = []

    def add_video(self, video_id: str, frames: Iterable[FrameInput]) -> int:
        """Append one video; ``frames`` yields (frame_index, image bytes, width, height, source) in order.

        Returns the number of frames written. CorpusError for an empty or repeated id, a video with no
        frames, or frame indices that do not strictly increase.
        """
        if self._closed:
            raise CorpusError("CorpusWriter is closed")
        if not isinstance(video_id, str) or not video_id:
            raise CorpusError(f"video_id must be a non-empty string, got {video_id!r}")
        if video_id in self._video_ids:
            raise CorpusError(f"video {video_id!r} added twice; video ids must be unique in a corpus")
        if self._writer is None or self._videos_in_file >= self.videos_per_file:
            self._close_part()
            self._open_part()
        count = 0
        last: int | None = None
        for frame_index, image, width, height, source in frames:
            frame_index = int(frame_index)
            if not 0 <= frame_index <= MAX_FRAME_INDEX:
                raise CorpusError(
                    f"video {video_id!r}: frame_index {frame_index} is out of range; allowed is 0..{MAX_FRAME_INDEX}"
                )
            if last is not None and frame_index <= last:
                raise CorpusError(
                    f"video {video_id!r}: frame_index {frame_index} follows {last}; it must strictly increase"
                )
            last = frame_index
            self._buffer.append((video_id, frame_index, bytes(image), width, height, source))
            count += 1
            if len(self._buffer) >= FRAME_ROW_GROUP_ROWS:
                self._flush()
        if count == 0:
            raise CorpusError(f"video {video_id!r} has no frames")
        self._flush()  # a row group never spans two videos
        self._video_ids.add(video_id)
        self._videos_in_file += 1
        self.num_videos += 1
        self.num_frames += count
        return count

    # ---- commit / abort
    def close(self) -> list[str]:
        """Commit: give every part its final name. Returns the final paths/URLs."""
        if self._closed:
            return [_url_of(self.fs, final) for _, final in self._temps]
        self._close_part()
        self._closed = True
        for tmp, final in self._temps:
            if self._local:
                os.replace(tmp, final)
            else:
                self.fs.mv(tmp, final)
        self.fs.invalidate_cache(self.frames_path)
        log.debug("committed %d parts to %s", len(self._temps), _url_of(self.fs, self.frames_path))
        return [_url_of(self.fs, final) for _, final in self._temps]

    def abort(self) -> None:
        """Delete the temporaries (and folders this writer created, if left empty)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close_part()
        except Exception:  # noqa: BLE001 - the sink may be broken; we are deleting it anyway
            pass
        for tmp, _ in self._temps:
            try:
                if self._local:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                else:
                    self.fs.rm_file(tmp)
            except FileNotFoundError:
                pass
            except Exception as e:  # noqa: BLE001 - report, keep cleaning the rest
                log.warning("could not delete temporary %s: %s", _url_of(self.fs, tmp), e)
        for d in reversed(self._created_dirs):
            try:
                os.rmdir(d)  # only succeeds when empty
            except OSError:
                pass
        self.fs.invalidate_cache(self.frames_path)

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
