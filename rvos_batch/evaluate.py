"""Score predicted masks against ground truth with the DAVIS-2017 protocols (semi-supervised and unsupervised).

Numerics follow the official davis2017-evaluation package (github.com/davisvideochallenge/davis2017-evaluation,
read, not copied); tests/test_evaluate.py pins our figures to figures produced by running that package.

Per object and frame:

- **J** (region similarity): ``|pred & gt| / |pred | gt|``, and 1 when the union is empty.
- **F** (boundary measure): boundaries are drawn as the package's ``seg2bmap`` draws them (a pixel is on the
  boundary when its east, south or south-east neighbour differs; the last row compares east only, the last
  column south only, the bottom-right pixel never counts). A boundary pixel matches when a boundary pixel of
  the other mask lies within the disk of radius ``ceil(0.008 * diagonal)`` pixels (8 at 480x854, 9 at 480x910,
  4 at 240x427). P = matched predicted / predicted boundary pixels, R = matched truth / truth boundary pixels,
  F = 2PR / (P + R); 0 when only one side has boundary pixels, 1 when neither has.

Per object: mean over frames, recall (fraction of frames above 0.5) and decay (mean of the first quarter of
the frames minus mean of the last quarter; quarters are overlapping index ranges as the package cuts them).
Global: ``J-Mean`` / ``J-Recall`` / ``J-Decay`` (and F) are means over all objects of all videos, and
``J&F-Mean`` = (J-Mean + F-Mean) / 2.

Protocols (``protocol=``):

- ``semi-supervised``: prediction id k is ground-truth object k; the first and last frames are not scored.
  A prediction id above the number of ground-truth objects (in the scored frames) is an error, as in the
  package. As in the package, void pixels (255) count as background here: it passes no void mask for this
  protocol (DAVIS-2017 semi-supervised annotations have none).
- ``unsupervised``: at most ``max_proposals`` (20) proposal ids; J and F of every (proposal, object) pair on
  every frame, void pixels excluded (removed from both masks before J and before boundary extraction); one
  Hungarian assignment per video (scipy ``linear_sum_assignment``) maximising the mean over frames of
  (J + F) / 2; ground-truth objects left without a proposal are scored against an empty mask.

Deliberate differences from the package:

1. Decay is computed correctly past 256 scored frames (the package casts the quarter boundaries to uint8, so
   they wrap around); identical up to 256 frames.
2. Unsupervised ``per_object`` entries are named ``<video>_<ground-truth id>`` (the package names them in
   proposal order); each entry also records which proposal id was matched (``matched_id``).
3. The number of ground-truth objects is the largest id over all ground-truth frames (the package uses the
   largest id of the first frame, silently dropping objects that enter later with a higher id); identical on
   DAVIS, where every object is in the first frame.
4. Missing predictions raise :class:`EvaluationError` naming the file, or, with ``missing="empty"``, are
   scored as empty masks (the package exits).

Speed: the package dilates both boundary maps of every (proposal, object) pair on every frame with OpenCV.
Here boundaries of all objects of a frame come out of one pass over the id map, and "is there a boundary
pixel of object k within the disk" is answered for all objects at once: the boundary pixels of a frame are
drawn as bit sets (one bit per object) into an image, OR-tables over runs of 1, 2, 4, ... pixels along rows
are built once, and each query pixel reads two table entries per disk row. J comes from one joint histogram
of (prediction id, truth id) per frame.

YouTube-VOS: given a ``meta.json`` (``{"videos": {video: {"objects": {id: {"category": name}}}}}``) and the
set of categories seen in training, :class:`EvalResult` also reports J and F over objects of seen and of
unseen categories (mean over objects of their per-object means, under the chosen protocol) and their mean,
``overall``. This reproduces the grouping of the YouTube-VOS benchmark, not its server (which scores each
object from its first annotated frame on).

Inputs (``evaluate(pred, gt, ...)``): DAVIS-layout folders of palette PNGs (``ROOT/<video>/<frame>.png``,
``ROOT/Annotations/480p/<video>/...`` or ``ROOT/Annotations/<video>/...``), or mask datasets / OUT stores
(rvos_batch.maskstore; frame_index k is the k-th ground-truth frame in name order).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from rvos_batch import imaging
from rvos_batch.errors import RvosBatchError

PROTOCOLS = ("semi-supervised", "unsupervised")
VOID_ID = 255
MAX_PROPOSALS = 20
DEFAULT_BOUND_TH = 0.008
RECALL_THRESHOLD = 0.5
_CHUNK_PIXELS = 8_000_000  # frames per work chunk: about this many pixels (bounds the memory of the bit tables)
SUMMARY_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
# Each summary figure but J&F-Mean is the mean over objects of this ObjectScore attribute.
OBJECT_FIGURES = {"J-Mean": "j_mean", "J-Recall": "j_recall", "J-Decay": "j_decay", "F-Mean": "f_mean",
                  "F-Recall": "f_recall", "F-Decay": "f_decay"}


class EvaluationError(RvosBatchError):
    """Predictions or ground truth cannot be scored (missing frame, size mismatch, too many ids, bad layout)."""


# --------------------------------------------------------------------------------------------- per-frame measures


def boundary_radius(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Match tolerance in pixels: ``ceil(bound_th * diagonal)`` for ``bound_th < 1``, else ``bound_th`` itself."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be an integer, got {bound_th}")
        return int(bound_th)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be > 0, got {bound_th}")
    return int(math.ceil(bound_th * math.hypot(height, width)))


def _boundary_pairs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundary pixels of every object of an id map, each object's boundary drawn as seg2bmap draws it.

    ids: (T, H, W) integers, 0 = background. Returns (flat, obj): flat indices into ``ids`` and the object
    whose boundary passes there, unique pairs sorted by flat index (a pixel can be on several boundaries).
    """
    _, h, w = ids.shape
    # A pixel is on object a's boundary iff a is its own id or the id of its E, S or SE neighbour, and that
    # neighbour's id differs from its own. Out-of-image neighbours repeat the edge pixel, which gives the
    # package's rules for the last row (E only), the last column (S only) and the corner (never).
    diff = np.zeros(ids.shape, dtype=bool)
    np.not_equal(ids[:, :, :-1], ids[:, :, 1:], out=diff[:, :, :-1])
    diff[:, :-1, :] |= ids[:, :-1, :] != ids[:, 1:, :]
    diff[:, :-1, :-1] |= ids[:, :-1, :-1] != ids[:, 1:, 1:]
    flat = np.flatnonzero(diff)
    if flat.size == 0:
        return flat, flat.copy()
    flat_ids = ids.reshape(-1)
    x = flat % w
    y = (flat // w) % h
    east = np.where(x < w - 1, flat + 1, flat)
    south = np.where(y < h - 1, flat + w, flat)
    south_east = np.where((x < w - 1) & (y < h - 1), flat + w + 1, np.where(y < h - 1, south, east))
    own = flat_ids[flat]
    n_ids = int(ids.max()) + 1
    keys = [flat[own != 0] * n_ids + own[own != 0]]
    for nb in (east, south, south_east):
        nb_id = flat_ids[nb]
        keep = (nb_id != own) & (nb_id != 0)
        keys.append(flat[keep] * n_ids + nb_id[keep])
    key = np.sort(np.concatenate(keys))
    key = key[np.r_[True, key[1:] != key[:-1]]]
    return key // n_ids, key % n_ids


def _bits_dtype(n: int) -> type[np.unsignedinteger[Any]]:
    for dtype, bits in ((np.uint8, 8), (np.uint16, 16), (np.uint32, 32)):
        if n <= bits:
            return dtype
    return np.uint64


def _near_counts(
    src: tuple[np.ndarray, np.ndarray],
    qry: tuple[np.ndarray, np.ndarray],
    n_src: int,
    n_qry: int,
    shape: tuple[int, int, int],
    radius: int,
) -> np.ndarray:
    """counts[t, q, s]: boundary pixels of query object q in frame t with a boundary pixel of source object s
    within the disk of ``radius`` (dilation of s's boundary, read at q's boundary pixels).

    ``src``/``qry``: (flat indices into ``shape``, object ids 1..n) from :func:`_boundary_pairs`.
    """
    t_n, h, w = shape
    counts = np.zeros((t_n, n_qry + 1, n_src + 1), dtype=np.int64)
    s_flat, s_obj = src
    q_flat, q_obj = qry
    if s_flat.size == 0 or q_flat.size == 0:
        return counts
    q_t, q_rem = np.divmod(q_flat, h * w)
    q_y, q_x = np.divmod(q_rem, w)
    s_t, s_rem = np.divmod(s_flat, h * w)
    s_y, s_x = np.divmod(s_rem, w)
    # Work inside the query bounding box grown by the radius: sources outside it cannot reach any query, and
    # every disk around a query pixel stays inside it, so row-wise tables never run across rows.
    y0, y1 = int(q_y.min()) - radius, int(q_y.max()) + radius
    x0, x1 = int(q_x.min()) - radius, int(q_x.max()) + radius
    hr, wr = y1 - y0 + 1, x1 - x0 + 1
    inside = (s_y >= y0) & (s_y <= y1) & (s_x >= x0) & (s_x <= x1)
    s_pos = ((s_t * hr + (s_y - y0)) * wr + (s_x - x0))[inside]
    s_obj = s_obj[inside]
    q_pos = (q_t * hr + (q_y - y0)) * wr + (q_x - x0)
    q_group = q_t * (n_qry + 1) + q_obj
    widths = [math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)]
    levels = [(2 * wd + 1).bit_length() - 1 for wd in widths]  # OR-table level: runs of 2**level pixels
    for first in range(1, n_src + 1, 64):  # objects first..first+63 share one bit set per pixel
        last = min(first + 63, n_src)
        sel = (s_obj >= first) & (s_obj <= last)
        if not sel.any():
            continue
        dtype = _bits_dtype(last - first + 1)
        pos = s_pos[sel]
        bits = np.left_shift(np.ones(1, dtype=dtype), (s_obj[sel] - first).astype(dtype))
        starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])  # pos is sorted: pairs come sorted by pixel
        table = np.zeros(t_n * hr * wr, dtype=dtype)
        table[pos[starts]] = np.bitwise_or.reduceat(bits, starts)
        hit = np.zeros(q_pos.size, dtype=dtype)
        for level in range(max(levels) + 1):
            if level > 0:  # table[i] = OR of the source bits of pixels i .. i + 2**level - 1
                step = 1 << (level - 1)
                grown = table.copy()
                grown[:-step] |= table[step:]
                table = grown
            run = 1 << level
            for dy, (wd, lv) in enumerate(zip(widths, levels, strict=True)):
                if lv != level:
                    continue
                row = q_pos + (dy - radius) * wr
                # two runs of 2**level pixels cover the disk row [x - wd, x + wd] (2**level <= 2wd+1 < 2**(level+1))
                hit |= table[row - wd]
                hit |= table[row + wd - run + 1]
        for obj in range(first, last + 1):
            has = (hit >> (obj - first)) & 1
            if has.any():
                counts[:, :, obj] = np.bincount(q_group[has.astype(bool)], minlength=t_n * (n_qry + 1)).reshape(
                    t_n, n_qry + 1
                )
    return counts


