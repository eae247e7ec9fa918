"""Predictor: runs RVOS over many videos at once and turns its logits into production masks.

A :class:`BatchSession` holds ``capacity`` batch rows, each carrying one video's recurrent state; rows are
filled with ``add``, advanced with ``step`` (one batched model step over the rows that have a frame) and freed
with ``release``, so a long video never blocks the rows around it. Each frame gives a :class:`FrameResult`:
per-pixel overlaps resolved, empty slots dropped, one confidence score per mask, original resolution, and
object ids that stay stable through the video. ``preprocess`` is CPU-only so it can run in decode threads.
:func:`predict_video` is the one-video convenience built on the same session.

For throughput, ``step_async`` launches a step and returns a :class:`PendingStep` at once; its ``result()`` (dense
masks) or ``rles()`` (:class:`FrameRLE`, run-length encoded where the masks are: on the GPU when they are there)
may run on another thread while the next step runs. Nothing in ``step_async`` waits for the device (except on
frames that bring prompt masks): frames are uploaded from pinned memory and the state is replaced on the device.
Masks of all rows of one size are upsampled and resolved in one batched call, on CUDA on a side stream.
``PredictConfig`` also selects bfloat16 autocast, channels_last, torch.compile (CUDA graphs with
"reduce-overhead") and a fixed batch shape for compiled models; ``PredictConfig.for_device`` picks the fast
settings of a device.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_batch import rle, rle_torch
from rvos_batch.appearance import AppearanceConfig, AppearanceState, apply_check
from rvos_batch.appearance import check as appearance_check
from rvos_batch.appearance import view as appearance_view
from rvos_batch.levels import LevelsConfig, LevelsState, auto_levels
from rvos_batch.model.config import ConfigError, RVOSConfig
from rvos_batch.model.rvos import RVOS, RVOSState, given_claims, overlay_given

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("eager", "aot_eager")  # tracing only: check a model compiles without a compiler toolchain
_GRAPH_MODES = ("reduce-overhead", "max-autotune")

MIN_PROB = 1e-12  # a slot's probabilities below this are zero (no denormal floats downstream; see slot_probs)
Prompts = Mapping[int, Mapping[int, np.ndarray]]  # frame_index -> object_id -> bool mask (H0, W0)
# (frame_index, preprocessed frame (3, h, w)) or (frame_index, frame, (H0, W0))
FrameInput = tuple[int, Tensor] | tuple[int, Tensor, tuple[int, int]]


@dataclass(frozen=True)
class PredictConfig:
    """How model output becomes masks, and where the model runs.

    threshold: a pixel is foreground for a slot when its probability is above this. min_area: slots whose final
    mask (original resolution, after overlap resolution) has fewer pixels are dropped. device: torch device.
    amp_dtype: None (float32) or "bfloat16" / "float16" autocast. max_batch_videos: default session capacity.
    channels_last: run the model's convolutions in NHWC (faster with cuDNN tensor cores). compile: None, a
    torch.compile mode ("default", "reduce-overhead" = CUDA graphs, "max-autotune", "max-autotune-no-cudagraphs")
    or a debugging backend ("eager", "aot_eager"), applied to the encoder and the per-slot decoder, whose shapes are
    fixed. fixed_batch: always step all ``capacity`` rows (idle rows get a blank frame and keep their state), so
    the compiled shapes never change as videos end. None of these change what a frame's masks are meant to be;
    bfloat16 and compiled kernels round differently from float32. appearance: the appearance check
    (:mod:`rvos_batch.appearance`; one-shot slots against their given masks, zero-shot slots against their first
    masks), or None to report every mask the model makes. given_is_output: at a frame where an object's mask is
    given, report that mask as its output (one-shot; see :meth:`BatchSession.step`) rather than the model's reading
    of it. levels: auto-levels (:mod:`rvos_batch.levels`): a video whose contrast is lower than the training
    frames' is stretched up to it before the model, the check and the filter see it; None (the default) leaves
    frames as they are.
    """

    threshold: float = 0.5
    min_area: int = 1
    device: str = "cpu"
    amp_dtype: str | None = None
    max_batch_videos: int = 8
    channels_last: bool = False
    compile: str | None = None
    fixed_batch: bool = False
    appearance: AppearanceConfig | None = field(default_factory=AppearanceConfig)
    given_is_output: bool = True
    levels: LevelsConfig | None = None

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> PredictConfig:
        """The fast settings for ``device``: on CUDA bfloat16 autocast and channels_last (tensor cores); on CPU
        plain float32 (bfloat16 on a CPU without AMX is slower). ``overrides`` set any field, e.g. compile."""
        fast: dict[str, Any] = {"device": device}
        if torch.device(device).type == "cuda":
            fast.update(amp_dtype="bfloat16", channels_last=True)
        fast.update(overrides)
        if fast.get("compile") is not None and "fixed_batch" not in overrides:
            fast["fixed_batch"] = True  # one compiled shape per session instead of one per batch size
        return cls(**fast)

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= float(self.threshold) < 1.0:
            raise ConfigError(f"PredictConfig.threshold={self.threshold!r}: allowed is a number in [0, 1)")
        if not isinstance(self.min_area, int) or isinstance(self.min_area, bool) or self.min_area < 1:
            raise ConfigError(f"PredictConfig.min_area={self.min_area!r}: allowed is an integer >= 1 (pixels)")
        if self.amp_dtype is not None and self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(
                f"PredictConfig.amp_dtype={self.amp_dtype!r}: allowed values are None, {list(AMP_DTYPES)}"
            )
        if not isinstance(self.max_batch_videos, int) or self.max_batch_videos < 1:
            raise ConfigError(f"PredictConfig.max_batch_videos={self.max_batch_videos!r}: allowed is an integer >= 1")
        if self.compile is not None and self.compile not in COMPILE_MODES + COMPILE_BACKENDS:
            raise ConfigError(
                f"PredictConfig.compile={self.compile!r}: allowed values are None, "
                f"{list(COMPILE_MODES + COMPILE_BACKENDS)}"
            )
        if not isinstance(self.given_is_output, bool):
            raise ConfigError(f"PredictConfig.given_is_output={self.given_is_output!r}: allowed is True or False")
        if self.appearance is not None and not isinstance(self.appearance, AppearanceConfig):
            raise ConfigError(
                f"PredictConfig.appearance={self.appearance!r}: allowed is None or an AppearanceConfig"
            )
        if self.levels is not None and not isinstance(self.levels, LevelsConfig):
            raise ConfigError(f"PredictConfig.levels={self.levels!r}: allowed is None or a LevelsConfig")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"PredictConfig.device={self.device!r}: not a torch device (e.g. 'cpu', 'cuda:0')"
            ) from None


@dataclass(frozen=True)
class FrameResult:
    """Masks of one frame. K objects: object_ids int32 (K,), masks bool (K, H0, W0) disjoint, scores float32 (K,)
    = mean foreground probability inside each mask, in [0, 1]."""

    frame_index: int
    object_ids: np.ndarray
    masks: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class FrameRLE:
    """Masks of one frame as COCO RLE, ready to store: ``counts[k]`` is the compressed RLE string of object
    ``object_ids[k]``'s mask of ``size`` (H0, W0); areas int64 (K,), boxes float64 (K, 4) as pycocotools
    ``toBbox``, scores float32 (K,) as in :class:`FrameResult`. Equal to ``rle.encode_batch_with_stats`` of the
    FrameResult's masks."""

    frame_index: int
    size: tuple[int, int]
    object_ids: np.ndarray
    counts: list[str]
    areas: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray


def preprocess(rgb: np.ndarray, input_size: tuple[int, int] | RVOSConfig) -> Tensor:
    """RGB uint8 (H0, W0, 3) -> uint8 tensor (3, h, w) at the model's input size (antialiased bilinear).

    input_size: (h, w), or the model's RVOSConfig (its ``input_size``).

    Stays uint8 (4x less to copy to the device); :class:`BatchSession` converts to float [0, 1] on the device.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"preprocess: expected RGB uint8 (H, W, 3), got {desc}")
    size = input_size.input_size if isinstance(input_size, RVOSConfig) else (int(input_size[0]), int(input_size[1]))
    rgb = np.ascontiguousarray(rgb) if rgb.flags.writeable else np.array(rgb)  # torch needs a writable array
    x = torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H0, W0)
    if tuple(x.shape[1:]) == size:
        return x.contiguous()
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0]  # (3, h, w) uint8


@dataclass
class _Row:
    video_id: str
    orig_size: tuple[int, int] | None
    object_ids: tuple[int, ...]  # one-shot: slot i <-> object_ids[i]; zero-shot: slot s <-> s + 1
    prompts: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    last_frame: int | None = None


@dataclass(frozen=True)
class SessionSnapshot:
    """What :meth:`BatchSession.restore` puts back: the recurrent state, the appearance check's, the videos'
    levels and the rows."""

    state: RVOSState
    rows: tuple[_Row | None, ...]
    appearance: AppearanceState | None = None
    levels: LevelsState | None = None


def _prompt_objects(prompts: Prompts) -> tuple[int, ...]:
    """Objects in order of their first prompted frame, ties by id: slot i is the i-th object."""
    first: dict[int, int] = {}
    for frame in sorted(prompts):
        for obj in sorted(prompts[frame]):
            first.setdefault(int(obj), int(frame))
    return tuple(sorted(first, key=lambda o: (first[o], o)))


class BatchSession:
    """``capacity`` batch rows of RVOS state on ``config.device``; one video per occupied row.

    The model is moved to the device and put in eval mode. Not thread-safe: one caller drives it.
    """

    def __init__(self, model: RVOS, config: PredictConfig, capacity: int | None = None) -> None:
        self.model = model.to(config.device).eval()
        self.config = config
        self.capacity = config.max_batch_videos if capacity is None else int(capacity)
        if self.capacity < 1:
            raise ValueError(f"capacity={self.capacity}: allowed is >= 1")
        self.device = torch.device(config.device)
        self.input_size = model.config.input_size
        self.one_shot = model.config.one_shot
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)  # 4-D weights only; a no-op the second time
        if config.compile is not None:
            compile_model(self.model, config.compile)
        # CUDA graphs replay into static buffers: a new graph generation starts at every step.
        self._graphed = config.compile in _GRAPH_MODES and self.device.type == "cuda"
        self._blank_frame: Tensor | None = None
        self.post_stream: Any = None  # CUDA: postprocessing runs here, beside the model's stream
        if self.device.type == "cuda":
            self.post_stream = torch.cuda.Stream(self.device)
        with torch.inference_mode():
            self.state: RVOSState = model.init_state(self.capacity, device=self.device, dtype=torch.float32)
        # The appearance check: one-shot slots against their given masks, zero-shot slots against their first masks.
        self.appearance: AppearanceState | None = None
        if config.appearance is not None:
            self.appearance = AppearanceState.empty(self.capacity, self.state.num_slots, config.appearance,
                                                    self.device)
        # Auto-levels: each row's video's levels (rvos_batch.levels).
        self.levels: LevelsState | None = None
        if config.levels is not None:
            self.levels = LevelsState.empty(self.capacity, self.device)
        self._rows: list[_Row | None] = [None] * self.capacity

    # ---- rows --------------------------------------------------------------------------------------------------

    def free_rows(self) -> list[int]:
        return [i for i, r in enumerate(self._rows) if r is None]

    def video_id(self, row: int) -> str | None:
        r = self._rows[row]
        return None if r is None else r.video_id

    def add(
        self,
        row: int,
        video_id: str,
        orig_size: tuple[int, int] | None = None,
        prompts: Prompts | None = None,
    ) -> None:
        """Start ``video_id`` in the free ``row``.

        orig_size: (H0, W0) of its frames, the size masks are returned at; may instead come with each frame in
        ``step``. prompts (one-shot only): frame_index -> object_id -> bool mask (H0, W0). Slot i tracks the i-th
        object by first prompted frame, from that frame on; a later prompt for a started object re-anchors it.
        A one-shot video without prompts has no objects: its frames give empty results.
        """
        self._check_row(row)
        held = self._rows[row]
        if held is not None:
            raise ValueError(f"row {row} holds video {held.video_id!r}; release it before adding {video_id!r}")
        size = None
        if orig_size is not None:
            size = (int(orig_size[0]), int(orig_size[1]))
            if size[0] < 1 or size[1] < 1:
                raise ValueError(f"video {video_id!r}: orig_size={orig_size!r}; allowed is (H0, W0) positive")
        n_slots = self.state.num_slots
        if self.one_shot:
            prompts = prompts or {}
            objects = _prompt_objects(prompts)
            if len(objects) > n_slots:
                raise ValueError(
                    f"video {video_id!r}: {len(objects)} prompted objects {list(objects)}; this model has "
                    f"{n_slots} slots"
                )
            clean: dict[int, dict[int, np.ndarray]] = {}
            for frame, masks in prompts.items():
                for obj, mask in masks.items():
                    m = np.asarray(mask)
                    if m.ndim != 2 or (size is not None and m.shape != size):
                        raise ValueError(
                            f"video {video_id!r}: prompt mask of object {obj} at frame {frame} has shape {m.shape}; "
                            f"expected the frame size (H0, W0){'' if size is None else ' = ' + str(size)}"
                        )
                    clean.setdefault(int(frame), {})[int(obj)] = m.astype(bool, copy=False)
            info = _Row(video_id, size, objects, clean)
        else:
            if prompts:
                raise ValueError(f"video {video_id!r}: prompts given to a zero-shot model (mode 'zero-shot')")
            info = _Row(video_id, size, tuple(range(1, n_slots + 1)))
        with torch.inference_mode():
            self.state = self.model.reset_rows(self.state, self._index([row]))
            if self.appearance is not None:
                self.appearance = self.appearance.reset_rows(self._index([row]))
            if self.levels is not None:
                self.levels = self.levels.reset_rows(self._index([row]))
        self._rows[row] = info

    def snapshot(self) -> SessionSnapshot:
        """The recurrent state and the rows (their progress and prompts) as they are now, for :meth:`restore`.

        Steps replace the state rather than change it, so this holds references, except under CUDA graphs, whose
        static output buffers the next replay overwrites: there the state is copied."""
        state = self.state
        if self._graphed:
            state = state.with_tensors([t.clone() for t in state.tensors()])
        return SessionSnapshot(state, tuple(None if r is None else replace(r) for r in self._rows), self.appearance,
                               self.levels)

    def restore(self, snapshot: SessionSnapshot) -> None:
        """Undo the steps (and the prompts they brought) since ``snapshot``. Meant for undoing a step at once: rows
        added or released since then are put back as they were."""
        self.state = snapshot.state
        self.appearance = snapshot.appearance
        self.levels = snapshot.levels
        self._rows = [None if r is None else replace(r) for r in snapshot.rows]

    def release(self, row: int) -> None:
        """Free ``row``; its state is zeroed when the next video is added."""
        self._check_row(row)
        self._rows[row] = None

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.capacity:
            raise ValueError(f"row={row}: allowed is 0..{self.capacity - 1}")

    # ---- one batched step --------------------------------------------------------------------------------------

    def step(self, frames: Mapping[int, FrameInput],
             prompts: Mapping[int, Mapping[int, np.ndarray]] | None = None) -> dict[int, FrameResult]:
        """One batched model step for the rows in ``frames``; returns each row's FrameResult.

        frames: row -> (frame_index, preprocessed (3, h, w) uint8 or float in [0, 1]), or
        (frame_index, tensor, (H0, W0)) to give the original size with the frame. Rows absent from ``frames`` are
        not advanced. A row's frame indices must increase. On an invalid input or a model error nothing is
        advanced (an error while making the masks, after the step, leaves the state advanced).

        prompts (one-shot only): row -> object_id -> bool mask (H0, W0), masks given at this very frame, as if they
        had come with ``add``'s prompts: a new object takes the row's next slot from this frame on, a started one
        is re-anchored. They are kept only if the step succeeds.

        At a frame where an object's mask is given (here or with ``add``), that mask is its output (unless
        ``PredictConfig.given_is_output`` is off), resized to the model's input size and back like every output,
        and reported even where the appearance check would leave the object out. Other objects give up the pixels
        it takes; where given masks overlap, the lower slot takes the pixel.
        """
        return self.step_async(frames, prompts).result()

    def step_async(self, frames: Mapping[int, FrameInput],
                   prompts: Mapping[int, Mapping[int, np.ndarray]] | None = None) -> PendingStep:
        """:meth:`step` without waiting: runs (on CUDA: queues) the model step, advances the state, and returns a
        :class:`PendingStep` whose ``result()`` / ``rles()`` give the masks.

        Nothing here waits for the device: frames go up from pinned memory, the state is replaced on the device,
        and the upsampling to the original size, the overlap resolution and the copy back happen in
        ``PendingStep.result()``, which may run on another thread (on CUDA on its own stream) while this thread
        launches the next step. Validation errors and model errors raised on the host leave the state unchanged.
        """
        if prompts:
            unknown = sorted(set(prompts) - set(frames))
            if unknown:
                raise ValueError(f"prompts for rows {unknown}, which are not stepped")
        if not frames:
            return PendingStep(self, [], None, None, None)
        rows = sorted(frames)
        infos: list[_Row] = []
        indices: list[int] = []
        sizes: list[tuple[int, int]] = []
        for row in rows:
            self._check_row(row)
            info = self._rows[row]
            if info is None:
                raise ValueError(f"row {row} is free; add a video before stepping it")
            item = frames[row]
            fi = int(item[0])
            if info.last_frame is not None and fi <= info.last_frame:
                raise ValueError(f"video {info.video_id!r}: frame {fi} after frame {info.last_frame}; must increase")
            size = (int(item[2][0]), int(item[2][1])) if len(item) > 2 else info.orig_size  # type: ignore[misc]
            if size is None:
                raise ValueError(f"video {info.video_id!r}: original size unknown; give it to add() or with the frame")
            if prompts and prompts.get(row):
                info = self._with_prompts(info, fi, size, prompts[row])  # a copy: committed after the step
            infos.append(info)
            indices.append(fi)
            sizes.append(size)
        tensors = [self._frame_tensor(frames[r][1]) for r in rows]
        all_rows = rows == list(range(self.capacity))
        pad = self.config.fixed_batch and not all_rows
        if pad:  # fixed shapes for compiled / graphed models: idle and free rows get a blank frame
            blank = self._blank(tensors[0])
            by_row = dict(zip(rows, tensors, strict=True))
            tensors = [by_row.get(r, blank) for r in range(self.capacity)]
        batch = self._upload(tensors)
        # the stepped rows' indices (a partial step) or the mask of rows present (a padded one), made once
        index = None if all_rows or pad else self._index(rows)
        present = self._present(rows) if pad else None
        batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()  # (b, 3, h, w) in [0, 1]
        new_levels = None
        if self.levels is not None:
            assert self.config.levels is not None
            sub_levels = self.levels if index is None else self.levels.index_rows(index)
            with torch.inference_mode():
                batch, seen_levels = auto_levels(batch, sub_levels, self.config.levels)
            if all_rows:
                new_levels = seen_levels
            elif present is not None:  # a padding row's blank frame is not its video's: its levels stay
                new_levels = self.levels.where(present, seen_levels)
            else:
                assert index is not None
                new_levels = self.levels.scatter_rows(index, seen_levels)
        if self.config.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        step_rows = list(range(self.capacity)) if pad else rows
        sub = self.state if index is None else self.state.index_rows(index)
        given, valid = self._given(infos, indices, sizes, step_rows, rows)
        n_active = self.state.num_slots
        if self.one_shot:  # slot s depends only on slots < s: decode no further than the largest row needs
            n_active = max(1, max(len(info.object_ids) for info in infos))
        amp = (
            torch.autocast(self.device.type, dtype=AMP_DTYPES[self.config.amp_dtype])
            if self.config.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode():
            if self._graphed:
                torch.compiler.cudagraph_mark_step_begin()
            with amp:
                logits, new_sub = self.model.step(batch, sub, given, valid, num_active_slots=n_active)
            probs = slot_probs(logits)  # (b, n, h, w)
            started = new_sub.started[:, :n_active]
            allowed = torch.zeros(len(step_rows), n_active, dtype=torch.bool)
            for row, info in zip(rows, infos, strict=True):  # zero-shot: all slots; one-shot: one per object
                allowed[step_rows.index(row), : len(info.object_ids)] = True
            if self.device.type == "cuda":  # no host sync: the step's kernels may still be running
                allowed = allowed.pin_memory()
            reportable = started & allowed.to(started.device, non_blocking=True)  # (b, n): slots that may be reported
            new_appearance = None
            if self.appearance is not None:
                assert self.config.appearance is not None
                sub_app = self.appearance if index is None else self.appearance.index_rows(index)
                looks = batch  # what the check and the filter read: one-shot, low-contrast videos stretched
                if self.one_shot:
                    looks, sub_app = appearance_view(batch, sub_app, self.config.appearance, present)
                seen = appearance_check(looks, probs, reportable, self.config.threshold, given, valid, sub_app,
                                        self.config.appearance, learn_first=not self.one_shot)
                if index is None:  # padding rows report no slot and are given nothing: their state is unchanged
                    new_appearance = seen.state
                else:
                    new_appearance = self.appearance.scatter_rows(index, seen.state)
                reportable = reportable & ~seen.hidden  # output only: a hidden slot's fed-back mask stays its own
                # refined (one-shot: and guided-filtered) masks: the output, and the masks fed back
                probs, fed = apply_check(looks, probs, new_sub.prev_masks, seen, reportable, valid,
                                         self.config.appearance, self.config.threshold, smooth=self.one_shot)
                if fed is not new_sub.prev_masks:
                    new_sub = replace(new_sub, prev_masks=fed)
            if given is not None and valid is not None and self.config.given_is_output:
                # A mask given at this frame is that object's output here, as SAM 2 reports a mask prompt: not the
                # model's reading of it. It passes through the input size like any output (J > 0.99 against it).
                # Other objects give up its pixels, by the rule the model applies to their fed-back masks.
                given = given.to(probs.dtype)
                probs = overlay_given(probs, given, valid, given_claims(given, valid))
                reportable = reportable | valid[:, :n_active]
            # Commit only once everything succeeded, so a failed step can be retried row by row.
            if all_rows:
                self.state = new_sub
            elif present is not None:
                self.state = _merge_rows(self.state, new_sub, present)
            else:
                assert index is not None
                self.state = self.state.scatter_rows(index, new_sub)
            if new_appearance is not None:
                self.appearance = new_appearance
            if new_levels is not None:
                self.levels = new_levels
            event = None
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
        for row, info, fi in zip(rows, infos, indices, strict=True):
            info.last_frame = fi
            self._rows[row] = info
        positions = rows if pad else list(range(len(rows)))  # each row's index in the stepped batch
        items = [
            _Item(row, pos, info.video_id, info.object_ids, fi, size)
            for row, pos, info, fi, size in zip(rows, positions, infos, indices, sizes, strict=True)
        ]
        return PendingStep(self, items, probs, reportable, event)

    def _with_prompts(self, info: _Row, frame_index: int, size: tuple[int, int],
                      masks: Mapping[int, np.ndarray]) -> _Row:
        """``info`` with ``masks`` given at ``frame_index``: new objects take the next slots, in id order."""
        if not self.one_shot:
            raise ValueError(f"video {info.video_id!r}: prompts given to a zero-shot model (mode 'zero-shot')")
        clean: dict[int, np.ndarray] = {}
        for obj, mask in masks.items():
            m = np.asarray(mask)
            if m.shape != size:
                raise ValueError(
                    f"video {info.video_id!r}: prompt mask of object {obj} at frame {frame_index} has shape "
                    f"{m.shape}; the frame is {size}"
                )
            clean[int(obj)] = m.astype(bool, copy=False)
        new = tuple(sorted(o for o in clean if o not in info.object_ids))
        objects = info.object_ids + new
        if len(objects) > self.state.num_slots:
            raise ValueError(
                f"video {info.video_id!r}: {len(objects)} prompted objects {list(objects)} at frame {frame_index}; "
                f"this model has {self.state.num_slots} slots"
            )
        given = dict(info.prompts)
        given[frame_index] = {**given.get(frame_index, {}), **clean}
        return replace(info, object_ids=objects, prompts=given)

    def _upload(self, tensors: list[Tensor]) -> Tensor:
        """Stack frames and move them to the device without waiting for it (pinned memory, non-blocking copy)."""
        if self.device.type != "cuda":
            return torch.stack([t.to(self.device) for t in tensors])
        if all(t.device.type == "cpu" for t in tensors):
            return torch.stack(tensors).pin_memory().to(self.device, non_blocking=True)
        return torch.stack([t.to(self.device, non_blocking=True) for t in tensors])  # some decoded on the device

    def _index(self, rows: list[int]) -> Tensor:
        """Row indices as a device tensor, copied up without a host sync (a plain list would block on CUDA)."""
        idx = torch.tensor(rows, dtype=torch.long)
        if self.device.type == "cuda":
            return idx.pin_memory().to(self.device, non_blocking=True)
        return idx

    def _present(self, rows: list[int]) -> Tensor:
        present = torch.zeros(self.capacity, dtype=torch.bool)
        present[rows] = True
        if self.device.type == "cuda":
            return present.pin_memory().to(self.device, non_blocking=True)
        return present

    def _blank(self, like: Tensor) -> Tensor:
        if self._blank_frame is None or self._blank_frame.dtype != like.dtype:
            self._blank_frame = torch.zeros(3, *self.input_size, dtype=like.dtype)
        return self._blank_frame

    def _frame_tensor(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[0] != 3 or tuple(x.shape[1:]) != self.input_size:
            raise ValueError(
                f"frame tensor must be (3, {self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}"
            )
        return x

    def _given(
        self,
        infos: list[_Row],
        frame_indices: list[int],
        sizes: list[tuple[int, int]],
        step_rows: list[int],
        rows: list[int],
    ) -> tuple[Tensor | None, Tensor | None]:
        """Prompt masks due at these frames, resized to the model input: (b, S, h, w) float and (b, S) bool.

        b = len(step_rows), the rows stepped (``rows`` plus padding rows in a fixed batch)."""
        if not self.one_shot:
            return None, None
        due = []
        for info, fi, size, row in zip(infos, frame_indices, sizes, rows, strict=True):
            i = step_rows.index(row)
            for obj, mask in info.prompts.get(fi, {}).items():
                if mask.shape != size:
                    raise ValueError(
                        f"video {info.video_id!r}: prompt mask of object {obj} at frame {fi} has shape {mask.shape}; "
                        f"the frame is {size}"
                    )
                due.append((i, info.object_ids.index(obj), mask))
        if not due:
            return None, None
        given = torch.zeros(len(step_rows), self.state.num_slots, *self.input_size, device=self.device)
        valid = torch.zeros(len(step_rows), self.state.num_slots, dtype=torch.bool, device=self.device)
        for i, slot, mask in due:
            m = torch.from_numpy(mask.astype(np.float32)).to(self.device)[None, None]  # (1, 1, H0, W0)
            # Antialiased (area-like) downsampling keeps a soft [0, 1] mask, like the fed-back probabilities.
            small = F.interpolate(m, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
            given[i, slot] = small[0, 0].clamp_(0.0, 1.0)
            valid[i, slot] = True
        return given, valid


@dataclass(frozen=True)
class _Item:
    row: int
    position: int  # index of the row in the stepped batch
    video_id: str
    object_ids: tuple[int, ...]
    frame_index: int
    size: tuple[int, int]  # (H0, W0)


# Upsampled probabilities of one postprocessing chunk: rows x slots x H0 x W0 floats (256 MB in float32).
_POST_CHUNK_ELEMENTS = 1 << 26


class PendingStep:
    """The masks of one :meth:`BatchSession.step_async`, made on demand.

    ``result()`` gives FrameResults (dense masks on the host); ``rles()`` gives FrameRLEs, encoded on the device
    on CUDA, so masks never cross the bus, only their run-length characters. Call one of them once, from any
    thread. On CUDA the work is queued on the session's ``post_stream`` behind the step's kernels, so its waits
    (copies to the host, sizes of the RLE output) never hold up the model's stream. All rows of one original
    size are upsampled and resolved in one batched call.
    """

    def __init__(self, session: BatchSession, items: list[_Item], probs: Tensor | None, reportable: Tensor | None,
                 event: Any) -> None:
        self._session = session
        self._items = items
        self._probs = probs  # (b, n, h, w) float32 on the device
        # (b, n) bool: started slots of the row's objects, less those the appearance check leaves out
        self._reportable = reportable
        self._event = event
        self.rows = [it.row for it in items]

    def result(self) -> dict[int, FrameResult]:
        """row -> FrameResult, as :meth:`BatchSession.step` returns."""
        out = self._run(as_rle=False)
        return out  # type: ignore[return-value]

    def rles(self) -> dict[int, FrameRLE]:
        """row -> FrameRLE: the same masks as ``result()``, run-length encoded."""
        out = self._run(as_rle=True)
        return out  # type: ignore[return-value]

    def _run(self, as_rle: bool) -> dict[int, FrameResult] | dict[int, FrameRLE]:
        if not self._items:
            return {}
        assert self._probs is not None and self._reportable is not None
        session = self._session
        ctx: Any = contextlib.nullcontext()
        if session.post_stream is not None:
            stream = session.post_stream
            stream.wait_event(self._event)
            self._probs.record_stream(stream)  # the allocator must not hand these blocks out before we are done
            self._reportable.record_stream(stream)
            ctx = torch.cuda.stream(stream)
        out: dict[int, Any] = {}
        with ctx, torch.inference_mode():
            groups: dict[tuple[int, int], list[_Item]] = {}
            for it in self._items:
                groups.setdefault(it.size, []).append(it)
            n = self._probs.shape[1]
            for size, items in groups.items():
                per_chunk = max(1, _POST_CHUNK_ELEMENTS // max(1, n * size[0] * size[1]))
                for start in range(0, len(items), per_chunk):
                    out.update(self._chunk(items[start : start + per_chunk], size, as_rle))
        return out

    def _chunk(self, items: list[_Item], size: tuple[int, int], as_rle: bool) -> dict[int, Any]:
        assert self._probs is not None and self._reportable is not None
        cfg = self._session.config
        b, n = self._reportable.shape
        positions = [it.position for it in items]
        if positions == list(range(b)):
            probs, reportable = self._probs, self._reportable
        else:
            idx = torch.tensor(positions, dtype=torch.long).to(self._probs.device)
            probs, reportable = self._probs.index_select(0, idx), self._reportable.index_select(0, idx)
        masks, area, score = resolve_masks(probs, reportable, size, cfg.threshold)
        keep = (area >= cfg.min_area) & reportable  # (g, n)
        keep_np = keep.cpu().numpy()
        score_np = score.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
        h0, w0 = size
        ids = [np.asarray(it.object_ids + (0,) * (n - len(it.object_ids)), dtype=np.int32) for it in items]
        out: dict[int, Any] = {}
        if not as_rle:
            masks_np = masks.cpu().numpy()
            for i, it in enumerate(items):
                k = keep_np[i]
                out[it.row] = FrameResult(it.frame_index, ids[i][k], masks_np[i][k], score_np[i][k])
            return out
        flat_keep = keep_np.reshape(-1)
        if masks.device.type == "cuda":  # encode where the masks are; only characters come back
            kept = masks.reshape(-1, h0, w0)[keep.reshape(-1)]
            rles, areas, boxes = rle_torch.encode_batch_with_stats(kept)
        else:
            kept_np = masks.cpu().numpy().reshape(-1, h0, w0)[flat_keep]
            if len(kept_np):
                rles, areas, boxes = rle.encode_batch_with_stats(kept_np)
            else:
                rles, areas, boxes = [], np.zeros(0, np.int64), np.zeros((0, 4), np.float64)
        start = 0
        for i, it in enumerate(items):
            k = keep_np[i]
            end = start + int(k.sum())
            out[it.row] = FrameRLE(
                frame_index=it.frame_index,
                size=size,
                object_ids=ids[i][k],
                counts=[r["counts"] for r in rles[start:end]],
                areas=np.asarray(areas[start:end], dtype=np.int64),
                boxes=np.asarray(boxes[start:end], dtype=np.float64).reshape(-1, 4),
                scores=score_np[i][k],
            )
            start = end
        return out


def slot_probs(logits: Tensor) -> Tensor:
    """The slots' probabilities (float32) from their logits, those under ``MIN_PROB`` set to zero: what the
    appearance check, its filter and the output read, at labeling time and in training with the check alike.

    Flushed so that they never work on denormal floats, which CPUs process many times slower: the confident
    background of dim frames made the one-shot model's steps about a quarter slower (bench_levels.py)."""
    probs = torch.sigmoid(logits.float())
    return probs.masked_fill(probs < MIN_PROB, 0.0)


