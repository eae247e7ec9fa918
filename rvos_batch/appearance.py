"""The appearance check: a tracked object's mask is left out of a frame when its colours match the object no better
than the mask's own surroundings.

RVOS-Mask follows an object by feeding its mask back. When the object leaves (it moves out of view, is covered,
or, in the synthetic sets, ends) the fed-back mask still sits on the place it left, and the decoder goes on
segmenting that patch of background, confidently (its score hardly drops). The colours tell it apart: they were
the object's and are now the surroundings'.

Per object the check keeps a colour histogram (``bins`` per channel, RGB), taken from the mask given at the frame
where the object was prompted and then updated, at rate ``rate``, from each frame in which its mask is kept. At
every later frame it compares the colours inside the object's mask (at the model's input size, after the overlap
resolution) with that histogram and with the colours of a ring around the mask (``ring`` x the input height wide,
off every object). The mask is left out of the frame when, in Bhattacharyya coefficient,

    BC(mask, object) < BC(mask, ring) - margin

A kept mask is also refined by colour (``refine``, a ratio k): its pixels whose colour is more than k times as
frequent in the ring as in the object's histogram are taken out (what leaked onto the background), and the ring's
pixels whose colour is more than k times as frequent in the object as in the ring are added (what the mask missed
of the object), each by a majority of its 3x3 neighbourhood. The refined mask is both the output and the mask fed
back to the next frame, so the model does not build on its own leaks. A zero-shot model feeds no mask back, so
there the refinement changes the output only.

One-shot sessions then smooth every mask with a colour-guided filter (``filter``, He, Sun and Tang, "Guided Image
Filtering", TPAMI 2013, computed at 1/``filter_step`` of the input size as in He and Sun, "Fast Guided Filter",
2015): a mask's edges move to the frame's colour edges within ``filter`` pixels, and its pixel-wise colour decisions
become smooth regions. The filtered masks are the output, and, refined again by the trimming and growing, the masks
fed back. Zero-shot masks are left as they are (the filter lowered zero-shot J&F on the validation sets), and so
are a tracker's (``--tracker``: it lowered those too).

One-shot sessions also give the check its own view of low-contrast footage (``levels``, a span R of the value range):
the check and the filter read each video's frames stretched about their middle until their levels span R, as
:mod:`rvos_batch.levels` stretches them for ``label --auto-levels``, while the model reads the frames as they are. The
colour bins are fixed, so a dark or washed-out video's colours crowd into a few of them and the object no longer
stands out from its ring; stretched, they spread again. A video whose levels already span R is checked as before.

Leaving a mask out changes the output only: the model's recurrent state and the mask it feeds back stay its own,
so an object that comes back is reported again once its colours match. A slot that was given a mask (one-shot
prompts, and the tracker's hand-overs in ``--tracker`` runs) is compared with that mask's colours; a zero-shot
slot, never given one, with its own first non-empty mask's (``learn_first``). Not in the RVOS paper. The settings
were chosen on the validation sets (the model card has the sweep); the state is plain tensors per batch row, so
sessions snapshot and restore it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_batch.levels import LevelsConfig, LevelsState, auto_levels
from rvos_batch.model.config import ConfigError, is_int_in


@dataclass(frozen=True)
class AppearanceConfig:
    """margin: how much more a mask's colours must look like its surroundings than like its object for the mask to
    be left out, in Bhattacharyya coefficient (0..1). rate: how fast the object's histogram follows the kept masks
    (0: the given mask only). bins: histogram bins per RGB channel. ring: width of the surroundings ring as a
    fraction of the input height (at least one pixel). refine: the colour ratio k of the refinement of kept masks
    (pixels k times likelier in the ring's colours than the object's are taken out, ring pixels k times likelier in
    the object's are added); None leaves the model's masks as they are. filter: the radius, in pixels at the input
    size, of the colour-guided filter that one-shot sessions apply to their masks after the refinement (0: none);
    filter_eps its regulariser (smaller keeps more of the frame's edges), filter_step the subsampling of its
    coefficients. levels: one-shot sessions only: the span R of the value range up to which the check and the filter
    (not the model) see a low-contrast video's frames stretched (see :func:`view`); None: as they are."""

    margin: float = 0.1
    rate: float = 0.1
    bins: int = 8
    ring: float = 0.05
    refine: float | None = 2.0
    filter: int = 4
    filter_eps: float = 1e-4
    filter_step: int = 2
    levels: float | None = 0.6

    def __post_init__(self) -> None:
        if not isinstance(self.margin, (int, float)) or not -1.0 <= float(self.margin) <= 1.0:
            raise ConfigError(f"AppearanceConfig.margin={self.margin!r}: allowed is a number in [-1, 1]")
        if not isinstance(self.rate, (int, float)) or not 0.0 <= float(self.rate) <= 1.0:
            raise ConfigError(f"AppearanceConfig.rate={self.rate!r}: allowed is a number in [0, 1]")
        if not isinstance(self.bins, int) or isinstance(self.bins, bool) or not 2 <= self.bins <= 32:
            raise ConfigError(f"AppearanceConfig.bins={self.bins!r}: allowed is an integer in 2..32")
        if not isinstance(self.ring, (int, float)) or not 0.0 < float(self.ring) <= 0.5:
            raise ConfigError(f"AppearanceConfig.ring={self.ring!r}: allowed is a number in (0, 0.5]")
        if self.refine is not None and (not isinstance(self.refine, (int, float)) or isinstance(self.refine, bool)
                                        or not float(self.refine) >= 1.0):
            raise ConfigError(f"AppearanceConfig.refine={self.refine!r}: allowed is None or a number >= 1")
        if not is_int_in(self.filter, 0, 64):
            raise ConfigError(f"AppearanceConfig.filter={self.filter!r}: allowed is an integer in 0..64 (0: none)")
        if not isinstance(self.filter_eps, (int, float)) or isinstance(self.filter_eps, bool) or not (
                0.0 < float(self.filter_eps) <= 1.0):
            raise ConfigError(f"AppearanceConfig.filter_eps={self.filter_eps!r}: allowed is a number in (0, 1]")
        if not is_int_in(self.filter_step, 1, 8):
            raise ConfigError(f"AppearanceConfig.filter_step={self.filter_step!r}: allowed is an integer in 1..8")
        if self.levels is not None and (isinstance(self.levels, bool) or not isinstance(self.levels, (int, float))
                                        or not 0.0 < float(self.levels) <= 1.0):
            raise ConfigError(f"AppearanceConfig.levels={self.levels!r}: allowed is None or a number in (0, 1]")

    def ring_pixels(self, height: int) -> int:
        return max(1, round(self.ring * height))

    def record(self) -> dict[str, object]:
        """The settings as a run records them (run.json and the output fingerprint): without ``levels`` when it is
        None, so that runs without it (zero-shot ones) keep the record they had before it existed."""
        d = asdict(self)
        if self.levels is None:
            del d["levels"]
        return d

    def levels_config(self) -> LevelsConfig | None:
        """The stretch of :func:`view`: :mod:`rvos_batch.levels`' defaults up to ``levels``, or None."""
        return None if self.levels is None else LevelsConfig(range=float(self.levels))


class CheckResult(NamedTuple):
    """What :func:`check` decided for one frame of a batch.

    hidden (b, n) bool: masks to leave out of the output. trim / grow (b, n, h, w) bool, or None without
    refinement: pixels to take out of / add to each kept mask. state: the new :class:`AppearanceState`."""

    hidden: Tensor
    trim: Tensor | None
    grow: Tensor | None
    state: AppearanceState


class AppearanceState(NamedTuple):
    """Per batch row and slot: the object's colour histogram (b, n, bins**3), summing to 1 where ``known``, and
    ``known`` (b, n) bool: the slot has a histogram to check against (from its given mask, or for zero-shot slots
    from its first mask). Per row: ``levels``, its video's levels as the check sees them (:func:`view`)."""

    models: Tensor
    known: Tensor
    levels: LevelsState

    @classmethod
    def empty(cls, rows: int, slots: int, config: AppearanceConfig, device: torch.device | str) -> AppearanceState:
        return cls(torch.zeros(rows, slots, config.bins**3, device=device),
                   torch.zeros(rows, slots, dtype=torch.bool, device=device), LevelsState.empty(rows, device))

    def index_rows(self, rows: Tensor) -> AppearanceState:
        return AppearanceState(self.models.index_select(0, rows), self.known.index_select(0, rows),
                               self.levels.index_rows(rows))

    def scatter_rows(self, rows: Tensor, sub: AppearanceState) -> AppearanceState:
        models, known = self.models.clone(), self.known.clone()
        models[rows] = sub.models
        known[rows] = sub.known
        return AppearanceState(models, known, self.levels.scatter_rows(rows, sub.levels))

    def reset_rows(self, rows: Tensor) -> AppearanceState:
        m = len(rows)
        return self.scatter_rows(rows, AppearanceState(self.models.new_zeros(m, *self.models.shape[1:]),
                                                       self.known.new_zeros(m, *self.known.shape[1:]),
                                                       LevelsState.empty(m, self.models.device)))


def view(frames: Tensor, state: AppearanceState, config: AppearanceConfig,
         present: Tensor | None = None) -> tuple[Tensor, AppearanceState]:
    """The frames (b, 3, h, w) in [0, 1] as the check and the filter of a one-shot session read them, and the
    state with each row's levels moved on: with ``config.levels`` R, a video whose levels (the moving 0.5% and
    99.5% quantiles of :func:`rvos_batch.levels.auto_levels`) span less than R is stretched up to R; otherwise, and
    with ``levels`` None, the frames are returned as they are. ``present`` (b,) bool: only these rows' levels move
    (a padded step's blank rows are not their videos' frames)."""
    stretch = config.levels_config()
    if stretch is None:
        return frames, state
    out, seen = auto_levels(frames, state.levels, stretch)
    if present is not None:
        seen = state.levels.where(present, seen)
    return out, state._replace(levels=seen)


def colour_bins(frames: Tensor, bins: int) -> Tensor:
    """frames (b, 3, h, w) in [0, 1] -> (b, h * w) long: each pixel's RGB histogram bin."""
    q = (frames.float() * bins).long().clamp_(0, bins - 1)
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    return idx.flatten(1)


def histograms(bin_index: Tensor, masks: Tensor, num_bins: int) -> Tensor:
    """bin_index (b, P) long, masks (b, n, P) bool -> (b, n, num_bins) float: each mask's colour histogram,
    normalised to sum 1 (all zeros for an empty mask)."""
    b, n, p = masks.shape
    counts = torch.zeros(b, n, num_bins, device=masks.device)
    counts.scatter_add_(2, bin_index[:, None, :].expand(b, n, p), masks.float())
    return counts / counts.sum(dim=2, keepdim=True).clamp(min=1.0)


def bhattacharyya(p: Tensor, q: Tensor) -> Tensor:
    """Bhattacharyya coefficient of histograms along the last dimension: 1 for equal ones, 0 for disjoint ones."""
    return (p * q).clamp(min=0.0).sqrt().sum(dim=-1)


def surroundings(masks: Tensor, width: int) -> Tensor:
    """masks (b, n, h, w) bool, disjoint -> (b, n, h, w) bool: each mask grown by about ``width`` pixels (a
    square), less every mask's pixels.

    The growing runs on a grid ``f = max(1, width // 3)`` times coarser (a cell is in a mask when any of its pixels
    is), by separable max-pooling, so the ring is exact to within ``f`` pixels at a fraction of the cost."""
    b, n, h, w = masks.shape
    f = max(1, width // 3)
    r = -(-width // f)  # the width in coarse cells, rounded up
    x = masks.float().flatten(0, 1)[:, None]  # (b n, 1, h, w)
    if f > 1:
        x = F.max_pool2d(x, f, stride=f, ceil_mode=True)
    k = 2 * r + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, r))
    x = F.max_pool2d(x, (k, 1), stride=1, padding=(r, 0))
    if f > 1:
        x = x.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)[:, :, :h, :w]
    grown = x[:, 0].view(b, n, h, w) > 0
    return grown & ~masks.any(dim=1, keepdim=True)


def check(
    frames: Tensor,
    probs: Tensor,
    reportable: Tensor,
    threshold: float,
    given: Tensor | None,
    valid: Tensor | None,
    state: AppearanceState,
    config: AppearanceConfig,
    learn_first: bool = False,
) -> CheckResult:
    """One frame of the check for a batch.

    frames (b, 3, h, w) in [0, 1] at the model's input size; probs (b, n, h, w) the model's foreground
    probabilities; reportable (b, n) the slots that may be reported; given (b, S, h, w) / valid (b, S): the masks
    given at this frame (S >= n slots), which set their slots' histograms and are never hidden. Masks are resolved
    as the output is (the most probable reportable slot above ``threshold``), at the input size. ``hidden`` is
    True for a known slot whose non-empty mask looks more like its surroundings than like its object. For the
    other known slots (not given a mask at this frame), ``trim`` marks the mask pixels whose colour bin is more than
    ``config.refine`` times as frequent in the ring as in the object's histogram (each frequency plus 1e-3), and
    ``grow`` the ring pixels whose bin is that much more frequent in the object, each by a majority of its 3x3
    neighbourhood. The histograms compared are the ones from before this frame's update. ``learn_first`` (zero-shot
    slots, which are never given a mask): a slot that is not yet known takes its first non-empty mask's histogram,
    unchecked, and is checked from the next frame on.
    """
    b, n, h, w = probs.shape
    k = config.bins**3
    idx = colour_bins(frames, config.bins)
    low = probs.float() * reportable[:, :, None, None]
    best_p, best = low.max(dim=1)
    label = torch.where(best_p > threshold, best, n)
    masks = label[:, None] == torch.arange(n, device=probs.device)[None, :, None, None]  # (b, n, h, w)
    flat = masks.flatten(2)
    current = histograms(idx, flat, k)
    around = surroundings(masks, config.ring_pixels(h))
    ring = histograms(idx, around.flatten(2), k)
    nonempty = flat.any(dim=2)
    models, known = state.models[:, :n], state.known[:, :n]
    hidden = known & reportable & nonempty & (
        bhattacharyya(current, models) < bhattacharyya(current, ring) - config.margin
    )
    keep = known & reportable & nonempty & ~hidden
    trim = grow = None
    if config.refine is not None:
        # decided per colour bin, then looked up per pixel: (b, n, K) -> (b, n, P)
        alien = (ring + 1e-3) > config.refine * (models + 1e-3)
        own = (models + 1e-3) > config.refine * (ring + 1e-3)
        pick = idx[:, None, :].expand(b, n, h * w)
        kept = keep[:, :, None, None]
        trim = majority(alien.gather(2, pick).view(b, n, h, w)) & masks & kept
        grow = majority(own.gather(2, pick).view(b, n, h, w)) & around & kept
    models = torch.where(keep[:, :, None], (1.0 - config.rate) * models + config.rate * current, models)
    if learn_first:
        first = ~known & reportable & nonempty
        models = torch.where(first[:, :, None], current, models)
        known = known | first
    if given is not None and valid is not None:
        fresh = valid[:, :n]
        hidden = hidden & ~fresh
        if trim is not None and grow is not None:  # a mask given at this frame is the object as it is
            trim = trim & ~fresh[:, :, None, None]
            taken = ((given[:, :n] > 0.5) & valid[:, :n, None, None]).any(dim=1, keepdim=True)
            grow = grow & ~fresh[:, :, None, None] & ~taken  # given pixels belong to their object alone
        given_hist = histograms(idx, (given[:, :n] > 0.5).flatten(2), k)
        fresh = fresh & (given_hist.sum(dim=2) > 0)  # an empty given mask gives no appearance
        models = torch.where(fresh[:, :, None], given_hist, models)
        known = known | fresh
    new_models = state.models.clone()
    new_known = state.known.clone()
    new_models[:, :n] = models
    new_known[:, :n] = known
    return CheckResult(hidden, trim, grow, AppearanceState(new_models, new_known, state.levels))


def refine_probs(probs: Tensor, trim: Tensor, grow: Tensor, threshold: float) -> Tensor:
    """Probabilities (b, n, h, w) with ``trim`` pixels set to 0 and ``grow`` pixels raised just above ``threshold``:
    a :class:`CheckResult`'s refinement applied to the output or to the masks fed back."""
    raised = torch.where(grow, probs.clamp(min=threshold + 0.01), probs)
    return raised.masked_fill(trim, 0.0)


def refine_fed(prev_masks: Tensor, result: CheckResult, threshold: float) -> Tensor:
    """The masks fed back to the next frame (b, S, H, W), with the first n slots (the checked ones) refined by
    ``result`` as the output is; ``prev_masks`` itself is left as it is."""
    assert result.trim is not None and result.grow is not None
    n = result.trim.shape[1]
    fed = prev_masks.clone()
    fed[:, :n] = refine_probs(prev_masks[:, :n], result.trim, result.grow, threshold).to(fed.dtype)
    return fed


def filter_fed(prev_masks: Tensor, filtered: Tensor, followed: Tensor, valid: Tensor | None) -> Tensor:
    """The masks fed back to the next frame (b, S, H, W) with the followed slots' (``followed`` (b, n): reported
    and not given a mask at this frame, ``valid`` (b, S)) replaced by their ``filtered`` masks (b, n, H, W), as
    they are: the pixels of a mask given to another slot at this frame are not cleared again (a variant that
    cleared them scored no better on the validation sets; see the model card). ``prev_masks`` itself is left as
    it is."""
    n = filtered.shape[1]
    take = followed if valid is None else followed & ~valid[:, :n]
    fed = prev_masks.clone()
    fed[:, :n] = torch.where(take[:, :, None, None], filtered.to(fed.dtype), prev_masks[:, :n])
    return fed


def apply_check(frames: Tensor, probs: Tensor, fed: Tensor | None, result: CheckResult, followed: Tensor,
                valid: Tensor | None, config: AppearanceConfig, threshold: float,
                smooth: bool) -> tuple[Tensor, Tensor | None]:
    """What a session makes of one frame's :func:`check` ``result``: the output probabilities (b, n, h, w) and the
    masks fed back to the next frame (b, S, H, W; None for a zero-shot model), as labeling and ``train
    --appearance-check`` both use them.

    The output is refined (trimmed and grown). With ``smooth`` (one-shot sessions) and ``config.filter``, it is then
    smoothed by :func:`guided_filter` of ``frames``, and the ``followed`` slots (b, n) not given a mask at this frame
    (``valid``) take it as their fed mask (:func:`filter_fed`). The fed masks are then refined as well, so the colour
    decisions hold in what the model builds on."""
    if result.trim is not None and result.grow is not None:  # just above the threshold where grown
        probs = refine_probs(probs, result.trim, result.grow, threshold)
    if smooth and config.filter > 0:
        probs = guided_filter(frames, probs, config.filter, config.filter_eps, config.filter_step)
        if fed is not None:
            fed = filter_fed(fed, probs, followed, valid)
    if result.trim is not None and fed is not None:
        fed = refine_fed(fed, result, threshold)
    return probs, fed


def majority(flags: Tensor) -> Tensor:
    """(..., h, w) bool -> the same shape: True where more than half of the pixel's 3x3 neighbourhood (the part
    inside the frame) is True. Sums of shifted uint8 planes: no float copy of the masks."""
    h, w = flags.shape[-2:]
    x = F.pad(flags.to(torch.uint8).reshape(-1, h, w), (1, 1, 1, 1))
    ones = F.pad(torch.ones(1, h, w, dtype=torch.uint8, device=flags.device), (1, 1, 1, 1))
    total, count = _box3(x), _box3(ones)
    return (2 * total > count).reshape(flags.shape)


def _box3(x: Tensor) -> Tensor:
    """(m, h + 2, w + 2) -> (m, h, w): the 3x3 sums."""
    rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]
    return rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]


