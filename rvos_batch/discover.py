"""Zero-shot labeling with a tracker: the zero-shot model finds the objects, a one-shot model follows them.

RVOS's zero-shot model both finds objects and follows them. Its one-shot model (RVOS-Mask) only follows, from
given masks, and does that far better: the shipped one was trained longer, runs at a larger size and has the
refinement head. A :class:`DiscoverTrackSession` runs both on every frame. An object the finder shows and the
tracker does not yet follow is handed to the tracker as a prompt at that frame (:func:`new_objects`), and the
tracker's masks are the output. No mask is given by anyone, so this is still zero-shot labeling. It is not in the
paper; `rvos-batch label --mode zero-shot` runs it with the shipped models (`--tracker auto`, the default;
`--tracker default` with any finder), and the model card has its figures.

The hand-over rule, per video and frame: a finder mask is handed over when it is not empty (at least
``min_area_fraction`` of the frame) and at most ``max_overlap`` of it lies on the tracker's masks of the previous
frame, while the tracker has slots left (``tracker_slots``, more than the shipped one-shot model was trained with:
its weights do not depend on the slot count). A finder slot may hand over again whenever its mask lies off what
the tracker follows, for instance after the tracker lost the object, or when the finder's slot moved to another
object.

A handed-over mask is first snapped onto the frame's colour edges (:func:`snap_masks`): the finder works at a
smaller size than the tracker, and its masks' edges are coarse. The tracker follows what it is given, so a prompt
that spills onto the background, or misses part of the object, is followed so.

The tracker's object ids count 1, 2, ... in the order objects are found; they are stable through the video.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_batch import rle
from rvos_batch.appearance import guided_filter
from rvos_batch.model.config import ConfigError, is_int_in
from rvos_batch.model.rvos import RVOS, with_slots
from rvos_batch.predictor import BatchSession, FrameInput, FrameResult, FrameRLE, PredictConfig


@dataclass(frozen=True)
class DiscoveryConfig:
    """When a finder mask becomes a tracked object, and how many the tracker may follow.

    min_area_fraction: of the frame's pixels (0.0: any non-empty mask; 0.0005 is 51 pixels of a 240x427 frame).
    max_overlap: the largest fraction of the mask that may lie on already tracked objects. tracker_slots: objects
    the tracker follows per video (the DAVIS unsupervised protocol scores up to 20 per video). snap_radius: the
    radius, in pixels at the tracker's input size, of the colour-guided filter that snaps a handed-over mask onto
    the frame's edges (:func:`snap_masks`; 0: hand over the finder's mask as it is), snap_eps its regulariser. The
    defaults were chosen on the two validation sets of the model card.
    """

    min_area_fraction: float = 0.0
    max_overlap: float = 0.05
    tracker_slots: int = 16
    snap_radius: int = 8
    snap_eps: float = 1e-3

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ConfigError(f"DiscoveryConfig.min_area_fraction={self.min_area_fraction!r}: allowed is [0, 1)")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise ConfigError(f"DiscoveryConfig.max_overlap={self.max_overlap!r}: allowed is [0, 1]")
        if not isinstance(self.tracker_slots, int) or isinstance(self.tracker_slots, bool) or self.tracker_slots < 1:
            raise ConfigError(f"DiscoveryConfig.tracker_slots={self.tracker_slots!r}: allowed is an integer >= 1")
        if not is_int_in(self.snap_radius, 0, 64):
            raise ConfigError(f"DiscoveryConfig.snap_radius={self.snap_radius!r}: allowed is an integer in 0..64 "
                              "(0: no snapping)")
        if not isinstance(self.snap_eps, (int, float)) or isinstance(self.snap_eps, bool) or not (
                0.0 < float(self.snap_eps) <= 1.0):
            raise ConfigError(f"DiscoveryConfig.snap_eps={self.snap_eps!r}: allowed is a number in (0, 1]")


def new_objects(found: FrameResult, tracked: np.ndarray | None, free_slots: int,
                config: DiscoveryConfig = DiscoveryConfig()) -> list[tuple[int, np.ndarray]]:
    """The finder's objects of this frame to hand to the tracker: (finder object id, mask), in finder id order.

    tracked: bool (H0, W0), the union of the tracker's masks on the previous frame (None: nothing tracked yet).
    free_slots: the tracker's slots left.
    """
    out: list[tuple[int, np.ndarray]] = []
    for obj, mask in zip(found.object_ids, found.masks, strict=True):
        if len(out) >= free_slots:
            break
        area = int(np.count_nonzero(mask))
        if area == 0 or area < config.min_area_fraction * mask.size:
            continue
        if tracked is not None and np.count_nonzero(mask & tracked) > config.max_overlap * area:
            continue
        out.append((int(obj), mask))
    return out


def snap_masks(frame: Tensor, masks: np.ndarray, radius: int, eps: float, threshold: float = 0.5,
               step: int = 2) -> np.ndarray:
    """Masks snapped onto the colour edges of ``frame``: bool (k, H0, W0) at the frame's original size -> the same.

    frame: (3, h, w), uint8 or float in [0, 1], the frame at the model's input size; the work is done on its device.
    Each mask is resized to (h, w) (antialiased), smoothed by :func:`~rvos_batch.appearance.guided_filter` of the
    frame (``radius``, ``eps``, ``step``), resized back and thresholded. A mask that would come out empty is kept
    as it was: snapping never drops an object.
    """
    if radius == 0 or len(masks) == 0:
        return masks
    h0, w0 = masks.shape[1:]
    image = _unit_float(frame)
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).to(image.device)[None]  # (1, k, H0, W0)
    small = F.interpolate(m, size=tuple(image.shape[1:]), mode="bilinear", align_corners=False, antialias=True)
    smooth = guided_filter(image[None], small, radius, eps, step)
    big = F.interpolate(smooth, size=(h0, w0), mode="bilinear", align_corners=False)[0] > threshold
    snapped = big.cpu().numpy()
    empty = ~snapped.reshape(len(masks), -1).any(axis=1)
    snapped[empty] = masks[empty]
    return snapped


@dataclass
class _Video:
    followed: int = 0  # objects handed over so far; the k-th is tracker object k
    tracked: np.ndarray | None = None  # union of the tracker's masks on the last frame, (H0, W0)


class FinishedStep:
    """The masks of one :meth:`DiscoverTrackSession.step_async`, already made (the next frame's hand-over needs
    them); ``rows``, ``result()`` and ``rles()`` as :class:`~rvos_batch.predictor.PendingStep`."""

    def __init__(self, results: Mapping[int, FrameResult]) -> None:
        self._results = dict(results)
        self.rows = sorted(self._results)

    def result(self) -> dict[int, FrameResult]:
        return dict(self._results)

    def rles(self) -> dict[int, FrameRLE]:
        out: dict[int, FrameRLE] = {}
        for row, r in self._results.items():
            h0, w0 = r.masks.shape[1:]
            rles, areas, boxes = rle.encode_batch_with_stats(r.masks)  # (0, H0, W0) gives empty lists
            out[row] = FrameRLE(r.frame_index, (h0, w0), r.object_ids, [x["counts"] for x in rles],
                                np.asarray(areas, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4), r.scores)
        return out


class DiscoverTrackSession:
    """:class:`~rvos_batch.predictor.BatchSession`'s row interface (``add``, ``step``, ``step_async``, ``release``,
    ``free_rows``, ``video_id``) over two models: ``finder`` (zero-shot) and ``tracker`` (one-shot).

    Frames come at the tracker's input size (``input_size``); the finder gets them resized on the device. A step
    waits for its masks, since the next frame's hand-over reads them. A failed step leaves both models' states
    and the hand-overs as they were, so a caller may retry the rows one by one (as with BatchSession, a failure
    while making the masks, after both steps, does not).
    """

    def __init__(self, finder: RVOS, tracker: RVOS, config: PredictConfig, capacity: int | None = None,
                 discovery: DiscoveryConfig = DiscoveryConfig()) -> None:
        if finder.config.mode != "zero-shot":
            raise ConfigError(f"the finder must be a zero-shot model; this one is {finder.config.mode}")
        if tracker.config.mode != "one-shot":
            raise ConfigError(f"the tracker must be a one-shot model; this one is {tracker.config.mode}")
        # The finder's masks are hand-over candidates, not output: the appearance check would only withhold them.
        self.finder = BatchSession(finder, replace(config, appearance=None), capacity)
        # The tracker's masks are checked against their hand-overs, but not filtered (it lowered tracked J&F), and
        # the check reads the frames as they are (its levels lowered tracked J&F on dimmed validation videos). A
        # hand-over is the finder's guess, not a given mask: at its frame the tracker's own mask is the output
        # (reporting the hand-over lowered tracked J&F as well).
        check = config.appearance
        tracked = replace(config, given_is_output=False)
        tracked = tracked if check is None else replace(tracked, appearance=replace(check, filter=0, levels=None))
        self.tracker = BatchSession(with_slots(tracker, discovery.tracker_slots), tracked, capacity)
        self.config = config
        self.discovery = discovery
        self.capacity = self.tracker.capacity
        self.input_size = self.tracker.input_size
        self._videos: list[_Video | None] = [None] * self.capacity

    def free_rows(self) -> list[int]:
        return self.tracker.free_rows()

    def video_id(self, row: int) -> str | None:
        return self.tracker.video_id(row)

    def add(self, row: int, video_id: str, orig_size: tuple[int, int] | None = None,
            prompts: Mapping[int, Mapping[int, np.ndarray]] | None = None) -> None:
        """Start ``video_id`` in the free ``row``; as :meth:`BatchSession.add`, without prompts (zero-shot)."""
        if prompts:
            raise ValueError(f"video {video_id!r}: prompts given to zero-shot labeling with a tracker")
        self.tracker.add(row, video_id, orig_size, {})
        try:
            self.finder.add(row, video_id, orig_size)
        except Exception:
            self.tracker.release(row)
            raise
        self._videos[row] = _Video()

    def release(self, row: int) -> None:
        self.tracker.release(row)
        self.finder.release(row)
        self._videos[row] = None

    def step(self, frames: Mapping[int, FrameInput]) -> dict[int, FrameResult]:
        return self.step_async(frames).result()

    def step_async(self, frames: Mapping[int, FrameInput]) -> FinishedStep:
        """One frame per row in ``frames`` (as :meth:`BatchSession.step`): the finder steps, its new objects become
        the tracker's prompts at this frame (snapped onto its edges), the tracker steps, and its masks are the
        result."""
        if not frames:
            return FinishedStep({})
        small = {row: (item[0], self._finder_frame(item[1]), *item[2:]) for row, item in frames.items()}
        before = self.finder.snapshot()
        found = self.finder.step(small)  # type: ignore[arg-type]
        try:
            prompts: dict[int, dict[int, np.ndarray]] = {}
            for row, f in found.items():
                video = self._videos[row]
                assert video is not None
                free = self.tracker.state.num_slots - video.followed
                tracked = video.tracked
                if tracked is not None and tracked.shape != f.masks.shape[1:]:  # a video's frames may change size
                    tracked = _resize_nearest(tracked, f.masks.shape[1:])
                new = new_objects(f, tracked, free, self.discovery)
                if not new:
                    continue
                masks = snap_masks(frames[row][1].to(self.tracker.device), np.stack([m for _, m in new]),
                                   self.discovery.snap_radius, self.discovery.snap_eps, self.config.threshold)
                for k, mask in enumerate(masks):
                    prompts.setdefault(row, {})[video.followed + k + 1] = mask  # tracker ids count on
            pending = self.tracker.step_async(frames, prompts)
        except BaseException:
            self.finder.restore(before)
            raise
        results = pending.result()  # a failure from here on leaves both models advanced, as BatchSession.step does
        for row, r in results.items():
            video = self._videos[row]
            assert video is not None
            video.followed += len(prompts.get(row, {}))
            video.tracked = np.any(r.masks, axis=0) if len(r.masks) else None
        return FinishedStep(results)

    def _finder_frame(self, x: Tensor) -> Tensor:
        """A frame at the tracker's size -> the finder's size (float in [0, 1], antialiased bilinear)."""
        if tuple(x.shape[1:]) == self.finder.input_size:
            return x
        y = F.interpolate(_unit_float(x)[None], size=self.finder.input_size, mode="bilinear", align_corners=False,
                          antialias=True)
        return y[0].clamp_(0.0, 1.0)


def _unit_float(x: Tensor) -> Tensor:
    """A frame given as uint8 or as float in [0, 1] -> float in [0, 1]."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _resize_nearest(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A bool mask resized to ``size`` (H, W) by nearest neighbour (pixel centres)."""
    h, w = mask.shape
    rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64).clip(0, h - 1)
    cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64).clip(0, w - 1)
    return mask[rows[:, None], cols[None, :]]
