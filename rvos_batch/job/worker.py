"""One shard on one worker, without Ray: stream frames, decode on threads, step videos in a batch, commit.

A worker holds one model. ``process_shard`` streams the shard's videos row group by row group, decodes and
resizes frames on a thread pool while the model runs, keeps up to ``batch_videos`` videos in flight (each
with its own recurrent state; when one ends the next takes its batch row), turns each frame's output into
COCO RLE rows, and commits the shard (masks, videos, then the marker). A video that fails (undecodable
frame, model error) becomes a ``failed`` row with its error; the rest of the shard still lands.

Three kinds of threads overlap: decode threads (read, JPEG decode, resize), the shard's thread (only launches
model steps; on a GPU it never waits for the device), and one post thread that turns each finished step into
RLE rows (upsampling to the original size, overlap resolution and RLE, on the GPU when the model is there) and
records finished videos, in order. On CUDA the model runs in bfloat16 with channels_last; LabelConfig's
``compile`` (a torch.compile mode), ``amp`` and ``gpu_decode`` (nvJPEG) change that (``label --compile``,
``--amp``, ``--gpu-decode``; where a field is unset, the environment's ``RVOS_BATCH_COMPILE``, ``RVOS_BATCH_AMP``
and ``RVOS_BATCH_GPU_DECODE=1`` are read, so a cluster can set them for every actor).
"""

from __future__ import annotations

import functools
import logging
import os
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
from rvos_batch.corpus import CorpusReader, CorpusReadError, FrameRecord, VideoEntry
from rvos_batch.discover import DiscoverTrackSession, FinishedStep
from rvos_batch.errors import RLEError, RvosBatchError
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.faults import fault_point
from rvos_batch.job.plan import ShardSpec
from rvos_batch.model.checkpoint import load_checkpoint
from rvos_batch.model.rvos import RVOS
from rvos_batch.predictor import BatchSession, FrameRLE, PendingStep, PredictConfig, preprocess
from rvos_batch.schema import MASK_SCHEMA
from rvos_batch.zoo import resolve_model

Session = BatchSession | DiscoverTrackSession  # the zero-shot model alone, or finding objects for a tracker
Step = PendingStep | FinishedStep

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


class _MaskRows:
    """One video's mask rows as columns, appended frame by frame and turned into one Arrow table at the end
    (one table per video instead of one per frame)."""

    def __init__(self) -> None:
        self.frame_index: list[np.ndarray] = []
        self.object_id: list[np.ndarray] = []
        self.height: list[np.ndarray] = []
        self.width: list[np.ndarray] = []
        self.counts: list[str] = []
        self.area: list[np.ndarray] = []
        self.bbox: list[np.ndarray] = []
        self.score: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, r: FrameRLE) -> None:
        k = len(r.object_ids)
        if not k:
            return
        order = np.argsort(r.object_ids, kind="stable")
        self.frame_index.append(np.full(k, r.frame_index, dtype=np.int32))
        self.object_id.append(r.object_ids[order].astype(np.int32))
        self.height.append(np.full(k, r.size[0], dtype=np.int32))
        self.width.append(np.full(k, r.size[1], dtype=np.int32))
        self.counts.extend(r.counts[i] for i in order)
        self.area.append(r.areas[order].astype(np.int64))
        self.bbox.append(r.boxes[order].astype(np.float32))
        self.score.append(r.scores[order].astype(np.float32))

    def table(self, video_id: str) -> pa.Table:
        """The rows as a MASK_SCHEMA table (what ``maskstore.mask_table`` gives for the same masks)."""
        n = len(self.counts)
        if not n:
            return maskstore.empty_mask_table()
        boxes = np.concatenate(self.bbox).reshape(-1)
        return pa.Table.from_arrays(
            [
                pa.array([video_id] * n, pa.string()),
                pa.array(np.concatenate(self.frame_index)),
                pa.array(np.concatenate(self.object_id)),
                pa.array(np.concatenate(self.height)),
                pa.array(np.concatenate(self.width)),
                pa.array(self.counts, pa.string()),
                pa.array(np.concatenate(self.area)),
                pa.FixedSizeListArray.from_arrays(pa.array(boxes, pa.float32()), 4),
                pa.array(np.concatenate(self.score)),
            ],
            schema=MASK_SCHEMA,
        )