def guided_filter(image: Tensor, probs: Tensor, radius: int, eps: float, step: int = 1) -> Tensor:
    """Each mask of ``probs`` (b, n, h, w) smoothed by the colour-guided filter of ``image`` (b, 3, h, w) in [0, 1]
    (He, Sun and Tang 2013): in every window of ``radius`` pixels (a square of side 2 radius + 1) the output is an
    affine function of the pixel's RGB colour fitted to the mask by ridge regression (regulariser ``eps``), averaged
    over the windows that hold the pixel. Where the mask is constant it stays so; its edges follow the image's.

    With ``step`` > 1 the fits are made on the image and masks averaged over ``step`` x ``step`` cells (radius
    ``radius // step`` there, at least 1) and their coefficients upsampled bilinearly, as in He and Sun's "Fast
    Guided Filter" (2015): about ``step``**2 times less work. Returns (b, n, h, w) clamped to [0, 1]."""
    b, n, h, w = probs.shape
    image, probs = image.float(), probs.float()
    if step > 1:
        guide, p = _cells(image, step), _cells(probs, step)
        r = max(1, radius // step)
    else:
        guide, p, r = image, probs, radius
    gh, gw = guide.shape[-2:]
    mean_i = _box(guide, r)  # (b, 3, gh, gw)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    second = _box(torch.stack([guide[:, i] * guide[:, j] for i, j in pairs], dim=1), r)
    s00, s01, s02, s11, s12, s22 = (second[:, k] - mean_i[:, i] * mean_i[:, j] for k, (i, j) in enumerate(pairs))
    s00, s11, s22 = s00 + eps, s11 + eps, s22 + eps
    # the inverse of each pixel's 3x3 colour covariance (plus eps), by its adjugate: symmetric, six entries
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = (s00 * c00 + s01 * c01 + s02 * c02)[:, None]  # (b, 1, gh, gw), > 0: the covariance is positive definite
    mean_p = _box(p, r)  # (b, n, gh, gw)
    mean_ip = _box((guide[:, None] * p[:, :, None]).flatten(1, 2), r).view(b, n, 3, gh, gw)
    v0, v1, v2 = (mean_ip[:, :, k] - mean_i[:, k : k + 1] * mean_p for k in range(3))  # colour-mask covariance
    a0 = (c00[:, None] * v0 + c01[:, None] * v1 + c02[:, None] * v2) / det
    a1 = (c01[:, None] * v0 + c11[:, None] * v1 + c12[:, None] * v2) / det
    a2 = (c02[:, None] * v0 + c12[:, None] * v1 + c22[:, None] * v2) / det
    offset = mean_p - a0 * mean_i[:, 0:1] - a1 * mean_i[:, 1:2] - a2 * mean_i[:, 2:3]
    coef = _box(torch.cat([a0, a1, a2, offset], dim=1), r)  # (b, 4 n, gh, gw)
    if step > 1:
        coef = F.interpolate(coef, size=(h, w), mode="bilinear", align_corners=False)
    a0, a1, a2, offset = coef.split(n, dim=1)
    return (a0 * image[:, 0:1] + a1 * image[:, 1:2] + a2 * image[:, 2:3] + offset).clamp_(0.0, 1.0)


def _cells(x: Tensor, step: int) -> Tensor:
    """(b, c, h, w) -> (b, c, ceil(h / step), ceil(w / step)): the mean of each ``step`` x ``step`` cell (cells cut
    by the edge average what they hold). A reshape where the size divides, which is faster than pooling."""
    b, c, h, w = x.shape
    if h % step or w % step:
        return F.avg_pool2d(x, step, ceil_mode=True)
    return x.view(b, c, h // step, step, w // step, step).mean(dim=(3, 5))


def _box(x: Tensor, radius: int) -> Tensor:
    """(b, c, h, w) -> the same shape: the mean over each pixel's (2 radius + 1)**2 window, the part inside the
    frame; separable.

    Sums of shifted views of the zero-padded planes, divided by each pixel's window size (known in closed form), in
    place of ``avg_pool2d(count_include_pad=False)``, whose CPU kernel made up four fifths of the guided filter's
    time: the filter of 5 masks at 240x424 (radius 4, step 2) went from 45 to 19 ms per frame on one CPU thread."""
    h, w = x.shape[-2:]
    rows = _shifted_sum(F.pad(x, (radius, radius)), radius, dim=3, size=w)
    sums = _shifted_sum(F.pad(rows, (0, 0, radius, radius)), radius, dim=2, size=h)
    return sums / (_window_sizes(h, radius, x)[:, None] * _window_sizes(w, radius, x)[None, :])


def _shifted_sum(padded: Tensor, radius: int, dim: int, size: int) -> Tensor:
    """Sum of the 2 radius + 1 windows of length ``size`` along ``dim`` of a plane padded by ``radius`` each side."""
    total = padded.narrow(dim, 0, size).clone()
    for i in range(1, 2 * radius + 1):
        total += padded.narrow(dim, i, size)
    return total


def _window_sizes(n: int, radius: int, like: Tensor) -> Tensor:
    """(n,) how many of positions i - radius .. i + radius lie in 0 .. n - 1, for each i: a window cut by the edge."""
    i = torch.arange(n, device=like.device)
    return ((i + radius).clamp(max=n - 1) - (i - radius).clamp(min=0) + 1).to(like.dtype)
