"""One shard on one worker, without Ray: stream frames, decode on threads, step videos in a batch, commit.

A worker holds one model. ``process_shard`` streams the shard's videos row group by row group, decodes and
resizes frames on a thread pool while the model runs, keeps up to ``batch_videos`` videos in flight (each
with its own recurrent state; when one ends the next takes its batch row), turns each frame's output into
COCO RLE rows, and commits the shard (masks, videos, then the marker). A video that fails (undecodable
frame, model error) becomes a ``failed`` row with its error; the rest of the shard still lands.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from rvos_batch import imaging, maskstore, rle
from rvos_batch.corpus import CorpusReader, FrameRecord, VideoEntry
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.plan import ShardSpec
from rvos_batch.model.checkpoint import load_checkpoint
from rvos_batch.predictor import BatchSession, FrameResult, PredictConfig, preprocess
from rvos_batch.zoo import resolve_model

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]  # called with the number of frames just finished
_END = object()


@dataclass(frozen=True)
class ShardResult:
    """What a worker reports for a committed shard."""

    shard_id: int
    videos_ok: int
    videos_failed: int
    frames: int
    masks: int
    seconds: float
    failed: tuple[tuple[str, str], ...] = ()  # (video_id, error)


@dataclass
class _Decoded:
    frame_index: int
    tensor: torch.Tensor  # (3, h, w) at the model's input size
    orig_size: tuple[int, int]  # (H0, W0) of this frame


class _FrameStream:
    """Prefetching iterator over one video's decoded frames: a reader thread feeds decode jobs to the pool.

    At most ``prefetch`` decoded-or-decoding frames are held, so memory is bounded whatever the video length.
    """

    def __init__(self, reader: CorpusReader, entry: VideoEntry, pool: ThreadPoolExecutor,
                 decode: Callable[[FrameRecord], _Decoded], prefetch: int) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._feed, args=(reader, entry, pool, decode), daemon=True, name=f"read-{entry.video_id}"
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self, reader: CorpusReader, entry: VideoEntry, pool: ThreadPoolExecutor,
              decode: Callable[[FrameRecord], _Decoded]) -> None:
        try:
            for record in reader.iter_frames(entry):
                if not self._put(pool.submit(decode, record)):
                    return
            self._put(_END)
        except BaseException as e:  # reading errors surface in the consumer, attributed to this video
            self._put(e)

    def next(self) -> _Decoded | None:
        item = self._q.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, Future)
        return item.result()

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock the feeder
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


@dataclass
class _Video:
    entry: VideoEntry
    stream: _FrameStream
    started: float
    tables: list[pa.Table] = field(default_factory=list)
    frames: int = 0
    object_ids: set[int] = field(default_factory=set)


class ShardWorker:
    """Holds one model and processes shards; constructed once per actor (or in-process for benchmarks)."""

    def __init__(self, config: LabelConfig, device: str | None = None) -> None:
        self.config = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model_path = resolve_model(config.model)
        self.model, self.model_config, _ = load_checkpoint(model_path, map_location=self.device)
        self.model.eval()
        self.predict_config = PredictConfig(threshold=config.threshold, min_area=config.min_area,
                                            device=str(self.device))
        self.reader = CorpusReader(config.corpus, storage_options=config.storage_options)
        self.store = maskstore.MaskStore(config.out, storage_options=config.storage_options)
        self.pool = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="decode")
        h, w = self.model_config.input_size
        self._draft = (w, h)

    # -- decode (runs on the pool) ------------------------------------------------------------------
    def _decode(self, record: FrameRecord) -> _Decoded:
        try:
            w0, h0 = imaging.image_size(record.image)
            rgb = imaging.decode_image(record.image, draft=self._draft)
        except Exception as e:
            raise FrameError(record.frame_index, e) from e
        return _Decoded(record.frame_index, preprocess(rgb, self.model_config), (h0, w0))

    # -- prompts --------------------------------------------------------------------------------------
    def _load_prompts(self, spec: ShardSpec) -> dict[str, dict[int, dict[int, np.ndarray]]]:
        """Given masks for the shard's videos: video -> frame_index -> object_id -> bool mask."""
        url = self.config.prompts_url
        if url is None:
            return {}
        ids = [v.video_id for v in spec.videos]
        table = maskstore.read_mask_dataset(url, storage_options=self.config.storage_options,
                                            filter=pa.compute.field("video_id").isin(ids))
        out: dict[str, dict[int, dict[int, np.ndarray]]] = {}
        for row in table.to_pylist():
            mask = rle.decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
            out.setdefault(row["video_id"], {}).setdefault(row["frame_index"], {})[row["object_id"]] = mask
        return out

    # -- the shard --------------------------------------------------------------------------------------
    def process_shard(self, spec: ShardSpec, progress: ProgressFn | None = None, commit: bool = True) -> ShardResult:
        t0 = time.perf_counter()
        prompts = self._load_prompts(spec)
        session = BatchSession(self.model, self.predict_config, capacity=self.config.batch_videos)
        pending: Iterator[VideoEntry] = iter(spec.videos)
        rows: dict[int, _Video] = {}
        video_rows: list[dict[str, Any]] = []
        mask_tables: list[pa.Table] = []
        frames_done = 0

        def finish(row: int, error: str | None) -> None:
            v = rows.pop(row)
            v.stream.close()
            session.release(row)
            if error is None:
                mask_tables.extend(v.tables)
            video_rows.append({
                "video_id": v.entry.video_id, "num_frames": v.frames,
                "num_objects": len(v.object_ids) if error is None else 0,
                "status": "ok" if error is None else "failed", "error": error,
                "seconds": time.perf_counter() - v.started,
            })
            if error is not None:
                log.warning("video %s failed: %s", v.entry.video_id, error)

        try:
            while True:
                # fill free batch rows with the next videos
                for row in range(self.config.batch_videos):
                    if row in rows:
                        continue
                    entry = next(pending, None)
                    if entry is None:
                        break
                    self._start_video(session, rows, row, entry, prompts.get(entry.video_id))
                if not rows:
                    break
                # one frame per active row
                inputs: dict[int, tuple[int, torch.Tensor, tuple[int, int]]] = {}
                for row in list(rows):
                    v = rows[row]
                    try:
                        item = v.stream.next()
                    except Exception as e:
                        finish(row, _describe(e))
                        continue
                    if item is None:
                        if v.frames == 0:
                            finish(row, "video has no frames")
                        else:
                            finish(row, None)
                        continue
                    inputs[row] = (item.frame_index, item.tensor, item.orig_size)
                if not inputs:
                    continue
                results = self._step(session, inputs, rows, finish)
                for row, res in results.items():
                    v = rows[row]
                    v.frames += 1
                    v.object_ids.update(int(i) for i in res.object_ids)
                    if len(res.object_ids):
                        v.tables.append(maskstore.mask_table(v.entry.video_id, res.frame_index, res.object_ids,
                                                             res.masks, res.scores))
                frames_done += len(results)
                if frames_done // TRIM_EVERY_FRAMES != (frames_done - len(results)) // TRIM_EVERY_FRAMES:
                    release_freed_memory()
                if progress is not None and results:
                    progress(len(results))
        finally:
            for row in list(rows):
                rows[row].stream.close()

        masks = pa.concat_tables(mask_tables) if mask_tables else maskstore.empty_mask_table()
        videos = maskstore.video_table(video_rows)
        seconds = time.perf_counter() - t0
        failed = tuple((r["video_id"], r["error"]) for r in video_rows if r["status"] != "ok")
        result = ShardResult(spec.shard_id, len(video_rows) - len(failed), len(failed), frames_done,
                             masks.num_rows, seconds, failed)
        if commit:
            self.store.commit_shard(spec.shard_id, masks, videos, {
                "videos_ok": result.videos_ok, "videos_failed": result.videos_failed,
                "frames": result.frames, "masks": result.masks, "seconds": round(seconds, 3),
            })
        return result

    def _start_video(self, session: BatchSession, rows: dict[int, _Video], row: int, entry: VideoEntry,
                     prompts: dict[int, dict[int, np.ndarray]] | None) -> None:
        if self.config.mode == "one-shot" and not prompts:
            prompts = {}
        session.add(row, entry.video_id, prompts=prompts if self.config.mode == "one-shot" else None)
        stream = _FrameStream(self.reader, entry, self.pool, self._decode, self.config.prefetch_frames)
        rows[row] = _Video(entry, stream, time.perf_counter())

    def _step(self, session: BatchSession, inputs: dict[int, tuple[int, torch.Tensor, tuple[int, int]]],
              rows: dict[int, _Video], finish: Callable[[int, str | None], None]) -> dict[int, FrameResult]:
        """Step all rows at once; if that fails, step them one by one so only the faulty video fails."""
        try:
            return session.step(inputs)
        except Exception:
            if len(inputs) == 1:
                row = next(iter(inputs))
                finish(row, f"model failed at frame {inputs[row][0]}: {_describe_current()}")
                return {}
        results: dict[int, FrameResult] = {}
        for row, item in inputs.items():
            try:
                results.update(session.step({row: item}))
            except Exception as e:
                finish(row, f"model failed at frame {item[0]}: {_describe(e)}")
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


TRIM_EVERY_FRAMES = 128
_LIBC: Any = None


def release_freed_memory() -> None:
    """Hand memory freed by Python, PIL and torch back to the OS (glibc ``malloc_trim``).

    Frames are decoded on pool threads and freed on the main thread; glibc keeps such memory in per-thread
    arenas, so without a trim an actor's resident memory creeps up with video length (measured: +0.5 MB per
    frame of 240x427). A trim every ``TRIM_EVERY_FRAMES`` frames keeps it flat. No-op where glibc is absent.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


class FrameError(Exception):
    """A frame of a video could not be decoded; carries the frame index for the error message."""

    def __init__(self, frame_index: int, cause: Exception) -> None:
        super().__init__(f"frame {frame_index}: {cause}")
        self.frame_index = frame_index


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if not isinstance(e, FrameError) else text


def _describe_current() -> str:
    import sys

    e = sys.exc_info()[1]
    return _describe(e) if e is not None else "unknown error"