def pairwise_scores(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    num_gt: int | None = None,
    num_pred: int | None = None,
    void: np.ndarray | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (prediction id, ground-truth id) pair on every frame.

    ``gt``, ``pred``: (T, H, W) id maps (0 = background; 255 in ``gt`` is an object id here, see
    :func:`split_void`). ``void``: optional (T, H, W) bool, pixels excluded from both (both are cleared
    there). Returns ``(j, f)``, each
    float64 (num_pred, num_gt, T), C-contiguous; row p-1 is prediction id p, column k-1 ground-truth id k.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
        void = None if void is None else np.asarray(void)[None]
    if gt.shape != pred.shape or gt.ndim != 3:
        raise EvaluationError(f"ground truth {gt.shape} and prediction {pred.shape} must both be (T, H, W)")
    t_n, h, w = gt.shape
    num_gt = int(gt.max(initial=0)) if num_gt is None else int(num_gt)
    num_pred = int(pred.max(initial=0)) if num_pred is None else int(num_pred)
    if void is not None:
        void = np.asarray(void, dtype=bool)
        if void.shape != gt.shape:
            raise EvaluationError(f"void mask {void.shape} does not match the ground truth {gt.shape}")
        if void.any():
            pred = np.where(void, 0, pred)
            gt = np.where(void, 0, gt)
    radius = boundary_radius(h, w, bound_th)
    j = np.empty((num_pred, num_gt, t_n), dtype=np.float64)
    f = np.empty((num_pred, num_gt, t_n), dtype=np.float64)
    chunk = max(1, _CHUNK_PIXELS // max(1, h * w))
    for start in range(0, t_n, chunk):
        stop = min(t_n, start + chunk)
        jc, fc = _chunk_scores(gt[start:stop], pred[start:stop], num_gt, num_pred, radius)
        j[:, :, start:stop] = jc
        f[:, :, start:stop] = fc
    return j, f


def _frame_of(flat: np.ndarray, t_n: int, hw: int) -> np.ndarray:
    """Frame index of each sorted flat index into (t_n, H, W) (cheaper than integer division)."""
    starts = np.searchsorted(flat, np.arange(t_n + 1) * hw)
    return np.repeat(np.arange(t_n), np.diff(starts))


def _chunk_scores(
    gt: np.ndarray, pred: np.ndarray, num_gt: int, num_pred: int, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    t_n = gt.shape[0]
    ng1, np1 = num_gt + 1, num_pred + 1
    if gt.max(initial=0) > num_gt or pred.max(initial=0) > num_pred:
        raise EvaluationError(f"ids above num_gt={num_gt} / num_pred={num_pred}")
    # J: one joint histogram of (frame, prediction id, truth id) over pixels where either is non-zero.
    idx = np.flatnonzero(np.bitwise_or(gt, pred))
    p_id = pred.reshape(-1)[idx].astype(np.int64)
    g_id = gt.reshape(-1)[idx].astype(np.int64)
    frame = _frame_of(idx, t_n, gt.shape[1] * gt.shape[2])
    area_p = np.bincount(frame * np1 + p_id, minlength=t_n * np1).reshape(t_n, np1)
    area_g = np.bincount(frame * ng1 + g_id, minlength=t_n * ng1).reshape(t_n, ng1)
    both = (p_id != 0) & (g_id != 0)
    inter = np.bincount(((frame * np1 + p_id) * ng1 + g_id)[both], minlength=t_n * np1 * ng1).reshape(t_n, np1, ng1)
    union = area_p[:, :, None] + area_g[:, None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    j[union == 0] = 1.0
    # F: boundary pixels of all objects, then matches in both directions.
    g_pairs = _boundary_pairs(gt)
    p_pairs = _boundary_pairs(pred)
    hw = gt.shape[1] * gt.shape[2]
    n_g = np.bincount(_frame_of(g_pairs[0], t_n, hw) * ng1 + g_pairs[1], minlength=t_n * ng1)
    n_p = np.bincount(_frame_of(p_pairs[0], t_n, hw) * np1 + p_pairs[1], minlength=t_n * np1)
    n_g = n_g.reshape(t_n, ng1)[:, None, :]  # (T, 1, K+1)
    n_p = n_p.reshape(t_n, np1)[:, :, None]  # (T, P+1, 1)
    p_match = _near_counts(g_pairs, p_pairs, num_gt, num_pred, gt.shape, radius)  # (T, P+1, K+1)
    g_match = _near_counts(p_pairs, g_pairs, num_pred, num_gt, gt.shape, radius).transpose(0, 2, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = p_match / n_p.astype(np.float64)
        recall = g_match / n_g.astype(np.float64)
        f = 2 * precision * recall / (precision + recall)
    f[(precision + recall) == 0] = 0.0
    f[(n_p == 0) & (n_g > 0)] = 0.0
    f[(n_p > 0) & (n_g == 0)] = 0.0
    f[np.broadcast_to((n_p == 0) & (n_g == 0), f.shape)] = 1.0
    # (T, P+1, K+1) -> (P, K, T)
    return (
        np.ascontiguousarray(j[:, 1:, 1:].transpose(1, 2, 0)),
        np.ascontiguousarray(f[:, 1:, 1:].transpose(1, 2, 0)),
    )


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """J of binary masks: (H, W) gives a 0-d array, (T, H, W) one value per frame."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    j, _ = _binary_scores(gt, pred, void, DEFAULT_BOUND_TH, need_f=False)
    return j


def boundary_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = DEFAULT_BOUND_TH
) -> np.ndarray:
    """F of binary masks: (H, W) gives a 0-d array, (T, H, W) one value per frame."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    _, f = _binary_scores(gt, pred, void, bound_th, need_f=True)
    return f


def _binary_scores(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None, bound_th: float, need_f: bool
) -> tuple[np.ndarray, np.ndarray]:
    if gt.shape != pred.shape:
        raise EvaluationError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    single = gt.ndim == 2
    g = gt[None] if single else gt
    p = pred[None] if single else pred
    v = None if void is None else (np.asarray(void, dtype=bool)[None] if single else np.asarray(void, dtype=bool))
    j, f = pairwise_scores(g.view(np.uint8), p.view(np.uint8), num_gt=1, num_pred=1, void=v, bound_th=bound_th)
    out_j, out_f = j[0, 0], f[0, 0]
    return (out_j[0], out_f[0]) if single else (out_j, out_f)


# --------------------------------------------------------------------------------------------- per-object statistics


def quarter_edges(n: int) -> list[int]:
    """Frame indices bounding the four overlapping quarters used for decay (round half up of i*(n-1)/4)."""
    return [(2 * i * (n - 1) + 4) // 8 for i in range(5)]


def statistics(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values; NaN for an empty sequence (e.g. a 2-frame video)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > RECALL_THRESHOLD))
        e = quarter_edges(v.size)
        decay = float(np.nanmean(v[e[0] : e[1] + 1]) - np.nanmean(v[e[3] : e[4] + 1]))
    return mean, recall, decay


@dataclass(frozen=True)
class ObjectScore:
    """Scores of one ground-truth object over the scored frames of its video."""

    video_id: str
    object_id: int  # ground-truth id
    matched_id: int  # prediction id scored against it (unsupervised: an id absent from the prediction = empty)
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float
    j: np.ndarray = field(repr=False, compare=False)  # per scored frame
    f: np.ndarray = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.video_id}_{self.object_id}"


def _object_score(video_id: str, object_id: int, matched_id: int, j: np.ndarray, f: np.ndarray) -> ObjectScore:
    jm, jr, jd = statistics(j)
    fm, fr, fd = statistics(f)
    return ObjectScore(video_id, object_id, matched_id, jm, jr, jd, fm, fr, fd, j, f)


def split_void(gt_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids with void pixels set to 0, void mask or None when there is no void pixel)."""
    void = gt_ids == VOID_ID
    if not void.any():
        return gt_ids, None
    return np.where(void, 0, gt_ids).astype(gt_ids.dtype), void


def evaluate_video(
    video_id: str,
    gt_ids: np.ndarray,
    pred_ids: np.ndarray,
    protocol: str = "semi-supervised",
    *,
    bound_th: float = DEFAULT_BOUND_TH,
    max_proposals: int = MAX_PROPOSALS,
) -> list[ObjectScore]:
    """Scores of each ground-truth object of one video (id maps (T, H, W); ``gt_ids`` may hold void 255)."""
    _check_protocol(protocol)
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt_ids.shape != pred_ids.shape:
        raise EvaluationError(
            f"video {video_id!r}: prediction shape {pred_ids.shape} differs from ground truth {gt_ids.shape}"
        )
    gt, void = split_void(gt_ids)
    num_gt = int(gt.max(initial=0))
    if num_gt == 0:
        return []
    if protocol == "semi-supervised":
        gt, pred = gt[1:-1], pred_ids[1:-1]
        num_pred = int(pred.max(initial=0))
        if num_pred > num_gt:
            frame = int(np.argmax((pred == num_pred).any(axis=(1, 2)))) + 1
            raise EvaluationError(
                f"video {video_id!r}: prediction id {num_pred} (frame {frame}) but the ground truth has "
                f"{num_gt} objects; semi-supervised prediction ids must be ground-truth ids 1..{num_gt}"
            )
        j, f = pairwise_scores(gt, pred, num_gt=num_gt, num_pred=num_gt, bound_th=bound_th)
        return [_object_score(video_id, k, k, j[k - 1, k - 1], f[k - 1, k - 1]) for k in range(1, num_gt + 1)]
    num_pred = int(pred_ids.max(initial=0))
    if num_pred > max_proposals:
        raise EvaluationError(
            f"video {video_id!r}: proposal id {num_pred}; the unsupervised protocol allows ids 1..{max_proposals}"
        )
    rows = max(num_pred, num_gt)  # missing proposals are empty masks
    j, f = pairwise_scores(gt, pred_ids, num_gt=num_gt, num_pred=rows, void=void, bound_th=bound_th)
    quality = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2
    prop, obj = linear_sum_assignment(-quality)
    match = dict(zip(obj.tolist(), prop.tolist(), strict=True))
    return [
        _object_score(video_id, k, match[k - 1] + 1, j[match[k - 1], k - 1], f[match[k - 1], k - 1])
        for k in range(1, num_gt + 1)
    ]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"protocol {protocol!r} not supported; allowed: {', '.join(PROTOCOLS)}")


# --------------------------------------------------------------------------------------------- results


def _mean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    return float(np.mean(v)) if v.size else math.nan


@dataclass(frozen=True)
class EvalResult:
    """All objects' scores; :meth:`summary` gives the DAVIS global figures, :meth:`to_json` the CLI's JSON."""

    protocol: str
    objects: tuple[ObjectScore, ...]
    youtube_vos: dict[str, Any] | None = None

    def summary(self) -> dict[str, float]:
        out = {key: _mean(getattr(o, attr) for o in self.objects) for key, attr in OBJECT_FIGURES.items()}
        return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}

    def bootstrap(self, samples: int, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
        """How far the summary figures could move on another set of videos like these: a percentile bootstrap over
        videos (Efron and Tibshirani 1993, ch. 13). Each of ``samples`` replicates draws as many videos as were
        scored, with replacement, and takes the summary over their objects, as :meth:`summary` does (J&F-Mean is the
        mean of the replicate's J-Mean and F-Mean). Videos, not objects, are drawn, because a video's objects share
        its frames, its motion and its difficulty.

        Returns ``{"samples", "seed", "level", "unit": "video", "std": {key: ...}, "interval": {key: [low, high]}}``
        for every summary key: the replicates' standard deviation and their central ``level`` interval (None where
        a figure is NaN in every replicate). Deterministic for a given ``seed``."""
        check_bootstrap_samples(samples)
        if not 0.0 < float(level) < 1.0:
            raise EvaluationError(f"bootstrap level={level!r}: allowed is a number in (0, 1)")
        if not self.objects:
            raise EvaluationError("bootstrap: no objects were scored")
        videos = {v: i for i, v in enumerate(sorted({o.video_id for o in self.objects}))}
        video_of = np.array([videos[o.video_id] for o in self.objects])
        keys = list(OBJECT_FIGURES)
        values = np.array([[getattr(o, a) for a in OBJECT_FIGURES.values()] for o in self.objects],
                          dtype=np.float64)  # (n, 6)
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(len(videos), np.full(len(videos), 1.0 / len(videos)), size=samples)  # (R, V)
        weights = counts[:, video_of].astype(np.float64)  # (R, n): how often each object's video was drawn
        known = np.isfinite(values)
        totals = weights @ np.where(known, values, 0.0)  # (R, 6)
        drawn = weights @ known.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = totals / drawn  # NaN where a replicate drew no object with that figure
        reps = dict(zip(keys, means.T, strict=True))
        reps["J&F-Mean"] = (reps["J-Mean"] + reps["F-Mean"]) / 2
        tail = 100 * (1 - float(level)) / 2
        std: dict[str, float | None] = {}
        interval: dict[str, list[float] | None] = {}
        for key in SUMMARY_KEYS:
            r = reps[key][np.isfinite(reps[key])]
            std[key] = float(np.std(r)) if r.size else None
            interval[key] = [float(q) for q in np.percentile(r, [tail, 100 - tail])] if r.size else None
        return {"samples": samples, "seed": seed, "level": float(level), "unit": "video", "std": std,
                "interval": interval}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: the summary keys, ``per_object`` and, when computed, ``youtube_vos``; NaN -> None."""
        out: dict[str, Any] = {k: _finite(v) for k, v in self.summary().items()}
        out["protocol"] = self.protocol
        out["num_videos"] = len({o.video_id for o in self.objects})
        out["num_objects"] = len(self.objects)
        per_object: dict[str, dict[str, Any]] = {}
        for o in self.objects:
            entry: dict[str, Any] = {"J-Mean": _finite(o.j_mean), "F-Mean": _finite(o.f_mean)}
            if self.protocol == "unsupervised":
                entry["matched_id"] = o.matched_id
            per_object[o.name] = entry
        out["per_object"] = per_object
        if self.youtube_vos is not None:
            out["youtube_vos"] = {k: _finite(v) if isinstance(v, float) else v for k, v in self.youtube_vos.items()}
        return out


def check_bootstrap_samples(samples: object) -> int:
    """``samples`` if it is a valid number of bootstrap replicates (an integer >= 2), else EvaluationError."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 2:
        raise EvaluationError(f"bootstrap samples={samples!r}: allowed is an integer >= 2")
    return samples


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# --------------------------------------------------------------------------------------------- YouTube-VOS grouping


def load_categories(meta: str | os.PathLike[str]) -> dict[tuple[str, int], str]:
    """(video, object id) -> category from a YouTube-VOS ``meta.json``."""
    data = _read_json(meta)
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict):
        raise EvaluationError(f"{meta}: expected a YouTube-VOS meta.json with a 'videos' object")
    out: dict[tuple[str, int], str] = {}
    for video, entry in videos.items():
        objects = entry.get("objects", {}) if isinstance(entry, dict) else {}
        for obj_id, obj in objects.items():
            category = obj.get("category") if isinstance(obj, dict) else None
            if not isinstance(category, str):
                raise EvaluationError(f"{meta}: videos.{video}.objects.{obj_id} has no 'category' string")
            try:
                out[(str(video), int(obj_id))] = category
            except ValueError:
                raise EvaluationError(f"{meta}: videos.{video}: object id {obj_id!r} is not an integer") from None
    return out


def load_seen(seen: str | os.PathLike[str] | Iterable[str]) -> frozenset[str]:
    """Seen (training) categories: an iterable of names, a text file with one name per line (``#`` comments),
    a JSON list of names, or a YouTube-VOS training ``meta.json`` (every category in it is seen)."""
    if not isinstance(seen, (str, os.PathLike)):
        return frozenset(str(s) for s in seen)
    path = Path(seen)
    if not path.is_file():
        raise EvaluationError(f"{path}: seen-categories file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return frozenset(data)
        if isinstance(data, dict) and "videos" in data:
            return frozenset(load_categories(path).values())
        raise EvaluationError(f"{path}: expected a JSON list of category names or a YouTube-VOS meta.json")
    names = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(n for n in names if n)


def youtube_vos_summary(
    objects: Sequence[ObjectScore], categories: dict[tuple[str, int], str], seen: frozenset[str]
) -> dict[str, Any]:
    """J and F over objects of seen and unseen categories, and ``overall`` (mean of the four)."""
    groups: dict[bool, list[ObjectScore]] = {True: [], False: []}
    missing = 0
    for o in objects:
        category = categories.get((o.video_id, o.object_id))
        if category is None:
            missing += 1
            continue
        groups[category in seen].append(o)
    out: dict[str, Any] = {
        "J-seen": _mean(o.j_mean for o in groups[True]),
        "J-unseen": _mean(o.j_mean for o in groups[False]),
        "F-seen": _mean(o.f_mean for o in groups[True]),
        "F-unseen": _mean(o.f_mean for o in groups[False]),
    }
    out["overall"] = _mean(out.values())
    out["objects_seen"] = len(groups[True])
    out["objects_unseen"] = len(groups[False])
    out["objects_without_category"] = missing
    return out


def _read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluationError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


# --------------------------------------------------------------------------------------------- inputs


class _PngFolder:
    """DAVIS-layout palette PNGs: ROOT/<video>/<frame>.png (ROOT may be a dataset root with Annotations/)."""

    def __init__(self, path: str) -> None:
        root = Path(path)
        for candidate in (root / "Annotations" / "480p", root / "Annotations"):
            if candidate.is_dir():
                root = candidate
                break
        if not root.is_dir():
            raise EvaluationError(f"{path}: not a folder of <video>/<frame>.png masks, nor a mask dataset")
        self.root = root

    def videos(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*.png")))

    def frames(self, video: str) -> list[str]:
        return sorted(p.stem for p in (self.root / video).glob("*.png"))

    def read(self, video: str, frames: Sequence[str], missing: str) -> np.ndarray | None:
        folder = self.root / video
        if not folder.is_dir():
            if missing == "empty":
                return None
            raise EvaluationError(f"{folder}: prediction folder for video {video!r} not found")
        out: list[np.ndarray | None] = []
        for name in frames:
            path = folder / f"{name}.png"
            if not path.is_file():
                if missing == "empty":
                    out.append(None)
                    continue
                raise EvaluationError(f"{path}: prediction for frame {name!r} of video {video!r} not found")
            out.append(imaging.read_palette_png(path))
        return _stack(out, video)


class _MaskTables:
    """A mask dataset or OUT store (rvos_batch.maskstore): frames are painted as rvos_batch.export paints them."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        from rvos_batch.maskstore import open_masks  # lazy: pulls in pyarrow and the RLE codec

        self.url = url
        self.source = open_masks(url, storage_options)

    def videos(self) -> list[str]:
        import pyarrow.compute as pc

        table = self.source.masks.to_table(columns=["video_id"])
        return sorted(pc.unique(table.column("video_id")).to_pylist())

    def frames(self, video: str) -> list[str]:
        import pyarrow.compute as pc

        count = 0
        if self.source.videos is not None:
            rows = self.source.videos.to_table(columns=["num_frames"], filter=pc.field("video_id") == video).column(
                "num_frames"
            )
            count = max(rows.to_pylist(), default=0)
        table = self.source.masks.to_table(columns=["frame_index"], filter=pc.field("video_id") == video)
        if table.num_rows:
            count = max(count, int(pc.max(table.column("frame_index")).as_py()) + 1)
        return [f"{i:05d}" for i in range(count)]

    def read(self, video: str, frames: Sequence[str], missing: str, size: tuple[int, int] | None = None) -> np.ndarray:
        import pyarrow.compute as pc

        from rvos_batch.export import paint_frame

        columns = ["frame_index", "object_id", "height", "width", "rle_counts", "score"]
        table = self.source.masks.to_table(columns=columns, filter=pc.field("video_id") == video)
        rows = table.to_pylist()
        sizes = {(r["height"], r["width"]) for r in rows}
        if size is not None:
            sizes.add(size)
        if len(sizes) > 1:
            raise EvaluationError(f"{self.url}: video {video!r} has masks of several sizes {sorted(sizes)}")
        if not sizes:
            if missing == "empty":
                return np.zeros((len(frames), 0, 0), dtype=np.uint8)
            raise EvaluationError(f"{self.url}: no masks for video {video!r}")
        h, w = sizes.pop()
        by_frame: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            if r["object_id"] < 1 or r["object_id"] > 255:
                raise EvaluationError(f"{self.url}: video {video!r} object id {r['object_id']} outside 1..255")
            by_frame.setdefault(int(r["frame_index"]), []).append(r)
        out = np.zeros((len(frames), h, w), dtype=np.uint8)
        for i in range(len(frames)):
            if i in by_frame:
                out[i] = paint_frame(by_frame[i], h, w)
        return out


def _stack(frames: list[np.ndarray | None], video: str) -> np.ndarray | None:
    shapes = {f.shape for f in frames if f is not None}
    if not shapes:
        return None
    if len(shapes) > 1:
        raise EvaluationError(f"video {video!r}: frames of different sizes {sorted(shapes)}")
    shape = shapes.pop()
    return np.stack([np.zeros(shape, np.uint8) if f is None else f for f in frames])


def _is_mask_tables(url: str) -> bool:
    if "://" in url and not url.startswith("file://"):
        return True
    path = Path(url.removeprefix("file://"))
    if path.is_file():
        return path.suffix == ".parquet"
    if not path.is_dir():
        return False
    if (path / "run.json").exists() or (path / "_commits").is_dir():
        return True
    return any(path.glob("*.parquet"))


def _open_input(url: str, storage_options: dict[str, Any] | None) -> _PngFolder | _MaskTables:
    if _is_mask_tables(url):
        return _MaskTables(url, storage_options)
    return _PngFolder(url)


def _read_pred(
    source: _PngFolder | _MaskTables, video: str, frames: Sequence[str], shape: tuple[int, ...], missing: str
) -> np.ndarray:
    pred: np.ndarray | None
    if isinstance(source, _MaskTables):
        pred = source.read(video, frames, missing, size=(shape[1], shape[2]))
    else:
        pred = source.read(video, frames, missing)
    if pred is None or pred.size == 0:
        return np.zeros(shape, dtype=np.uint8)
    if pred.shape != shape:
        raise EvaluationError(
            f"video {video!r}: prediction frames are {pred.shape[2]}x{pred.shape[1]}, ground truth "
            f"{shape[2]}x{shape[1]}; predictions must have the ground-truth size"
        )
    return pred


def evaluate(
    pred: str,
    gt: str,
    protocol: str = "semi-supervised",
    *,
    videos: Sequence[str] | None = None,
    meta: str | os.PathLike[str] | None = None,
    seen: str | os.PathLike[str] | Iterable[str] | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
    max_proposals: int = MAX_PROPOSALS,
    missing: str = "error",
    storage_options: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score predictions ``pred`` against ground truth ``gt`` (PNG folders or mask datasets, see the module).

    ``videos``: the videos to score (default: every ground-truth video). ``missing``: "error" (default) or
    "empty" (a missing prediction video or frame is scored as an empty mask). ``meta`` and ``seen``: add the
    YouTube-VOS seen/unseen figures (``meta`` defaults to ``meta.json`` next to the ground truth when ``seen``
    is given). ``workers``: videos scored in parallel threads (default: up to 4).
    """
    _check_protocol(protocol)
    if missing not in ("error", "empty"):
        raise EvaluationError(f"missing={missing!r}; allowed: error, empty")
    gt_src = _open_input(gt, storage_options)
    pred_src = _open_input(pred, storage_options)
    names = gt_src.videos() if videos is None else list(videos)
    if not names:
        raise EvaluationError(f"{gt}: no ground-truth videos found")

    def score(video: str) -> list[ObjectScore]:
        frames = gt_src.frames(video)
        if not frames:
            raise EvaluationError(f"{gt}: no ground-truth frames for video {video!r}")
        gt_ids = gt_src.read(video, frames, "error")
        assert gt_ids is not None
        pred_ids = _read_pred(pred_src, video, frames, gt_ids.shape, missing)
        out = evaluate_video(video, gt_ids, pred_ids, protocol, bound_th=bound_th, max_proposals=max_proposals)
        if progress is not None:
            progress(video)
        return out

    n_workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(names)))
    if n_workers == 1:
        per_video = [score(v) for v in names]
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            per_video = list(pool.map(score, names))
    objects = tuple(o for objs in per_video for o in objs)
    yt = None
    if seen is not None:
        meta_path = meta if meta is not None else _default_meta(gt)
        yt = youtube_vos_summary(objects, load_categories(meta_path), load_seen(seen))
    elif meta is not None:
        raise EvaluationError("meta given without seen categories; pass seen= (--seen) to get seen/unseen figures")
    return EvalResult(protocol, objects, yt)


def _default_meta(gt: str) -> Path:
    root = Path(gt)
    for candidate in (root / "meta.json", root.parent / "meta.json", root.parent.parent / "meta.json"):
        if candidate.is_file():
            return candidate
    raise EvaluationError(f"{gt}: no meta.json found next to the ground truth; pass it with meta= (--meta)")
