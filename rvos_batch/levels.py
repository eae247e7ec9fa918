"""Auto-levels: a video whose contrast is lower than the frames a model was trained on is stretched up to it.

Not in the RVOS paper; labeling time only, no weight changed; off by default (``label --auto-levels 0.6`` turns it
on). The shipped models were trained on frames whose values (the 0.5% to 99.5% quantiles over all three channels)
span 0.47 to 0.93 of the full range. A low-contrast, dark or washed-out video lies outside that: on the validation
videos of the model card, halving the contrast costs one-shot labeling 3.3 points of J&F and darkening the frames to
45% costs 4.2; auto-levels win back most of it, and leave the validation videos as they are. On the held-out set it
stretched two videos and lowered one of them (see "Auto-levels" in the model card), so it is not the default.

Each video's levels are the 0.5% and 99.5% quantiles of its frames' values (over all channels, on a strided sample of
pixels), an exponential moving average over its frames that starts at its first frame. Where they span less than
``range``, the frame is stretched about their middle until they span ``range`` (a gain of at most ``max_gain``), and
shifted just enough to stay inside [0, 1]. One gain for the three channels, so hues are kept. A video whose levels
already span ``range`` is left exactly as it is: with the default 0.6, the frames of the training sets mostly are.

The model, the appearance check and the guided filter all see the stretched frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rvos_batch.model.config import ConfigError

SAMPLE_STRIDE = 7  # every 7th value of a frame (all channels) goes into its quantiles: a 240x424 frame gives 43,611


@dataclass(frozen=True)
class LevelsConfig:
    """range: the span of a video's levels (in [0, 1]) below which its frames are stretched up to it; quantile:
    the levels are this quantile and 1 - it of a frame's values; max_gain: the largest stretch; momentum: the moving
    average's weight on the levels so far (0: each frame's own levels)."""

    range: float = 0.6
    quantile: float = 0.005
    max_gain: float = 4.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        checks = (  # the bounds are tested only once the value is known to be a number
            ("range", lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
            ("quantile", lambda v: 0.0 <= v < 0.5, "a number in [0, 0.5)"),
            ("max_gain", lambda v: v >= 1.0, "a number >= 1"),
            ("momentum", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
        )
        for name, ok, allowed in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ConfigError(f"LevelsConfig.{name}={value!r}: allowed is {allowed}")


@dataclass(frozen=True)
class LevelsState:
    """Each batch row's levels: lo, hi float32 (B,), and seen bool (B,) (False until its video's first frame)."""

    lo: Tensor
    hi: Tensor
    seen: Tensor

    @classmethod
    def empty(cls, rows: int, device: torch.device | str = "cpu") -> LevelsState:
        zeros = torch.zeros(rows, device=device)
        return cls(zeros, zeros.clone(), torch.zeros(rows, dtype=torch.bool, device=device))

    def reset_rows(self, idx: Tensor) -> LevelsState:
        seen = self.seen.clone()
        seen[idx] = False
        return LevelsState(self.lo, self.hi, seen)

    def index_rows(self, idx: Tensor) -> LevelsState:
        return LevelsState(self.lo[idx], self.hi[idx], self.seen[idx])

    def scatter_rows(self, idx: Tensor, rows: LevelsState) -> LevelsState:
        lo, hi, seen = self.lo.clone(), self.hi.clone(), self.seen.clone()
        lo[idx], hi[idx], seen[idx] = rows.lo, rows.hi, rows.seen
        return LevelsState(lo, hi, seen)

    def where(self, rows: Tensor, other: LevelsState) -> LevelsState:
        """``other`` for the rows where ``rows`` (B,) bool, this state elsewhere."""
        return LevelsState(torch.where(rows, other.lo, self.lo), torch.where(rows, other.hi, self.hi),
                           torch.where(rows, other.seen, self.seen))


def frame_levels(frames: Tensor, quantile: float) -> tuple[Tensor, Tensor]:
    """The ``quantile`` and 1 - ``quantile`` quantiles of each frame's values: (b, 3, h, w) -> lo, hi (b,).

    As ``torch.quantile`` (linear interpolation) on the strided sample, from one sort and fixed positions: no host
    sync (``torch.quantile`` checks a tensor of quantiles on the host)."""
    sample = frames.reshape(frames.shape[0], -1)[:, ::SAMPLE_STRIDE].float().sort(dim=1).values
    last = sample.shape[1] - 1
    out = []
    for q in (quantile, 1.0 - quantile):
        pos = q * last
        below = min(int(pos), last)
        above = min(below + 1, last)
        out.append(torch.lerp(sample[:, below], sample[:, above], pos - below))
    return out[0], out[1]


def auto_levels(frames: Tensor, state: LevelsState, config: LevelsConfig) -> tuple[Tensor, LevelsState]:
    """Frames (b, 3, h, w) float in [0, 1] with each row's video's levels stretched up to ``config.range``, and the
    rows' levels after these frames. Rows whose levels already span the range are returned unchanged (the same
    values); no host sync."""
    lo_f, hi_f = frame_levels(frames, config.quantile)
    m = config.momentum
    lo = torch.where(state.seen, m * state.lo + (1 - m) * lo_f, lo_f)
    hi = torch.where(state.seen, m * state.hi + (1 - m) * hi_f, hi_f)
    span = (hi - lo).clamp(min=1e-3)
    gain = (config.range / span).clamp(min=1.0, max=config.max_gain)
    half = gain * span / 2
    mid = (lo + hi) / 2
    centre = torch.minimum(torch.maximum(mid, half), 1 - half)  # the stretched levels stay inside [0, 1]
    g, mid, centre = (v.view(-1, 1, 1, 1).to(frames.dtype) for v in (gain, mid, centre))
    stretched = ((frames - mid) * g + centre).clamp(0, 1)
    out = torch.where(g > 1, stretched, frames)
    return out, LevelsState(lo, hi, torch.ones_like(state.seen))