@dataclass
class _Video:
    entry: VideoEntry
    stream: _FrameStream
    started: float
    stepped: int = 0  # frames sent to the model (main thread)
    frames: int = 0  # frames whose masks are made (post thread)
    object_ids: set[int] = field(default_factory=set)
    error: str | None = None  # set by the post thread when making a frame's masks failed
    rows: _MaskRows = field(default_factory=_MaskRows)


class _PostThread:
    """Runs jobs in submission order on one thread, so that upsampling masks to the original size, RLE and
    building rows overlap the next model steps. The bounded queue keeps at most ``depth`` jobs waiting; a job
    that raises stops the thread's work and the error is raised in the submitting thread. ``depth=0`` runs each
    job at once in the submitting thread (no overlap; for measuring what the overlap gains). ``busy_s`` adds up
    the time spent in jobs."""

    def __init__(self, depth: int) -> None:
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self.busy_s = 0.0
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, daemon=True, name="postprocess")
            self._thread.start()

    def _job(self, job: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            job()
        finally:
            self.busy_s += time.perf_counter() - t0

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None:
                try:
                    self._job(job)
                except BaseException as e:  # surfaced by submit() / drain() in the shard's thread
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        if self._thread is None:
            self._job(job)
        else:
            self._q.put(job)

    def drain(self) -> None:
        """Wait until every submitted job ran, stop the thread, and raise a job's error if one failed."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
        self._raise()

    def abandon(self) -> None:
        """Stop without raising (the shard is failing anyway): jobs still queued are skipped."""
        self._error = self._error or RuntimeError("abandoned")
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=30)


class ShardWorker:
    """Holds one model and processes shards; constructed once per actor (or in-process for benchmarks).

    ``post_queue_steps``: steps whose masks may wait for the post thread (0: make masks inline, no overlap).
    After each shard, ``last_timings`` holds where its wall time went (seconds): ``wait_frames`` (the model
    thread waiting for decoded frames), ``model`` (launching/running steps), ``post_busy`` (the post thread
    making masks, overlapped), ``post_wait`` (the model thread waiting for the post thread at the end),
    ``commit`` and ``total``.
    """

    post_queue_steps = 2

    def __init__(self, config: LabelConfig, device: str | None = None) -> None:
        self.config = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model_path = resolve_model(config.model, config.mode)
        # the driver digested the model before planning: an actor on another node must load those very bytes
        self.model, self.model_config, _ = load_checkpoint(model_path, map_location=self.device,
                                                           expected_sha256=config.model_sha256,
                                                           input_size=config.input_size)
        self.model.eval()
        if self.model_config.mode != config.mode:
            raise RvosBatchError(
                f"model {config.model!r} is a {self.model_config.mode} model; this run is --mode {config.mode}"
            )
        self.tracker: RVOS | None = None
        self.frame_size = self.model_config.input_size  # the size frames are decoded to
        if config.tracker is not None:
            self.tracker, tracker_config, _ = load_checkpoint(resolve_model(config.tracker, "one-shot"),
                                                              map_location=self.device,
                                                              expected_sha256=config.tracker_sha256)
            if tracker_config.mode != "one-shot":
                raise RvosBatchError(
                    f"--tracker {config.tracker!r} is a {tracker_config.mode} model; a tracker is one-shot"
                )
            self.tracker.eval()
            self.frame_size = tracker_config.input_size  # the finder's frames are resized from these
        self.predict_config = speed_settings(
            PredictConfig(threshold=config.threshold, min_area=config.min_area, device=str(self.device),
                          appearance=config.appearance_config(), levels=config.levels_config()), config
        )
        self.reader = CorpusReader(config.corpus, storage_options=config.storage_options)
        self.store = maskstore.MaskStore(config.out, storage_options=config.storage_options)
        self.pool = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="decode")
        h, w = self.frame_size
        self._draft = (w, h)
        self._device_decode = config.gpu_decode or os.environ.get(GPU_DECODE_ENV, "0") == "1"
        self.last_timings: dict[str, float] = {}
        self._decode_streams = threading.local()

    # -- decode (runs on the pool) ------------------------------------------------------------------
    def _decode(self, record: FrameRecord) -> _Decoded:
        if self._device_decode and _complete_jpeg(record.image):
            try:
                w0, h0 = imaging.image_size(record.image)  # header only: size and the pixel-bomb check
                return _Decoded(record.frame_index, self._decode_on_device(record.image), (h0, w0))
            except Exception:  # nvJPEG refuses some JPEGs (e.g. CMYK): PIL below decodes them or names the fault
                pass
        try:
            w0, h0 = imaging.image_size(record.image)
            rgb = imaging.decode_image(record.image, draft=self._draft)
        except Exception as e:
            raise FrameError(record.frame_index, e) from e
        return _Decoded(record.frame_index, preprocess(rgb, self.frame_size), (h0, w0))

    def _decode_on_device(self, data: bytes) -> torch.Tensor:
        """JPEG bytes -> uint8 (3, h, w) at the model input size, decoded and resized on the worker's device.

        Runs on a decode thread, on that thread's own CUDA stream, and waits for that stream before returning:
        the model's stream never waits on decoding, and no nvJPEG work is pending when the output's memory is
        handed on (torchvision's decoder allocates on the caller's stream but decodes on its own).
        """
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if self.device.type != "cuda":
            img = decode_jpeg(raw, mode=ImageReadMode.RGB)
            return _resize_uint8(img, self.frame_size)
        stream = getattr(self._decode_streams, "stream", None)
        if stream is None:
            stream = self._decode_streams.stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            img = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
            x = _resize_uint8(img, self.frame_size)
        stream.synchronize()
        x.record_stream(torch.cuda.default_stream(self.device))  # used and freed on the model's stream
        return x

    # -- prompts --------------------------------------------------------------------------------------
    def _load_prompts(self, spec: ShardSpec) -> tuple[dict[str, dict[int, dict[int, np.ndarray]]], dict[str, str]]:
        """Given masks for the shard's videos: video -> frame_index -> object_id -> bool mask, and per video the
        error of a prompt that could not be decoded (that video fails; the others run)."""
        url = self.config.prompts_url
        if url is None:
            return {}, {}
        ids = [v.video_id for v in spec.videos]
        table = maskstore.read_mask_dataset(url, storage_options=self.config.storage_options,
                                            filter=pa.compute.field("video_id").isin(ids))
        out: dict[str, dict[int, dict[int, np.ndarray]]] = {}
        bad: dict[str, str] = {}
        for row in table.to_pylist():
            vid, frame, obj = row["video_id"], row["frame_index"], row["object_id"]
            try:
                mask = rle.decode({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
            except RLEError as e:
                bad.setdefault(vid, f"prompt of object {obj} at frame {frame}: {e}")
                continue
            out.setdefault(vid, {}).setdefault(frame, {})[obj] = mask
        return out, bad

    # -- the shard --------------------------------------------------------------------------------------
    def process_shard(self, spec: ShardSpec, progress: ProgressFn | None = None, commit: bool = True) -> ShardResult:
        t0 = time.perf_counter()
        fault_point("shard_start", spec.shard_id)
        prompts, bad_prompts = self._load_prompts(spec)
        session = self._session()
        pending: Iterator[VideoEntry] = iter(spec.videos)
        rows: dict[int, _Video] = {}
        video_rows: list[dict[str, Any]] = []  # appended by the post thread, read after drain()
        mask_tables: list[pa.Table] = []
        frames_done = 0
        post = _PostThread(self.post_queue_steps)
        timings = dict.fromkeys(("wait_frames", "model", "post_busy", "post_wait", "commit", "total"), 0.0)
        self.last_timings = timings

        def finish(row: int, error: str | None) -> None:
            v = rows.pop(row)
            v.stream.close()
            session.release(row)
            post.submit(lambda: self._finish_video(v, error, video_rows, mask_tables))

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
                    if entry.video_id in bad_prompts:
                        finish(row, bad_prompts[entry.video_id])
                if not rows:
                    break
                # one frame per active row
                inputs: dict[int, tuple[int, torch.Tensor, tuple[int, int]]] = {}
                t_wait = time.perf_counter()
                for row in list(rows):
                    v = rows[row]
                    try:
                        item = v.stream.next()
                    except CorpusReadError as e:
                        if e.transient:  # the store failed, not the video: fail the shard so it is retried
                            raise
                        finish(row, _describe(e))
                        continue
                    except Exception as e:
                        finish(row, _describe(e))
                        continue
                    if item is None:
                        finish(row, "video has no frames" if v.stepped == 0 else None)
                        continue
                    inputs[row] = (item.frame_index, item.tensor, item.orig_size)
                t_model = time.perf_counter()
                timings["wait_frames"] += t_model - t_wait
                if not inputs:
                    continue
                stepped = 0
                steps = self._step(session, inputs, finish)
                timings["model"] += time.perf_counter() - t_model
                for step in steps:
                    videos = {row: rows[row] for row in step.rows}
                    for v in videos.values():
                        v.stepped += 1
                    stepped += len(videos)
                    # masks are made on the post thread while this thread runs the next step
                    post.submit(functools.partial(self._collect, step, videos, progress))
                frames_done += stepped
                fault_point("frame", spec.shard_id, frames_done)
                if frames_done // TRIM_EVERY_FRAMES != (frames_done - stepped) // TRIM_EVERY_FRAMES:
                    release_freed_memory()
            t_drain = time.perf_counter()
            post.drain()
            timings["post_wait"] = time.perf_counter() - t_drain
        except BaseException:
            post.abandon()
            raise
        finally:
            for row in list(rows):
                rows[row].stream.close()

        masks = pa.concat_tables(mask_tables) if mask_tables else maskstore.empty_mask_table()
        videos_table = maskstore.video_table(video_rows)
        seconds = time.perf_counter() - t0
        failed = tuple((r["video_id"], r["error"]) for r in video_rows if r["status"] != "ok")
        frames_ok = sum(r["num_frames"] for r in video_rows)
        result = ShardResult(spec.shard_id, len(video_rows) - len(failed), len(failed), frames_ok,
                             masks.num_rows, seconds, failed)
        timings["post_busy"] = post.busy_s
        if commit:
            t_commit = time.perf_counter()
            self.store.commit_shard(spec.shard_id, masks, videos_table, {
                "videos_ok": result.videos_ok, "videos_failed": result.videos_failed,
                "frames": result.frames, "masks": result.masks, "seconds": round(seconds, 3),
            })
            timings["commit"] = time.perf_counter() - t_commit
        timings["total"] = time.perf_counter() - t0
        return result

    # -- post thread jobs -------------------------------------------------------------------------------
    @staticmethod
    def _collect(step: Step, videos: dict[int, _Video], progress: ProgressFn | None) -> None:
        """Masks of one step as RLE rows of each video (post thread)."""
        try:
            out = step.rles()
        except Exception as e:
            for v in videos.values():
                v.error = v.error or f"making masks failed: {_describe(e)}"
            return
        for row, r in out.items():
            v = videos[row]
            v.frames += 1
            v.object_ids.update(int(i) for i in r.object_ids)
            v.rows.add(r)
        if progress is not None and out:
            progress(len(out))

    @staticmethod
    def _finish_video(v: _Video, error: str | None, video_rows: list[dict[str, Any]],
                      mask_tables: list[pa.Table]) -> None:
        """A video's row and, if it succeeded, its masks (post thread, after all of its frames)."""
        error = error or v.error
        if error is None and len(v.rows):
            mask_tables.append(v.rows.table(v.entry.video_id))
        video_rows.append({
            "video_id": v.entry.video_id, "num_frames": v.frames,
            "num_objects": len(v.object_ids) if error is None else 0,
            "status": "ok" if error is None else "failed", "error": error,
            "seconds": time.perf_counter() - v.started,
        })
        if error is not None:
            log.warning("video %s failed: %s", v.entry.video_id, error)

    def _session(self) -> Session:
        if self.tracker is None:
            return BatchSession(self.model, self.predict_config, capacity=self.config.batch_videos)
        return DiscoverTrackSession(self.model, self.tracker, self.predict_config, capacity=self.config.batch_videos)

    def _start_video(self, session: Session, rows: dict[int, _Video], row: int, entry: VideoEntry,
                     prompts: dict[int, dict[int, np.ndarray]] | None) -> None:
        if self.config.mode == "one-shot" and not prompts:
            prompts = {}
        session.add(row, entry.video_id, prompts=prompts if self.config.mode == "one-shot" else None)
        stream = _FrameStream(self.reader, entry, self.pool, self._decode, self.config.prefetch_frames)
        rows[row] = _Video(entry, stream, time.perf_counter())

    def _step(self, session: Session, inputs: dict[int, tuple[int, torch.Tensor, tuple[int, int]]],
              finish: Callable[[int, str | None], None]) -> list[Step]:
        """Step all rows at once; if that fails, step them one by one so only the faulty video fails."""
        try:
            return [session.step_async(inputs)]
        except Exception:
            if len(inputs) == 1:
                row = next(iter(inputs))
                finish(row, f"model failed at frame {inputs[row][0]}: {_describe_current()}")
                return []
        steps: list[Step] = []
        for row, item in inputs.items():
            try:
                steps.append(session.step_async({row: item}))
            except Exception as e:
                finish(row, f"model failed at frame {item[0]}: {_describe(e)}")
        return steps

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.reader.close()


GPU_DECODE_ENV = "RVOS_BATCH_GPU_DECODE"  # "1": decode JPEGs with nvJPEG on the worker's GPU (default: PIL, threads)
COMPILE_ENV = "RVOS_BATCH_COMPILE"  # a torch.compile mode for the model on CUDA, e.g. "default"
AMP_ENV = "RVOS_BATCH_AMP"  # "float32" turns bfloat16 autocast off on CUDA


def speed_settings(base: PredictConfig, config: LabelConfig | None = None) -> PredictConfig:
    """``base`` with the fast settings for its device (:meth:`PredictConfig.for_device`) and the run's choices:
    ``config.compile`` (a compile mode; CUDA only, as compiling on a CPU worker costs more than it saves on short
    shards) and ``config.amp`` ("float32", "bfloat16", "float16"); where those are unset, ``RVOS_BATCH_COMPILE``
    and ``RVOS_BATCH_AMP`` from the environment."""
    overrides: dict[str, Any] = {}
    cuda = torch.device(base.device).type == "cuda"
    mode = ((config.compile if config is not None else None) or os.environ.get(COMPILE_ENV, "")).strip()
    if mode and cuda:
        overrides["compile"] = mode
    amp = ((config.amp if config is not None else None) or os.environ.get(AMP_ENV, "")).strip()
    if amp:
        overrides["amp_dtype"] = None if amp == "float32" else amp
    return PredictConfig.for_device(base.device, threshold=base.threshold, min_area=base.min_area,
                                    max_batch_videos=base.max_batch_videos, appearance=base.appearance,
                                    levels=base.levels, **overrides)


def _complete_jpeg(data: bytes) -> bool:
    """A JPEG that starts with SOI and ends with EOI (a truncated file goes to PIL, which reports it)."""
    return data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def _resize_uint8(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H0, W0) -> uint8 (3, h, w), antialiased bilinear like :func:`preprocess`, on img's device."""
    if tuple(img.shape[1:]) == tuple(size):
        return img.contiguous()
    x = torch.nn.functional.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False,
                                        antialias=True)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


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


def run_in_process(config: LabelConfig, progress: ProgressFn | None = None) -> list[ShardResult]:
    """Label a whole corpus in this process, shard after shard, with the same worker the Ray actors use.

    For machines without Ray (a GPU box measured in-process) and for evaluation scripts. Already committed
    shards are skipped, so it resumes like the Ray job; it takes no lock and writes no run.json.
    """
    from rvos_batch.job.plan import plan_shards

    worker = ShardWorker(config)
    try:
        done = worker.store.committed_shard_ids()  # names only, as the driver does
        shards = plan_shards(worker.reader.list_videos(), config.videos_per_shard)
        return [worker.process_shard(s, progress=progress) for s in shards if s.shard_id not in done]
    finally:
        worker.close()
