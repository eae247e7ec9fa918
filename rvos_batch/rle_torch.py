"""COCO compressed RLE of many masks at once with torch, on whatever device the masks are on.

The same strings as :func:`rvos_batch.rle.encode` (and pycocotools), byte for byte; see :mod:`rvos_batch.rle`
for the format. Made for masks that are already on a GPU: run lengths, the delta and varint coding, areas and
boxes are all computed on the device for the whole (N, H, W) stack, and only the characters (a few bytes per
run) and N areas and boxes are copied to the host, never the masks themselves.

Every step is a vectorised tensor operation over all masks; the data-dependent sizes (how many changes, how
many characters) are learnt with two ``nonzero``-style calls, which wait for the device. Call it from a thread
other than the one launching the model (and on its own CUDA stream) so those waits never stall the model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rvos_batch.errors import RLEError

__all__ = ["encode_batch", "encode_batch_with_stats", "runs_to_strings"]

RLE = dict  # {"size": [h, w], "counts": str}

_MAX_PIXELS = 2**32 - 1  # COCO stores run lengths as uint32
_GROUPS = torch.arange(7)  # a run length below 2**32 takes at most 7 five-bit groups (35 bits, signed)
_THRESHOLDS = [1 << (5 * g - 1) for g in range(1, 7)]  # |x| >= 2**(5g-1) needs more than g groups


def _check(masks: Tensor) -> Tensor:
    if not isinstance(masks, Tensor):
        raise RLEError(f"masks: expected a torch.Tensor (N, H, W), got {type(masks).__name__}")
    if masks.dim() != 3:
        raise RLEError(f"masks: expected shape (N, H, W), got {tuple(masks.shape)}")
    h, w = int(masks.shape[1]), int(masks.shape[2])
    if h * w > _MAX_PIXELS:
        raise RLEError(f"masks of {h}x{w} = {h * w} pixels: COCO RLE allows fewer than 2**32 pixels per mask")
    if masks.is_floating_point() or masks.is_complex():
        return masks != 0
    return masks if masks.dtype == torch.bool else masks != 0


def _runs(b: Tensor) -> tuple[Tensor, Tensor]:
    """(N, H, W) bool -> (runs of all masks back to back, int64; runs per mask, int64 (N,)), column-major runs."""
    n, h, w = b.shape
    hw = h * w
    # A pixel starts a run when it differs from its column-major predecessor: the pixel above it, or for the top
    # row the bottom of the previous column (the first pixel of a mask compares with 0). Found in place, in the
    # masks' own layout; only the few change points are put in column-major order.
    change = torch.empty_like(b)
    torch.ne(b[:, 1:, :], b[:, :-1, :], out=change[:, 1:, :])
    torch.ne(b[:, 0, 1:], b[:, -1, :-1], out=change[:, 0, 1:])
    change[:, 0, 0] = b[:, 0, 0]
    flat = torch.nonzero(change.view(-1)).view(-1)  # mask * hw + row * w + column; waits for the device
    mask_i, pixel = flat // hw, flat % hw
    keys = torch.sort(mask_i * hw + (pixel % w) * h + pixel // w).values  # mask * hw + column-major position
    # Runs are the gaps between consecutive change points; adding every multiple of hw as a point splits them
    # per mask, and a mask whose first pixel is set gets its leading zero-length run from the duplicate point.
    bounds = torch.arange(n + 1, device=b.device, dtype=torch.int64) * hw
    points = torch.sort(torch.cat([keys, bounds])).values
    runs = points[1:] - points[:-1]
    per = torch.bincount(keys // max(hw, 1), minlength=n)[:n] + 1
    return runs, per


def _strings(runs: Tensor, per: Tensor, sizes: list[list[int]]) -> list[RLE]:
    """Runs (back to back, ``per`` each) -> one RLE dict per mask; the varint coding happens on the device."""
    m = int(runs.numel())
    n = int(per.numel())
    if n == 0:
        return []
    start = torch.cumsum(per, 0) - per
    local = torch.arange(m, device=runs.device) - torch.repeat_interleave(start, per, output_size=m)
    x = torch.where(local > 2, runs - torch.roll(runs, 2), runs)  # run i minus run i - 2, for i > 2
    magnitude = x ^ (x >> 63)  # ~x for negative values
    groups = torch.ones_like(x)
    for t in _THRESHOLDS:
        groups += magnitude >= t
    g = _GROUPS.to(runs.device)
    chars = ((x[:, None] >> (5 * g)) & 0x1F) | ((g < groups[:, None] - 1).to(x.dtype) << 5)
    chars = (chars + 48)[g < groups[:, None]].to(torch.uint8)  # row-major: value by value, low group first
    seg = torch.repeat_interleave(torch.arange(n, device=runs.device), per, output_size=m)
    per_mask = torch.zeros(n, dtype=torch.int64, device=runs.device).index_add_(0, seg, groups)
    text = chars.cpu().numpy().tobytes().decode("ascii")
    ends = np.cumsum(per_mask.cpu().numpy()).tolist()
    out = []
    begin = 0
    for size, end in zip(sizes, ends, strict=True):
        out.append({"size": size, "counts": text[begin:end]})
        begin = end
    return out


def runs_to_strings(runs: Tensor, per: Tensor, size: tuple[int, int]) -> list[RLE]:
    """RLE dicts of masks of ``size`` given their runs back to back (int64) and the number of runs of each."""
    runs = torch.as_tensor(runs, dtype=torch.int64)
    per = torch.as_tensor(per, dtype=torch.int64, device=runs.device)
    if runs.numel() and (int(runs.min()) < 0 or int(runs.max()) > _MAX_PIXELS):
        raise RLEError(f"run lengths must lie in 0..{_MAX_PIXELS}")
    if int(per.sum()) != runs.numel():
        raise RLEError(f"per sums to {int(per.sum())} but {runs.numel()} runs were given")
    return _strings(runs, per, [[int(size[0]), int(size[1])] for _ in range(per.numel())])


def encode_batch(masks: Tensor) -> list[RLE]:
    """N RLE dicts for an (N, H, W) tensor (nonzero is foreground), equal to ``rvos_batch.rle.encode_batch``."""
    b = _check(masks)
    n, h, w = b.shape
    if n == 0:
        return []
    if h * w == 0:
        return [{"size": [h, w], "counts": "0"} for _ in range(n)]  # as rvos_batch.rle
    runs, per = _runs(b)
    return _strings(runs, per, [[h, w] for _ in range(n)])


def _stats(runs: Tensor, per: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Areas (N,) and pycocotools ``toBbox`` boxes (N, 4) from the runs (back to back, ``per`` each), on their
    device, as ``rvos_batch.rle``: x from the first and last column of the foreground runs, y likewise, except
    that a foreground run crossing from one column into the next covers every row. Empty masks: [0, 0, 0, 0]."""
    n = int(per.numel())
    m = int(runs.numel())
    dev = runs.device
    seg = torch.repeat_interleave(torch.arange(n, device=dev), per, output_size=m)
    start = torch.cumsum(per, 0) - per
    local = torch.arange(m, device=dev) - torch.repeat_interleave(start, per, output_size=m)
    fg = (local % 2 == 1) & (runs > 0)
    area = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, seg, torch.where(fg, runs, 0))
    end = torch.cumsum(runs, 0) - seg * (h * w)  # pixel after each run, within its mask
    sel = torch.nonzero(fg).reshape(-1)
    s_seg = seg[sel]
    last = end[sel] - 1
    first = last - runs[sel] + 1
    x0, y0 = first // h, first % h
    x1, y1 = last // h, last % h

    def reduce(values: Tensor, how: str, init: int) -> Tensor:
        out = torch.full((n,), init, dtype=torch.int64, device=dev)
        return out.scatter_reduce_(0, s_seg, values, how, include_self=False)

    xs, xe = reduce(x0, "amin", w), reduce(x1, "amax", 0)
    ys, ye = reduce(y0, "amin", h), reduce(y1, "amax", 0)
    crossing = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, s_seg, (x0 < x1).long()) > 0
    ys = torch.where(crossing, torch.zeros_like(ys), ys)
    ye = torch.where(crossing, torch.full_like(ye, h - 1), ye)
    box = torch.stack([xs, ys, xe - xs + 1, ye - ys + 1], dim=1).to(torch.float64)
    return area, torch.where((area > 0)[:, None], box, torch.zeros_like(box))


def encode_batch_with_stats(masks: Tensor) -> tuple[list[RLE], np.ndarray, np.ndarray]:
    """:func:`encode_batch` plus areas (int64 (N,)) and boxes (float64 (N, 4)) as ``rle.encode_batch_with_stats``,
    all from one pass over the masks."""
    b = _check(masks)
    n, h, w = b.shape
    if n == 0 or h * w == 0:
        return encode_batch(b), np.zeros(n, np.int64), np.zeros((n, 4), np.float64)
    runs, per = _runs(b)
    area, box = _stats(runs, per, h, w)
    return _strings(runs, per, [[h, w] for _ in range(n)]), area.cpu().numpy(), box.cpu().numpy()