def resolve_masks(
    probs: Tensor, reportable: Tensor, size: tuple[int, int], threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched core of :func:`postprocess`: probs (g, n, h, w), reportable (g, n) bool -> masks (g, n, H0, W0)
    bool (disjoint per row), area (g, n) int64, score (g, n) float (mean probability inside each mask).

    A pixel takes the slot with the highest bilinearly upsampled probability among those above ``threshold``
    (the lower slot on a tie). On CUDA all slots are upsampled at full size; on the CPU only where a slot can
    pass the threshold (:func:`_resolve_masks_cropped`), which gives the same masks.
    """
    if probs.device.type == "cpu":
        return _resolve_masks_cropped(probs, reportable, size, threshold)
    g, n = probs.shape[:2]
    # Slots not yet started never win a pixel. Zeroing them before upsampling is exact (bilinear weights are
    # per channel) and touches 4-8x fewer values than zeroing after.
    low = probs.float() * reportable[:, :, None, None]
    full = F.interpolate(low, size=size, mode="bilinear", align_corners=False)  # (g, n, H0, W0)
    best_p, best = full.max(dim=1)  # (g, H0, W0) each
    label = torch.where(best_p > threshold, best, n)  # slot index, n = background
    masks = label[:, None] == torch.arange(n, device=full.device)[None, :, None, None]  # (g, n, H0, W0), disjoint
    area = masks.sum(dim=(2, 3))  # dense reductions are cheap on the GPU and, unlike scatter_add, deterministic
    total = (full * masks).sum(dim=(2, 3))
    return masks, area, total / area.clamp(min=1)


@dataclass(frozen=True)
class _Axis:
    """Bilinear (align_corners=False) resampling of one axis from ``n_in`` to ``n_out`` samples, as
    F.interpolate computes it: output i reads inputs lo[i] and hi[i] with weights w_lo[i] and w_hi[i]."""

    lo: np.ndarray
    hi: np.ndarray
    w_lo: np.ndarray
    w_hi: np.ndarray

    @classmethod
    def make(cls, n_in: int, n_out: int) -> _Axis:
        # torch's float32 arithmetic, whose kernels fuse scale * (i + 0.5) - 0.5 into one rounding (an FMA):
        # the float64 product of two float32 numbers is exact, so rounding it once to float32 does the same
        scale = np.float64(np.float32(n_in) / np.float32(n_out))
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0).astype(np.float32)
        lo = np.minimum(src.astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = np.clip(src - lo.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
        return cls(lo, hi, (np.float32(1) - frac).astype(np.float32), frac)

    def span(self, first: int, last: int) -> tuple[int, int]:
        """The outputs [a, b) that read any input in [first, last]; all others read only inputs outside it."""
        touch = ((self.lo >= first) & (self.lo <= last)) | ((self.hi >= first) & (self.hi <= last))
        idx = np.flatnonzero(touch)
        return int(idx[0]), int(idx[-1]) + 1


@functools.lru_cache(maxsize=256)
def _axis(n_in: int, n_out: int) -> _Axis:
    return _Axis.make(n_in, n_out)


def _lerp(a: np.ndarray, w_a: np.ndarray, b: np.ndarray, w_b: np.ndarray) -> np.ndarray:
    """float32 a * w_a + b * w_b rounded as torch's AVX2 bilinear kernel mostly does: b * w_b first, then one
    fused multiply-add (float64 holds the exact product of two float32 numbers). With width resampled first, then
    height, as there, this matches F.interpolate on nearly every pixel; elsewhere it differs by one float32 ulp,
    which can only move a pixel between two slots tied to the last bit."""
    return (a.astype(np.float64) * w_a + (b * w_b).astype(np.float64)).astype(np.float32)


def _resolve_masks_cropped(
    probs: Tensor, reportable: Tensor, size: tuple[int, int], threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """CPU :func:`resolve_masks` that upsamples each slot only inside the box where it can pass ``threshold``.

    A bilinear value is a convex combination of the (up to) four inputs it reads, so it can exceed the threshold
    only where one of them does: outside the box of a slot's inputs above the threshold (grown by the outputs that
    read them), the slot is background. Objects cover a small part of most frames, so this upsamples a few percent
    of what full-size upsampling of every slot does, and slots that pass nowhere are never upsampled.
    """
    g, n, h, w = probs.shape
    h0, w0 = size
    ay, ax = _axis(h, h0), _axis(w, w0)
    low_all = probs.detach().float().numpy()
    rep = reportable.cpu().numpy()
    masks = np.zeros((g, n, h0, w0), dtype=bool)
    area = np.zeros((g, n), dtype=np.int64)
    total = np.zeros((g, n), dtype=np.float64)
    thr = np.float32(threshold)
    for i in range(g):
        above = (low_all[i] > thr) & rep[i][:, None, None]  # (n, h, w)
        slots = np.flatnonzero(above.any(axis=(1, 2)))
        if not len(slots):
            continue
        best_p = np.full((h0, w0), thr, dtype=np.float32)
        label = np.full((h0, w0), n, dtype=np.int16)
        crops: list[tuple[int, int, int, int, int, np.ndarray]] = []
        for k in slots:
            rows = np.flatnonzero(above[k].any(axis=1))
            cols = np.flatnonzero(above[k].any(axis=0))
            y0, y1 = ay.span(int(rows[0]), int(rows[-1]))
            x0, x1 = ax.span(int(cols[0]), int(cols[-1]))
            r_lo, r_hi = int(ay.lo[y0]), int(ay.hi[y1 - 1]) + 1  # the input rows and columns the crop reads
            c_lo, c_hi = int(ax.lo[x0]), int(ax.hi[x1 - 1]) + 1
            low = low_all[i, k, r_lo:r_hi, c_lo:c_hi]
            across = _lerp(low[:, ax.lo[x0:x1] - c_lo], ax.w_lo[x0:x1], low[:, ax.hi[x0:x1] - c_lo], ax.w_hi[x0:x1])
            up = _lerp(across[ay.lo[y0:y1] - r_lo], ay.w_lo[y0:y1, None],
                       across[ay.hi[y0:y1] - r_lo], ay.w_hi[y0:y1, None])
            win = up > best_p[y0:y1, x0:x1]  # strict: on a tie the earlier (lower) slot keeps the pixel
            best_p[y0:y1, x0:x1][win] = up[win]
            label[y0:y1, x0:x1][win] = k
            crops.append((int(k), y0, y1, x0, x1, up))
        for slot, y0, y1, x0, x1, up in crops:  # final owners: only now are all overlaps resolved
            m = label[y0:y1, x0:x1] == slot
            masks[i, slot, y0:y1, x0:x1] = m
            area[i, slot] = int(m.sum())
            total[i, slot] = float(up[m].sum(dtype=np.float64))
    score = torch.from_numpy((total / np.maximum(area, 1)).astype(np.float32))
    return torch.from_numpy(masks), torch.from_numpy(area), score


def _merge_rows(old: RVOSState, new: RVOSState, present: Tensor) -> RVOSState:
    """``new`` for the rows where ``present`` (B,) bool, ``old`` elsewhere; no host sync, fixed shapes."""
    return old.with_tensors([
        torch.where(present.view(-1, *([1] * (a.dim() - 1))), b.to(a.dtype), a)
        for a, b in zip(old.tensors(), new.tensors(), strict=True)
    ])


def compile_model(model: RVOS, mode: str) -> None:
    """torch.compile the encoder and the per-slot decoder of ``model`` in place, once per model.

    ``mode`` is a torch.compile mode (COMPILE_MODES) or a tracing-only backend (COMPILE_BACKENDS). Shapes are
    static (``dynamic=False``): a session with ``fixed_batch`` compiles one graph for the encoder and one for
    the decoder, reused by every slot of every frame.
    """
    done = getattr(model, "_rvos_compiled", None)
    if done == mode:
        return
    if done is not None:
        raise ValueError(f"model is already compiled with {done!r}; cannot compile it again with {mode!r}")
    if mode not in COMPILE_MODES + COMPILE_BACKENDS:
        raise ValueError(f"compile={mode!r}: allowed values are {list(COMPILE_MODES + COMPILE_BACKENDS)}")
    kwargs: dict[str, Any] = {"backend": mode} if mode in COMPILE_BACKENDS else {"mode": mode}
    model.encoder.compile(dynamic=False, **kwargs)
    model.decoder.compile(dynamic=False, **kwargs)
    model._rvos_compiled = mode  # type: ignore[assignment]


def postprocess(
    probs: Tensor,
    reportable: Tensor,
    object_ids: tuple[int, ...],
    orig_size: tuple[int, int],
    frame_index: int,
    threshold: float = 0.5,
    min_area: int = 1,
) -> FrameResult:
    """Slot probabilities (n, h, w) -> FrameResult at ``orig_size``.

    Probabilities are resized bilinearly to (H0, W0); a pixel belongs to the slot with the highest probability
    among those above ``threshold`` (so masks are disjoint); slots not ``reportable`` (n,) bool never win a
    pixel; slots left with fewer than ``min_area`` pixels are dropped; score = mean probability inside the mask.
    """
    h0, w0 = orig_size
    n = probs.shape[0]
    assert reportable.shape == (n,) and len(object_ids) == n, "one reportable flag and object id per slot"
    if n == 0 or not bool(reportable.any()):
        return _empty(frame_index, h0, w0)
    masks, area, score = resolve_masks(probs[None], reportable[None], (h0, w0), threshold)
    masks, area, score = masks[0], area[0], score[0]
    keep = (area >= min_area) & reportable
    idx = keep.nonzero().flatten()
    return FrameResult(
        frame_index=int(frame_index),
        object_ids=np.asarray(object_ids, dtype=np.int32)[idx.cpu().numpy()],
        masks=masks[idx].cpu().numpy(),
        scores=score[idx].clamp(0.0, 1.0).cpu().numpy().astype(np.float32),
    )


def _empty(frame_index: int, h0: int, w0: int) -> FrameResult:
    return FrameResult(
        frame_index=int(frame_index),
        object_ids=np.zeros(0, dtype=np.int32),
        masks=np.zeros((0, h0, w0), dtype=bool),
        scores=np.zeros(0, dtype=np.float32),
    )


def predict_video(
    model: RVOS,
    frames: Iterable[tuple[int, np.ndarray]],
    prompts: Prompts | None = None,
    config: PredictConfig | None = None,
    video_id: str = "video",
) -> Iterator[FrameResult]:
    """Masks for one video, frame by frame: frames yields (frame_index, RGB uint8 (H0, W0, 3))."""
    session = BatchSession(model, config or PredictConfig(), capacity=1)
    started = False
    for frame_index, rgb in frames:
        if not started:
            session.add(0, video_id, (rgb.shape[0], rgb.shape[1]), prompts)
            started = True
        yield session.step({0: (frame_index, preprocess(rgb, session.input_size))})[0]
    if started:
        session.release(0)
