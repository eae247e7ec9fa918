"""Mask tables and the labeling output store OUT, with its commit protocol.

A mask table (schema.MASK_SCHEMA) has one row per object per frame: COCO compressed RLE, area, bbox and score,
sorted by (video_id, frame_index, object_id) and written as zstd Parquet in row groups of
schema.MASK_ROW_GROUP_ROWS with min/max statistics, so filters on video_id, frame_index, area and score skip data.

Layout of OUT (a local folder or an ``s3://`` prefix)::

    OUT/run.json                         the run's config and fingerprint (written by the job driver)
    OUT/masks/shard-00007.parquet        masks of shard 7 (MASK_SCHEMA)
    OUT/videos/shard-00007.parquet       one status row per video of shard 7 (VIDEO_SCHEMA)
    OUT/_commits/shard-00007.json        commit marker: rows, files, sha256 of each file, stats
    OUT/_failed/shard-00007.json         last failure of shard 7, removed when it later commits
    OUT/_lock.json                       held by the driver of the run in progress (MaskStore.lock)
    OUT/_lock-takeover-<owner>.json      while a run takes over the lock a dead driver left (MaskStore.lock)

Commit protocol (:meth:`MaskStore.commit_shard`): the data files are written first, the marker last.
Locally each data file is written to ``_tmp-shard-XXXXX-<uuid>.parquet``, fsynced and renamed into place
(``os.replace`` is atomic); on S3 the final key is written with one PUT, which is atomic by itself (a reader
sees the old object or the whole new one), so no temporary key is needed. File names depend only on the shard
id, so a retried shard overwrites its files instead of adding a second copy. On an object store every write
of a commit is retried with backoff (``COMMIT_ATTEMPTS``); if one still fails, the commit raises before the
marker, so a marker never names data that is not there.

Readers that go through :class:`MaskStore` (``masks_dataset()``, ``videos_dataset()``, rvos_batch.query)
see only files named by a marker: a data file whose marker is not written yet (a worker died between the
rename and the marker) stays invisible and is overwritten when the shard is retried. Plain
``pyarrow.dataset.dataset(OUT + "/masks")`` also works, because pyarrow ignores names starting with ``_`` or
``.`` (the temporary files), but it does see such a half-committed file in that short window.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import posixpath
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rvos_batch import rle, storage
from rvos_batch.errors import CorpusError, MaskStoreError
from rvos_batch.job.faults import fault_point
from rvos_batch.schema import MASK_ROW_GROUP_ROWS, MASK_SCHEMA, VIDEO_SCHEMA, check_schema

MASK_SORT_KEYS = [("video_id", "ascending"), ("frame_index", "ascending"), ("object_id", "ascending")]
SHARD_FILE_RE = re.compile(r"^shard-(\d{5,})\.(json|parquet)$")
TMP_PREFIXES = ("_tmp-", ".tmp-")
MARKER_FORMAT = 1
LOCK_NAME = "_lock.json"
LOCK_HEARTBEAT_S = float(os.environ.get("RVOS_LOCK_HEARTBEAT_S", "20"))
LOCK_TTL_S = float(os.environ.get("RVOS_LOCK_TTL_S", "120"))  # a lease not renewed this long is stale
# Object stores: each write of a commit is tried this many times, waiting ~1, 2, 4 s between tries (on top of
# the retries botocore and s3fs already make), so a throttled or briefly failing bucket does not cost a shard.
COMMIT_ATTEMPTS = max(1, int(os.environ.get("RVOS_COMMIT_ATTEMPTS", "4")))
COMMIT_BACKOFF_S = float(os.environ.get("RVOS_COMMIT_BACKOFF_S", "1.0"))
# Errors that another try cannot fix (a missing bucket, no permission); anything else OSError-like is retried.
_PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)

log = logging.getLogger(__name__)
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------- mask tables


def mask_table(
    video_id: str,
    frame_index: int,
    object_ids: Sequence[int] | np.ndarray,
    masks: np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
) -> pa.Table:
    """A MASK_SCHEMA table with one row per object of one frame, sorted by object_id.

    ``masks``: (K, H, W) bool, one mask per entry of ``object_ids``; ``scores``: K floats (default 1.0).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks of {video_id!r} frame {frame_index}: expected shape (K, H, W), got {masks.shape}")
    k, h, w = masks.shape
    ids = np.asarray(object_ids, dtype=np.int64).reshape(-1)
    if ids.shape[0] != k:
        raise ValueError(f"masks of {video_id!r} frame {frame_index}: {k} masks but {ids.shape[0]} object ids")
    if len(np.unique(ids)) != k:
        raise ValueError(f"masks of {video_id!r} frame {frame_index}: object ids must be unique, got {ids.tolist()}")
    if k and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
        raise ValueError(f"masks of {video_id!r} frame {frame_index}: object ids must be in [0, 2**31), got {ids}")
    if scores is None:
        score_arr = np.ones(k, dtype=np.float32)
    else:
        score_arr = np.asarray(scores, dtype=np.float32).reshape(-1)
        if score_arr.shape[0] != k:
            raise ValueError(f"masks of {video_id!r} frame {frame_index}: {k} masks but {score_arr.shape[0]} scores")
    if k:  # area and bbox come from the runs found while encoding: no counts string is parsed back
        rles, areas, boxes = rle.encode_batch_with_stats(masks.astype(bool, copy=False))
    else:
        rles, areas, boxes = [], np.zeros(0, np.int64), np.zeros((0, 4))
    areas = np.asarray(areas, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(k * 4)
    order = np.argsort(ids, kind="stable")
    table = pa.Table.from_arrays(
        [
            pa.array([video_id] * k, pa.string()),
            pa.array(np.full(k, frame_index, dtype=np.int32)),
            pa.array(ids.astype(np.int32)),
            pa.array(np.full(k, h, dtype=np.int32)),
            pa.array(np.full(k, w, dtype=np.int32)),
            pa.array([r["counts"] for r in rles], pa.string()),
            pa.array(areas),
            pa.FixedSizeListArray.from_arrays(pa.array(boxes, pa.float32()), 4),
            pa.array(score_arr),
        ],
        schema=MASK_SCHEMA,
    )
    return table.take(pa.array(order)) if k > 1 else table


def empty_mask_table() -> pa.Table:
    return MASK_SCHEMA.empty_table()


def as_mask_table(table: pa.Table, where: str = "mask table") -> pa.Table:
    """``table`` checked against and cast to exactly MASK_SCHEMA (column order, types, bbox as 4 float32)."""
    check_schema(table.schema, MASK_SCHEMA, None, where)
    return table.select(MASK_SCHEMA.names).cast(MASK_SCHEMA)


def sort_masks(table: pa.Table) -> pa.Table:
    """``table`` sorted by (video_id, frame_index, object_id)."""
    return table.sort_by(MASK_SORT_KEYS) if table.num_rows > 1 else table


def concat_masks(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate mask tables into one sorted MASK_SCHEMA table."""
    if not tables:
        return empty_mask_table()
    return sort_masks(pa.concat_tables([as_mask_table(t) for t in tables]))


def video_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """A VIDEO_SCHEMA table from dicts with keys video_id, num_frames, num_objects, status, error, seconds."""
    allowed = set(VIDEO_SCHEMA.names)
    for i, row in enumerate(rows):
        extra = set(row) - allowed
        if extra:
            raise ValueError(f"video row {i}: unknown keys {sorted(extra)} (allowed: {VIDEO_SCHEMA.names})")
        if row.get("status") not in ("ok", "failed"):
            raise ValueError(f"video row {i} ({row.get('video_id')!r}): status must be 'ok' or 'failed'")
    columns = {name: [row.get(name) for row in rows] for name in VIDEO_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=VIDEO_SCHEMA)


# --------------------------------------------------------------------------------------------- writing files


def mask_file_bytes(table: pa.Table) -> bytes:
    """``table`` as sorted zstd Parquet bytes, row groups of MASK_ROW_GROUP_ROWS, statistics on."""
    table = sort_masks(as_mask_table(table))
    return _parquet_bytes(table, MASK_ROW_GROUP_ROWS)


def _parquet_bytes(table: pa.Table, row_group_rows: int) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=row_group_rows,
        compression="zstd",
        write_statistics=True,
    )
    return sink.getvalue().to_pybytes()


def write_mask_file(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> dict[str, Any]:
    """Write ``table`` sorted as one Parquet file at ``path``, atomically (see storage.write_bytes_atomic).

    Returns ``{"rows", "bytes", "sha256"}`` of the written file.
    """
    data = mask_file_bytes(table)
    storage.write_bytes_atomic(fs, path, data)
    return {"rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem for an fsspec one (native for local paths, wrapped otherwise)."""
    if storage.is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def write_mask_dataset(url: str, table: pa.Table, storage_options: dict[str, Any] | None = None) -> str:
    """Write ``table`` as the mask dataset folder ``url`` (one file, ``part-00000.parquet``); returns ``url``.

    Used for CORPUS/prompts. Rewriting the same folder replaces the file; a folder that already holds other
    Parquet files is refused, since a reader would mix them.
    """
    fs, root = storage.get_fs(url, storage_options)
    if fs.isdir(root):
        others = [p for p in _list_names(fs, root) if p.endswith(".parquet") and p != "part-00000.parquet"]
        others = [p for p in others if not p.startswith(("_", "."))]
        if others:
            raise MaskStoreError(f"{url}: already holds other Parquet files {sorted(others)[:5]}; refusing to mix")
    write_mask_file(fs, storage.join(root, "part-00000.parquet"), table)
    return url


def read_mask_dataset(
    url: str, storage_options: dict[str, Any] | None = None, filter: ds.Expression | None = None
) -> pa.Table:
    """All rows of the mask dataset at ``url`` (a folder of Parquet files or one file) matching ``filter``.

    Rows come in file order (each file is sorted); the table is cast to exactly MASK_SCHEMA.
    """
    return mask_dataset(url, storage_options).to_table(filter=filter)


def mask_dataset(url: str, storage_options: dict[str, Any] | None = None) -> ds.Dataset:
    """A pyarrow dataset over the mask Parquet folder or file at ``url``, checked against MASK_SCHEMA."""
    fs, path = storage.get_fs(url, storage_options)
    if not fs.exists(path):
        raise CorpusError(f"{url}: mask dataset not found")
    try:
        dataset = ds.dataset(path, format="parquet", filesystem=arrow_filesystem(fs))
    except (OSError, pa.ArrowInvalid) as e:
        raise CorpusError(f"{url}: cannot open as a Parquet mask dataset: {e}") from None
    if not dataset.files:
        return _empty_dataset(MASK_SCHEMA)
    check_schema(dataset.schema, MASK_SCHEMA, None, url)
    return ds.dataset(dataset.files, schema=MASK_SCHEMA, format="parquet", filesystem=arrow_filesystem(fs))


def _empty_dataset(schema: pa.Schema) -> ds.Dataset:
    return ds.dataset(schema.empty_table())


def _list_names(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Basenames in ``folder`` ([] if it does not exist)."""
    fs.invalidate_cache(folder)  # object-store listings are cached; another process may have written since
    try:
        entries = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    return [posixpath.basename(str(p).rstrip("/")) for p in entries]


# --------------------------------------------------------------------------------------------- the OUT store


def shard_name(shard_id: int) -> str:
    if not isinstance(shard_id, (int, np.integer)) or isinstance(shard_id, bool) or shard_id < 0:
        raise MaskStoreError(f"shard id must be an integer >= 0, got {shard_id!r}")
    return f"shard-{int(shard_id):05d}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class MaskSource:
    """Masks to read, from an OUT store (committed shards, with per-video status) or a plain mask dataset."""

    url: str
    masks: ds.Dataset
    videos: ds.Dataset | None  # None for a plain mask dataset (prompts/)
    store: MaskStore | None


class MaskStore:
    """The output store OUT of a labeling run: committed shards of masks and per-video status rows."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/") if url not in ("/", "") else url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = storage.get_fs(self.url, self.storage_options)
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"MaskStore({self.url!r})"

    def _path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # -- commit ------------------------------------------------------------------------------------------

    def commit_shard(self, shard_id: int, masks: pa.Table, videos: pa.Table, stats: dict[str, Any]) -> dict[str, Any]:
        """Write shard ``shard_id``'s masks and video rows, then its commit marker; returns the marker.

        Data first (temporary file + rename locally, one PUT on S3), marker last: a shard is visible to
        readers only once its marker exists. Committing a shard again replaces its files.
        """
        name = shard_name(shard_id)
        try:
            json.dumps(stats, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise MaskStoreError(f"{self.url}: stats of {name} must be plain JSON: {e}") from None
        masks = sort_masks(as_mask_table(masks, f"masks of {name}"))
        check_schema(videos.schema, VIDEO_SCHEMA, None, f"videos of {name}")
        videos = videos.select(VIDEO_SCHEMA.names).cast(VIDEO_SCHEMA)
        files: dict[str, dict[str, Any]] = {}
        for kind, table, row_group_rows in (("masks", masks, MASK_ROW_GROUP_ROWS), ("videos", videos, 65_536)):
            data = _parquet_bytes(table, row_group_rows)
            rel = f"{kind}/{name}.parquet"
            self._retrying(rel, lambda: self._put_data(kind, name, rel, data))  # noqa: B023 - called at once
            files[kind] = {
                "path": rel,
                "rows": table.num_rows,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        marker = {
            "format": MARKER_FORMAT,
            "shard_id": int(shard_id),
            "rows": {kind: info["rows"] for kind, info in files.items()},
            "files": files,
            "stats": stats,
            "committed_at": _now(),
        }
        fault_point("before_marker", int(shard_id))  # chaos tests: die with the data written, the marker not
        marker_path = self._path("_commits", f"{name}.json")
        self._retrying(f"_commits/{name}.json", lambda: storage.write_json_atomic(self.fs, marker_path, marker))
        failed = self._path("_failed", f"{name}.json")
        try:
            if self.fs.exists(failed):
                self.fs.rm(failed)
        except FileNotFoundError:
            pass
        except OSError as e:  # the shard is committed; a stale failure record is ignored by readers of markers
            log.warning("%s/_failed/%s.json: could not remove the old failure record: %s", self.url, name, e)
        return marker

    def _retrying(self, rel: str, write: Callable[[], _T]) -> _T:
        """Run one idempotent write of a commit; on an object store retry transient errors with backoff.

        Local writes are not retried (a full disk does not heal in seconds). After the last try the error is a
        MaskStoreError naming the file; the shard then fails and the driver retries or records it.
        """
        if storage.is_local(self.fs):
            return write()
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return write()
            except _PERMANENT_ERRORS:
                raise
            except (OSError, TimeoutError) as e:
                if attempt == COMMIT_ATTEMPTS:
                    raise MaskStoreError(
                        f"{self.url}/{rel}: write failed {attempt} times, giving up: {type(e).__name__}: {e}"
                    ) from e
                delay = COMMIT_BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.75, 1.25)
                log.warning("%s/%s: write failed (%s: %s); try %d of %d in %.1f s",
                            self.url, rel, type(e).__name__, e, attempt + 1, COMMIT_ATTEMPTS, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _put_data(self, kind: str, name: str, rel: str, data: bytes) -> None:
        final = self._path(rel)
        # locally a temporary sibling then a rename; on S3 one PUT, atomic, no temporary key needed
        storage.write_bytes_atomic(self.fs, final, data, tmp_name=f"_tmp-{name}-{uuid.uuid4().hex}.parquet")

    def failed_shard(self, shard_id: int, error: str, attempts: int | None = None) -> dict[str, Any]:
        """Record that shard ``shard_id`` failed in ``_failed/shard-XXXXX.json``; a later commit removes it.

        ``attempts``: how many times it was tried (default: one more than the previous record says).
        """
        name = shard_name(shard_id)
        path = self._path("_failed", f"{name}.json")
        if attempts is None:
            attempts = 1
            if self.fs.exists(path):
                try:
                    attempts += int(storage.read_json(self.fs, path).get("attempts", 0))
                except (ValueError, TypeError, AttributeError, OSError):
                    pass
        record = {"shard_id": int(shard_id), "error": str(error), "attempts": int(attempts), "failed_at": _now()}
        self._retrying(f"_failed/{name}.json", lambda: storage.write_json_atomic(self.fs, path, record))
        return record

    record_failed_shard = failed_shard

    # -- the run lock ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, force: bool = False) -> Iterator[dict[str, Any]]:
        """Hold OUT/_lock.json while a driver plans, runs and records shards, so two runs never share OUT.

        Created exclusively (``O_EXCL`` locally, a conditional PUT ``If-None-Match: *`` on S3). The holder
        renews it every ``LOCK_HEARTBEAT_S`` seconds (a lease). A lock left by a dead process on this same host,
        or not renewed for ``LOCK_TTL_S`` seconds (its driver died on another machine), is taken over; any other
        existing lock raises MaskStoreError naming its holder (delete OUT/_lock.json, or pass ``force=True``,
        once you are sure that run is gone).

        Two runs that find the same stale lock at once must not both take it over: the taker first creates
        ``_lock-takeover-<stale owner>.json`` exclusively, so exactly one of them replaces the lock and the
        other refuses. A claim left by a taker killed mid-takeover is followed, not obeyed (``_claim_takeover``).
        A conditional create whose reply was lost (the object store took the PUT, the client
        retried and got "already exists") is recognised by the owner id inside and counts as acquired.
        """
        path = self._path(LOCK_NAME)
        holder = {
            "owner": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": _now(),
            "heartbeat_at": time.time(),
        }
        data = (json.dumps(holder, indent=2, sort_keys=True) + "\n").encode()
        claim: str | None = None
        if not self._create_exclusive(path, data):
            current = self._read_lock(path)
            if current.get("owner") == holder["owner"]:
                pass  # our own create succeeded; only its reply was lost
            elif force or _lock_is_stale(current):
                claim = self._take_over(path, current, holder, data)
            else:
                raise MaskStoreError(
                    f"{self.url} is in use by another run ({LOCK_NAME}: host {current.get('host')!r}, "
                    f"pid {current.get('pid')}, since {current.get('acquired_at')}); if that run is gone, "
                    f"delete {self.url}/{LOCK_NAME} and retry"
                )
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(LOCK_HEARTBEAT_S):
                try:
                    if self._read_lock(path).get("owner") != holder["owner"]:
                        return  # taken over (forced): stop renewing someone else's lock
                    beat = dict(holder, heartbeat_at=time.time())
                    storage.write_json_atomic(self.fs, path, beat)
                except Exception:  # a missed heartbeat is retried at the next beat
                    continue

        beat_thread = threading.Thread(target=renew, daemon=True, name="rvos-lock-heartbeat")
        beat_thread.start()
        try:
            yield holder
        finally:
            stop.set()
            beat_thread.join(timeout=5)
            try:
                if self._read_lock(path).get("owner") == holder["owner"]:
                    self._discard(path)
                if claim is not None:
                    self._discard(claim)
            except Exception as e:  # storage failing now must not hide how the run went; the lease expires
                log.warning("%s: could not release the lock %s (%s: %s); it expires %.0f s after its last "
                            "heartbeat, or delete it", self.url, LOCK_NAME, type(e).__name__, e, LOCK_TTL_S)

    def _take_over(self, path: str, stale: dict[str, Any], holder: dict[str, Any], data: bytes) -> str:
        """Replace the stale lock ``stale`` by ours, unless another run is doing the same; returns the claim path."""
        claim, dead_claims = self._claim_takeover(stale, holder, data)
        now = self._read_lock(path)
        taken = now.get("owner") not in (stale.get("owner"), holder["owner"])
        if now and taken:  # replaced since we found it stale: a live run holds it now
            self._discard(claim)
            raise MaskStoreError(f"{self.url}: another run just took the lock {LOCK_NAME}: {now}")
        if not now and not self._create_exclusive(path, data):  # released meanwhile: create it as usual
            self._discard(claim)
            raise MaskStoreError(f"{self.url}: another run just took the lock {LOCK_NAME}: {self._read_lock(path)}")
        if now:
            storage.write_json_atomic(self.fs, path, holder)
        log.warning("%s: took over the lock left by %s", self.url, {k: stale.get(k) for k in ("host", "pid")})
        for dead in dead_claims:  # claims of takers that died mid-takeover: ours supersedes them
            self._discard(dead)
        return claim

    def _discard(self, path: str) -> None:
        """Remove a lock or claim file; one already gone is fine."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)

    def _claim_takeover(self, stale: dict[str, Any], holder: dict[str, Any], data: bytes) -> tuple[str, list[str]]:
        """Create the claim ``_lock-takeover-<stale owner>.json`` exclusively; returns it and the dead claims passed.

        A claim whose taker died before replacing the lock (killed mid-takeover) is itself stale. It must not
        block every later run, so the next taker follows it: the dead taker's owner id names the next claim,
        ``_lock-takeover-<dead taker>.json``, and so on. Every run that finds the same stale lock follows the same
        chain of names, so exactly one of them creates the first free claim; a live claim still refuses.
        """
        dead_claims: list[str] = []
        owner = stale.get("owner")
        for _ in range(64):  # a chain this long means something other than dead takers: refuse below
            name = re.sub(r"[^0-9A-Za-z]", "", str(owner or ""))[:64] or "unknown"
            claim = self._path(f"_lock-takeover-{name}.json")
            if self._create_exclusive(claim, data):
                return claim, dead_claims
            current = self._read_lock(claim)
            if current.get("owner") == holder["owner"]:
                return claim, dead_claims  # our own create succeeded; only its reply was lost
            if not current or not _lock_is_stale(current) or current.get("owner") in (None, owner):
                raise MaskStoreError(f"{self.url}: another run is taking over the stale lock {LOCK_NAME} right "
                                     f"now: {current}")
            dead_claims.append(claim)
            owner = current.get("owner")
        raise MaskStoreError(f"{self.url}: {len(dead_claims)} stale _lock-takeover-*.json claims in a row; delete "
                             f"them and {LOCK_NAME} once no run is using {self.url}")

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        if storage.is_local(self.fs):
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")  # S3: PutObject with If-None-Match: *
        except (FileExistsError, OSError) as e:
            if isinstance(e, FileExistsError) or "PreconditionFailed" in str(e) or "412" in str(e):
                return False
            raise
        return True

    def _read_lock(self, path: str) -> dict[str, Any]:
        self.fs.invalidate_cache(path)  # listings cached by this process say nothing about another's lock
        try:
            value = storage.read_json(self.fs, path)
        except FileNotFoundError:
            return {}
        except ValueError:
            return {"host": "?", "pid": None, "acquired_at": "? (unreadable lock file)"}
        return value if isinstance(value, dict) else {}

    # -- reading state -----------------------------------------------------------------------------------

    def _record_names(self, folder: str) -> dict[int, str]:
        """Shard id -> file name of the JSON records in ``folder`` (one listing, no reads)."""
        names: dict[int, str] = {}
        for base in _list_names(self.fs, self._path(folder)):
            m = SHARD_FILE_RE.match(base)
            if m and m.group(2) == "json":
                names[int(m.group(1))] = base
        return names

    def _read_records(self, folder: str) -> dict[int, dict[str, Any]]:
        names = self._record_names(folder)

        def read(base: str) -> dict[str, Any] | None:
            try:
                record = storage.read_json(self.fs, self._path(folder, base))
            except FileNotFoundError:
                return None  # removed between listing and reading (a failure record cleared by a commit)
            except (ValueError, OSError) as e:
                raise MaskStoreError(f"{self.url}/{folder}/{base}: unreadable record: {e}") from None
            if not isinstance(record, dict):
                raise MaskStoreError(f"{self.url}/{folder}/{base}: expected a JSON object")
            return record

        ids = sorted(names)
        records = storage.parallel_map(self.fs, read, [names[i] for i in ids])  # many GETs in flight at once
        return {i: r for i, r in zip(ids, records, strict=True) if r is not None}

    def committed_shards(self) -> dict[int, dict[str, Any]]:
        """Commit markers by shard id."""
        return self._read_records("_commits")

    def committed_shard_ids(self) -> set[int]:
        """The ids of committed shards, from the marker names alone: one LIST request per 1,000 markers on S3,
        where :meth:`committed_shards` also GETs every marker."""
        return set(self._record_names("_commits"))

    def failed_shards(self) -> dict[int, dict[str, Any]]:
        """Failure records by shard id (shards that failed and have not committed since)."""
        return self._read_records("_failed")

    def _committed_files(self, kind: str) -> list[str]:
        paths = []
        present = set(_list_names(self.fs, self._path(kind)))
        for shard_id, marker in self.committed_shards().items():
            try:
                rel = marker["files"][kind]["path"]
            except (KeyError, TypeError):
                raise MaskStoreError(
                    f"{self.url}/_commits/{shard_name(shard_id)}.json: marker has no files.{kind}.path"
                ) from None
            if posixpath.dirname(rel) != kind or posixpath.basename(rel) not in present:
                raise MaskStoreError(f"{self.url}: {shard_name(shard_id)} is committed but its file {rel!r} is missing")
            paths.append(self._path(rel))
        return paths

    def _dataset(self, kind: str, schema: pa.Schema) -> ds.Dataset:
        files = self._committed_files(kind)
        if not files:
            return _empty_dataset(schema)
        return ds.dataset(files, schema=schema, format="parquet", filesystem=arrow_filesystem(self.fs))

    def masks_dataset(self) -> ds.Dataset:
        """A pyarrow dataset over the masks of committed shards only (MASK_SCHEMA)."""
        return self._dataset("masks", MASK_SCHEMA)

    def videos_dataset(self) -> ds.Dataset:
        """A pyarrow dataset over the per-video status rows of committed shards only (VIDEO_SCHEMA)."""
        return self._dataset("videos", VIDEO_SCHEMA)

    # -- run.json and housekeeping ------------------------------------------------------------------------

    def read_run(self) -> dict[str, Any] | None:
        """The contents of OUT/run.json, or None if there is none yet."""
        path = self._path("run.json")
        self.fs.invalidate_cache(path)  # another process may have written it since this one listed OUT
        try:
            value = storage.read_json(self.fs, path)
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise MaskStoreError(f"{self.url}/run.json: not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise MaskStoreError(f"{self.url}/run.json: expected a JSON object")
        return value

    def write_run(self, run_json: dict[str, Any]) -> None:
        """Write OUT/run.json atomically."""
        self._retrying("run.json", lambda: storage.write_json_atomic(self.fs, self._path("run.json"), run_json))

    def write_plan(self, shards: list[dict[str, Any]]) -> None:
        """Write OUT/plan.json: every shard's id, video ids and frame count (what ``status`` counts against)."""
        plan = {"shards": shards}
        self._retrying("plan.json", lambda: storage.write_json_atomic(self.fs, self._path("plan.json"), plan))

    def read_plan(self) -> list[dict[str, Any]] | None:
        self.fs.invalidate_cache(self._path("plan.json"))
        try:
            return list(storage.read_json(self.fs, self._path("plan.json"))["shards"])
        except FileNotFoundError:
            return None

    def clear(self) -> None:
        """Delete everything a labeling run wrote in OUT except the lock (``--overwrite``)."""
        for name in ("masks", "videos", "_commits", "_failed"):
            path = self._path(name)
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        for name in ("run.json", "plan.json", "preview.png"):
            path = self._path(name)
            if self.fs.exists(path):
                self.fs.rm(path)

    def tmp_files(self) -> list[str]:
        """Paths of temporary files (``_tmp-*``, ``.tmp-*``) left in OUT by interrupted writers."""
        out = []
        for folder in ("masks", "videos", "_commits", "_failed", ""):
            base_path = self._path(folder) if folder else self.root
            out += [storage.join(base_path, b) for b in _list_names(self.fs, base_path) if b.startswith(TMP_PREFIXES)]
        return out

    def cleanup_tmp(self, min_age_s: float = 0.0) -> list[str]:
        """Remove temporary files older than ``min_age_s`` seconds; returns the removed paths.

        Call it when no writer is active (min_age_s=0), or with a margin longer than a shard commit.
        """
        removed = []
        now = time.time()
        for path in self.tmp_files():
            if min_age_s > 0 and now - _mtime(self.fs, path) < min_age_s:
                continue
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed


def _lock_is_stale(holder: dict[str, Any]) -> bool:
    """True if the lease was not renewed for LOCK_TTL_S, or its holder was a process of this host now gone."""
    beat = holder.get("heartbeat_at")
    if isinstance(beat, (int, float)) and time.time() - beat > LOCK_TTL_S:
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _mtime(fs: fsspec.AbstractFileSystem, path: str) -> float:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return time.time()
    for key in ("mtime", "LastModified", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, _dt.datetime):
            return value.timestamp()
    return 0.0


def is_store(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True if ``url`` looks like an OUT store (has run.json or _commits/) rather than a plain mask dataset."""
    fs, root = storage.get_fs(url, storage_options)
    root = root.rstrip("/")
    return fs.exists(storage.join(root, "run.json")) or fs.isdir(storage.join(root, "_commits"))


def open_masks(url: str, storage_options: dict[str, Any] | None = None) -> MaskSource:
    """Masks at ``url``: the committed shards of an OUT store, or a plain mask dataset (e.g. CORPUS/prompts)."""
    if is_store(url, storage_options):
        store = MaskStore(url, storage_options)
        return MaskSource(url, store.masks_dataset(), store.videos_dataset(), store)
    return MaskSource(url, mask_dataset(url, storage_options), None, None)
