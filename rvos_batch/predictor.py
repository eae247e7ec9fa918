"""Predictor: runs RVOS over many videos at once and turns its logits into production masks.

A :class:`BatchSession` holds ``capacity`` batch rows, each carrying one video's recurrent state; rows are
filled with ``add``, advanced with ``step`` (one batched model step over the rows that have a frame) and freed
with ``release``, so a long video never blocks the rows around it. Each frame gives a :class:`FrameResult`:
per-pixel overlaps resolved, empty slots dropped, one confidence score per mask, original resolution, and
object ids that stay stable through the video. ``preprocess`` is CPU-only so it can run in decode threads.
:func:`predict_video` is the one-video convenience built on the same session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_batch.model.config import ConfigError, RVOSConfig
from rvos_batch.model.rvos import RVOS, RVOSState

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

Prompts = Mapping[int, Mapping[int, np.ndarray]]  # frame_index -> object_id -> bool mask (H0, W0)
# (frame_index, preprocessed frame (3, h, w)) or (frame_index, frame, (H0, W0))
FrameInput = tuple[int, Tensor] | tuple[int, Tensor, tuple[int, int]]


@dataclass(frozen=True)
class PredictConfig:
    """How model output becomes masks, and where the model runs.

    threshold: a pixel is foreground for a slot when its probability is above this. min_area: slots whose final
    mask (original resolution, after overlap resolution) has fewer pixels are dropped. device: torch device.
    amp_dtype: None (float32) or "bfloat16" / "float16" autocast. max_batch_videos: default session capacity.
    """

    threshold: float = 0.5
    min_area: int = 1
    device: str = "cpu"
    amp_dtype: str | None = None
    max_batch_videos: int = 8

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
        with torch.inference_mode():
            self.state: RVOSState = model.init_state(self.capacity, device=self.device, dtype=torch.float32)
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
            self.state = self.model.reset_rows(self.state, [row])
        self._rows[row] = info

    def release(self, row: int) -> None:
        """Free ``row``; its state is zeroed when the next video is added."""
        self._check_row(row)
        self._rows[row] = None

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.capacity:
            raise ValueError(f"row={row}: allowed is 0..{self.capacity - 1}")

    # ---- one batched step --------------------------------------------------------------------------------------

    def step(self, frames: Mapping[int, FrameInput]) -> dict[int, FrameResult]:
        """One batched model step for the rows in ``frames``; returns each row's FrameResult.

        frames: row -> (frame_index, preprocessed (3, h, w) uint8 or float in [0, 1]), or
        (frame_index, tensor, (H0, W0)) to give the original size with the frame. Rows absent from ``frames`` are
        not advanced. A row's frame indices must increase. On an exception nothing is advanced.
        """
        if not frames:
            return {}
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
            infos.append(info)
            indices.append(fi)
            sizes.append(size)
        batch = torch.stack([self._frame_tensor(frames[r][1]) for r in rows]).to(self.device, non_blocking=True)
        batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()  # (b, 3, h, w) in [0, 1]
        all_rows = rows == list(range(self.capacity))
        sub = self.state if all_rows else self.state.index_rows(rows)
        given, valid = self._given(infos, indices, sizes)
        n_active = self.state.num_slots
        if self.one_shot:  # slot s depends only on slots < s: decode no further than the largest row needs
            n_active = max(1, max(len(info.object_ids) for info in infos))
        amp = (
            torch.autocast(self.device.type, dtype=AMP_DTYPES[self.config.amp_dtype])
            if self.config.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode():
            with amp:
                logits, new_sub = self.model.step(batch, sub, given, valid, num_active_slots=n_active)
            probs = torch.sigmoid(logits.float())  # (b, n, h, w)
            out: dict[int, FrameResult] = {}
            for i, (row, info) in enumerate(zip(rows, infos, strict=True)):
                n_obj = len(info.object_ids)
                out[row] = postprocess(
                    probs[i, :n_obj],
                    new_sub.started[i, :n_obj],  # one-shot: only slots whose object has appeared are reported
                    info.object_ids,
                    sizes[i],
                    indices[i],
                    threshold=self.config.threshold,
                    min_area=self.config.min_area,
                )
            # Commit only once everything succeeded, so a failed step can be retried row by row.
            self.state = new_sub if all_rows else self.state.scatter_rows(rows, new_sub)
        for info, fi in zip(infos, indices, strict=True):
            info.last_frame = fi
        return out

    def _frame_tensor(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[0] != 3 or tuple(x.shape[1:]) != self.input_size:
            raise ValueError(
                f"frame tensor must be (3, {self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}"
            )
        return x

    def _given(
        self, infos: list[_Row], frame_indices: list[int], sizes: list[tuple[int, int]]
    ) -> tuple[Tensor | None, Tensor | None]:
        """Prompt masks due at these frames, resized to the model input: (b, S, h, w) float and (b, S) bool."""
        if not self.one_shot:
            return None, None
        due = []
        for i, (info, fi, size) in enumerate(zip(infos, frame_indices, sizes, strict=True)):
            for obj, mask in info.prompts.get(fi, {}).items():
                if mask.shape != size:
                    raise ValueError(
                        f"video {info.video_id!r}: prompt mask of object {obj} at frame {fi} has shape {mask.shape}; "
                        f"the frame is {size}"
                    )
                due.append((i, info.object_ids.index(obj), mask))
        if not due:
            return None, None
        given = torch.zeros(len(infos), self.state.num_slots, *self.input_size, device=self.device)
        valid = torch.zeros(len(infos), self.state.num_slots, dtype=torch.bool, device=self.device)
        for i, slot, mask in due:
            m = torch.from_numpy(mask.astype(np.float32)).to(self.device)[None, None]  # (1, 1, H0, W0)
            # Antialiased (area-like) downsampling keeps a soft [0, 1] mask, like the fed-back probabilities.
            small = F.interpolate(m, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
            given[i, slot] = small[0, 0].clamp_(0.0, 1.0)
            valid[i, slot] = True
        return given, valid


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
    full = F.interpolate(probs[None].float(), size=(h0, w0), mode="bilinear", align_corners=False)[0]  # (n, H0, W0)
    full = full * reportable[:, None, None]  # slots not yet started never win a pixel
    best_p, best = full.max(dim=0)  # (H0, W0) each
    fg = best_p > threshold
    slots = torch.arange(n, device=full.device)
    masks = (best[None] == slots[:, None, None]) & fg[None]  # (n, H0, W0), disjoint
    area = masks.sum(dim=(1, 2))  # (n,)
    score = (full * masks).sum(dim=(1, 2)) / area.clamp(min=1)  # (n,)
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
