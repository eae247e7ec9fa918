"""COCO compressed RLE for binary masks, in pure numpy (same strings as pycocotools, no pycocotools at runtime).

Format
------
An RLE is ``{"size": [h, w], "counts": str}``. The mask is read in column-major (Fortran) order, i.e. down
the first column, then down the second, and so on, and cut into runs of equal pixels. Runs alternate and the
first run counts zeros, so a mask whose first pixel is set starts with a run of length 0::

    column-major pixels 0 0 1 1 1 0 1   ->  runs [2, 3, 1, 1]
    column-major pixels 1 1 1 1 1 1 0   ->  runs [0, 6, 1]

Odd-indexed runs are foreground, so the area is the sum of the odd runs and all runs sum to ``h * w``.

The runs are then written as a string of printable characters. Each run ``c[i]`` with ``i > 2`` is first
replaced by its difference to the run two back, ``c[i] - c[i - 2]`` (runs of one kind change slowly from column
to column; note the strict ``i > 2``: the third run is written as is). The resulting signed integer is written
as a little-endian varint of 5-bit groups, one 6-bit character per group: the character is ``48 + group``,
plus 32 (bit 5, "more groups follow") on every group but the last. Bit 4 of the last group is the sign: when
set, the value is negative and is sign-extended from ``5 * groups`` bits. The encoder uses the fewest groups
that represent the value in two's complement. Characters therefore lie in ``'0'`` (48) .. ``'o'`` (111).

Decoding reverses this: parse the varints, undo the deltas (a running sum along each of the two interleaved
chains of even and odd runs), then expand the runs.

API
---
:func:`encode` / :func:`encode_batch` (an (N, H, W) stack in one vectorised pass) / :func:`encode_batch_with_stats`
(also areas and boxes, from the runs found while encoding); :func:`decode` / :func:`decode_batch` (one size, one
pass over all strings); :func:`area` / :func:`area_batch` and :func:`bbox` / :func:`bbox_batch` (pycocotools'
``toBbox``), computed from the runs without building masks; :func:`string_to_runs` / :func:`runs_to_string`.

Implementation
--------------
Everything is vectorised over all runs (and over all masks of a batch) with numpy; there is no per-run Python
loop. Encoding never transposes the mask. It packs the pixels in memory order to bits (``np.packbits``, the only
per-pixel pass) and XORs that bit stream with itself shifted by one row (w bits): a set bit marks a pixel that
differs from the pixel above it, its column-major predecessor. Only the few nonzero 64-bit words are unpacked
again; the column wrap-arounds (bottom of column c against top of column c + 1) are compared directly, and the
few change positions are sorted into column-major order. A Fortran-ordered mask is already column-major: its
stream is shifted by one pixel and needs no sort. Runs are the gaps between change positions. Decoding expands
the runs with one ``np.repeat`` into a column-major buffer and returns its transposed view, so :func:`decode`
returns a Fortran-ordered ``(h, w)`` bool array (as pycocotools does); call ``np.ascontiguousarray`` on it if
C order is needed.

Run lengths are stored as 32-bit unsigned integers by COCO, so masks with ``h * w >= 2**32`` are refused.
Malformed input raises :class:`rvos_batch.errors.RLEError` naming the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rvos_batch.errors import RLEError

__all__ = [
    "area",
    "area_batch",
    "bbox",
    "bbox_batch",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "encode_batch_with_stats",
    "runs_to_string",
    "string_to_runs",
]

RLE = dict[str, Any]
"""``{"size": [h, w], "counts": str}``; decoders also accept counts as bytes or as a list of run lengths."""

_MAX_PIXELS = 2**32 - 1  # COCO stores run lengths as uint32
_BATCH_PIXELS = 8_000_000  # encode_batch works on chunks of about this many pixels
_MAX_GROUPS = 12  # 60 bits: far more than any run needs, and no int64 overflow while parsing
# A value v needs g + 1 five-bit groups when 2**(5g - 1) <= (v if v >= 0 else ~v) < 2**(5g + 4).
_GROUP_THRESHOLDS = np.array([1 << (5 * g - 1) for g in range(1, _MAX_GROUPS + 1)], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_size(size: Any, where: str = "rle") -> tuple[int, int]:
    """``size`` must be two non-negative integers [h, w] with h * w < 2**32."""
    if isinstance(size, (str, bytes)) or not isinstance(size, (Sequence, np.ndarray)):
        raise RLEError(f"{where}: 'size' must be a list [height, width] of two non-negative ints, got {size!r}")
    if len(size) != 2:
        raise RLEError(f"{where}: 'size' must have exactly two entries [height, width], got {size!r}")
    dims = []
    for name, v in zip(("height", "width"), size, strict=True):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise RLEError(f"{where}: 'size' {name} must be a non-negative int, got {v!r} ({type(v).__name__})")
        if v < 0:
            raise RLEError(f"{where}: 'size' {name} must be non-negative, got {int(v)}")
        dims.append(int(v))
    h, w = dims
    if h * w > _MAX_PIXELS:
        raise RLEError(f"{where}: size {h}x{w} has {h * w} pixels; COCO RLE allows at most {_MAX_PIXELS}")
    return h, w


def _counts_bytes(counts: Any, where: str) -> bytes:
    if isinstance(counts, bytes):
        return counts
    if isinstance(counts, (bytearray, memoryview)):
        return bytes(counts)
    if isinstance(counts, str):
        try:
            return counts.encode("ascii")
        except UnicodeEncodeError as e:
            raise RLEError(
                f"{where}: counts has non-ASCII character {counts[e.start]!r} at position {e.start}; "
                "allowed characters are '0'..'o'"
            ) from None
    raise RLEError(f"{where}: counts must be str or bytes, got {type(counts).__name__}")


def _check_mask_array(mask: Any, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != ndim:
        raise RLEError(f"{what} must be a {ndim}-D array, got shape {arr.shape}")
    n = int(np.prod(arr.shape[-2:]))
    if n > _MAX_PIXELS:
        raise RLEError(f"{what} has {n} pixels per mask; COCO RLE allows at most {_MAX_PIXELS}")
    # packbits reads any nonzero integer as 1, so bool and integer masks need no conversion pass
    return arr if arr.dtype.kind in "biu" else arr != 0


# ---------------------------------------------------------------------------------------------------------------
# runs <-> string (vectorised varint codec)
# ---------------------------------------------------------------------------------------------------------------


def _deltas(counts: np.ndarray, local: np.ndarray | None) -> np.ndarray:
    """Replace run i by run i - run (i - 2) for local index i > 2 (local=None: a single run list)."""
    x = counts.copy()
    if local is None:
        x[3:] -= counts[1:-2]
    else:
        sel = np.flatnonzero(local > 2)
        x[sel] -= counts[sel - 2]
    return x


def _varint_chars(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed int64 values -> (uint8 characters of all values concatenated, characters per value)."""
    magnitude = x ^ (x >> 63)  # ~x for negative values
    groups = np.searchsorted(_GROUP_THRESHOLDS, magnitude, side="right") + 1  # (m,)
    ends = np.cumsum(groups)
    total = int(ends[-1]) if len(ends) else 0
    # group index of every character within its value
    g = np.arange(total, dtype=np.int64) - np.repeat(ends - groups, groups)
    chars = (np.repeat(x, groups) >> (5 * g)) & 0x1F
    chars |= 0x20  # "more follows" on every group ...
    chars[ends - 1] &= 0x1F  # ... but the last of each value
    chars += 48
    return chars.astype(np.uint8), groups


def _show(byte: int) -> str:
    return repr(chr(byte)) if byte < 128 else repr(bytes([byte]))


class _Names:
    """Maps a position in concatenated strings (or runs) back to the RLE it came from, for error messages."""

    def __init__(self, names: Sequence[str], lengths: np.ndarray) -> None:
        self.names = names
        self.lengths = lengths
        self.ends = np.cumsum(lengths)

    def __call__(self, pos: int) -> tuple[str, int]:
        i = int(np.searchsorted(self.ends, pos, side="right"))
        return self.names[i], pos - int(self.ends[i] - self.lengths[i])


def _parse_varints(buf: np.ndarray, lengths: np.ndarray | None, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Characters of one or more concatenated counts strings -> (signed values, values per string).

    ``lengths`` gives the character length of each string (None: a single string). Errors name the string.
    """
    single = lengths is None
    if lengths is None:
        lengths = np.array([len(buf)], dtype=np.int64)
    v = buf - np.uint8(48)  # characters below '0' wrap to >= 208
    bad = v > 63
    if bad.any():
        pos = int(np.argmax(bad))
        name, off = _Names(names, lengths)(pos)
        raise RLEError(
            f"{name}: counts has invalid character {_show(buf[pos])} at position {off}; "
            "allowed characters are '0'..'o' (ASCII 48..111)"
        )
    last = v < 32  # bit 5 clear: last group of a value
    if single:
        if len(buf) and not last[-1]:
            raise RLEError(
                f"{names[0]}: counts is truncated: its last character {_show(buf[-1])} announces "
                "another varint group but the string ends"
            )
    else:
        seg_ends = np.cumsum(lengths)
        nonempty_ends = seg_ends[lengths > 0] - 1
        open_ends = nonempty_ends[~last[nonempty_ends]]
        if len(open_ends):
            name, _ = _Names(names, lengths)(int(open_ends[0]))
            raise RLEError(
                f"{name}: counts is truncated: its last character {_show(buf[open_ends[0]])} "
                "announces another varint group but the string ends"
            )
    tpos = np.flatnonzero(last)
    if single:
        per_seg = np.array([len(tpos)], dtype=np.int64)
    else:
        cum_last = np.zeros(len(buf) + 1, dtype=np.int64)
        np.cumsum(last, out=cum_last[1:])
        per_seg = cum_last[seg_ends] - cum_last[seg_ends - lengths]
    if len(tpos) == 0:
        return np.zeros(0, dtype=np.int64), per_seg
    groups = tpos.copy()
    groups[1:] -= tpos[:-1]
    groups[0] += 1
    if groups.max() > _MAX_GROUPS:
        j = int(np.argmax(groups > _MAX_GROUPS))
        name, off = _Names(names, lengths)(int(tpos[j]))
        raise RLEError(
            f"{name}: counts has a varint of {int(groups[j])} characters ending at position {off}; "
            f"at most {_MAX_GROUPS} are allowed"
        )
    starts = tpos - groups + 1
    g = np.arange(len(buf), dtype=np.int64) - np.repeat(starts, groups)
    # the groups of a value occupy disjoint bits, so their sum is the value: difference of a running sum at the
    # value ends (faster than np.add.reduceat; int64 wrap-around cancels in the differences)
    total = np.cumsum((v & 0x1F).astype(np.int64) << (5 * g))[tpos]
    x = total.copy()
    x[1:] -= total[:-1]
    # bit 4 of the last group is the sign: subtract 2**(5 * groups) (16 << (5 * groups - 4)) to sign-extend
    x -= (v[tpos] & 0x10).astype(np.int64) << (5 * groups - 4)
    return x, per_seg


def _undo_deltas(x: np.ndarray, per_seg: np.ndarray) -> np.ndarray:
    """Running sums along the even (from index 2) and odd chains of each string's values."""
    c = x.copy()
    if len(per_seg) == 1:
        np.cumsum(x[1::2], out=c[1::2])
        np.cumsum(x[2::2], out=c[2::2])
        return c
    # Segmented running sums without a per-segment loop: zero the other chain (and each segment's run 0),
    # take one global cumsum per chain and subtract its value at the segment's run 0.
    starts = (np.cumsum(per_seg) - per_seg)[per_seg > 0]
    odd = (_local_index(per_seg) & 1).astype(bool)
    y = np.where(odd, x, 0)
    z = x - y
    z[starts] = 0
    np.cumsum(y, out=y)
    np.cumsum(z, out=z)
    nonempty = per_seg[per_seg > 0]
    y -= np.repeat(y[starts], nonempty)
    z -= np.repeat(z[starts], nonempty)
    np.copyto(c, np.where(odd, y, z))
    c[starts] = x[starts]
    return c


def _parse_counts(buf: np.ndarray, lengths: np.ndarray | None, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Counts string(s) -> (non-negative run lengths of all strings concatenated, runs per string).

    Run lengths are only checked to be >= 0 here; callers check their sum (which bounds each of them).
    """
    x, per_seg = _parse_varints(buf, lengths, names)
    if len(x) == 0:
        return x, per_seg
    # |delta| < 2**32 keeps the running sums far from int64 overflow
    if x.min() < -_MAX_PIXELS or x.max() > _MAX_PIXELS:
        j = int(np.argmax(np.abs(x) > _MAX_PIXELS))
        name, local = _Names(names, per_seg)(j)
        raise RLEError(f"{name}: counts value {int(x[j])} at run {local} is out of range (|value| < 2**32)")
    c = _undo_deltas(x, per_seg)
    if c.min() < 0:
        j = int(np.argmax(c < 0))
        name, local = _Names(names, per_seg)(j)
        raise RLEError(f"{name}: counts decodes to negative run length {int(c[j])} at run {local}")
    return c, per_seg


def string_to_runs(counts: str | bytes) -> np.ndarray:
    """Parse a COCO counts string into its run lengths (int64, first run counts zeros); no size check."""
    buf = np.frombuffer(_counts_bytes(counts, "counts"), dtype=np.uint8)
    runs = _parse_counts(buf, None, ["counts"])[0]
    if len(runs) and runs.max() > _MAX_PIXELS:
        raise RLEError(f"counts decodes to run length {int(runs.max())}; run lengths are below 2**32")
    return runs


def runs_to_string(runs: Sequence[int] | np.ndarray) -> str:
    """Write run lengths (first run counts zeros) as a COCO counts string."""
    arr = np.asarray(runs)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise RLEError(f"runs must be a 1-D sequence of ints, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > _MAX_PIXELS):
        raise RLEError(f"run lengths must lie in 0..{_MAX_PIXELS}, got min {arr.min()} max {arr.max()}")
    if arr.size == 0:
        return ""
    chars, _ = _varint_chars(_deltas(arr, None))
    return chars.tobytes().decode("ascii")


# ---------------------------------------------------------------------------------------------------------------
# mask -> runs
# ---------------------------------------------------------------------------------------------------------------


_LE64 = np.dtype("<u8")


def _changes_at_distance(flat: np.ndarray, dist: int) -> np.ndarray:
    """Sorted indices j of a flat 0/1 array where ``flat[j] != flat[j - dist]`` (``flat[j - dist]`` is 0 for
    ``j < dist``).

    Works on packed bits: the array is packed 64 pixels to a word, XORed with itself shifted by ``dist`` bits,
    and only the (few) nonzero words are unpacked again, so per-pixel work is one ``np.packbits``.
    """
    total = len(flat)
    packed = np.packbits(flat, bitorder="little")  # bit j of the stream is pixel j; any nonzero counts as 1
    nw = (len(packed) + 7) // 8
    if len(packed) % 8 == 0 and packed.ctypes.data % 8 == 0:
        words = packed.view(_LE64)
    else:
        words = np.zeros(nw, dtype=_LE64)
        words.view(np.uint8)[: len(packed)] = packed
    q, s = divmod(dist, 64)
    x = words.copy()
    if q < nw:
        if s == 0:
            x[q:] ^= words[: nw - q]
        else:
            x[q:] ^= words[: nw - q] << np.uint64(s)
            x[q + 1 :] ^= words[: nw - q - 1] >> np.uint64(64 - s)
    # narrow down: nonzero words -> their nonzero bytes -> the set bits of those bytes
    nz_words = np.flatnonzero(x != 0)
    nz_bytes = x[nz_words].astype(_LE64, copy=False).view(np.uint8)
    nb = np.flatnonzero(nz_bytes != 0)
    # unpackbits gives 0/1 bytes; view them as bool, for which flatnonzero is much faster than for uint8
    bits = np.flatnonzero(np.unpackbits(nz_bytes[nb], bitorder="little").view(bool))
    byte_pos = nz_words[nb >> 3] * 64 + (nb & 7) * 8  # first pixel of each nonzero byte
    j = byte_pos[bits >> 3] + (bits & 7)
    return j[j < total] if total % 64 else j


def _change_keys(b: np.ndarray) -> np.ndarray:
    """Sorted keys ``i * h * w + p`` of the pixels p (column-major) of mask i that differ from pixel p - 1.

    Pixel -1 counts as 0, so a set first pixel is a change at p = 0. ``b``: (N, H, W) of bool or integers
    (nonzero is foreground), n = H * W > 0.
    """
    nmask, h, w = b.shape
    n = h * w
    bt = b.transpose(0, 2, 1)  # (N, W, H)
    first = np.flatnonzero(b[:, 0, 0]) * n  # first pixel set
    if bt.flags.c_contiguous and not b.flags.c_contiguous:
        # every mask is contiguous in column-major order: changes between neighbours in the flat pixels
        j = _changes_at_distance(bt.reshape(-1), 1)
        if nmask == 1:
            return j  # j = 0 exactly when the first pixel is set
        j = j[j % n != 0]  # pixel 0 of mask i was compared with the last pixel of mask i - 1
        keys = np.concatenate([j, first])
        keys.sort()
        return keys
    # C order: a pixel's column-major predecessor is the pixel above it, w places back in the flat array
    j = _changes_at_distance(b.reshape(-1), w)
    if nmask == 1:
        r, c = np.divmod(j, w)
        k_col = (c * h + r)[r > 0]
    else:
        i, rem = np.divmod(j, n)
        r, c = np.divmod(rem, w)
        k_col = (i * n + c * h + r)[r > 0]  # row 0 was compared with the previous mask (or nothing)
    parts = [k_col, first]
    if w > 1:
        # across a column boundary: (0, c + 1) follows (h - 1, c)
        top, bottom = b[:, 0, 1:], b[:, -1, :-1]
        if top.dtype != np.bool_:
            top, bottom = top != 0, bottom != 0
        i, c = np.divmod(np.flatnonzero(top != bottom), w - 1)
        parts.append(i * n + (c + 1) * h)
    keys = np.concatenate(parts)
    keys.sort()
    return keys


def _encode_masks(b: np.ndarray) -> tuple[list[RLE], np.ndarray, np.ndarray]:
    """(N, H, W) masks -> (N RLE dicts, runs of all masks back to back, runs per mask), in one vectorised pass."""
    nmask, h, w = b.shape
    n = h * w
    size = [h, w]
    if nmask == 0 or n == 0:
        return (
            [{"size": list(size), "counts": "0"} for _ in range(nmask)],
            np.zeros(nmask, np.int64),
            np.ones(nmask, np.int64),
        )
    keys = _change_keys(b)
    # Runs are the gaps between consecutive change points; mask i's runs span [i * n, (i + 1) * n], so adding
    # every multiple of n as a point and differencing yields all runs of all masks back to back.
    points = np.empty(len(keys) + nmask + 1, dtype=np.int64)
    if nmask == 1:
        points[0], points[1:-1], points[-1] = 0, keys, n
        counts = points[1:] - points[:-1]
        chars, _ = _varint_chars(_deltas(counts, None))
        return [{"size": size, "counts": chars.tobytes().decode("ascii")}], counts, np.array([len(counts)])
    points[: len(keys)] = keys
    points[len(keys) :] = np.arange(nmask + 1, dtype=np.int64) * n
    points.sort()
    counts = points[1:] - points[:-1]
    runs_per_mask = np.bincount(keys // n, minlength=nmask) + 1
    run_start = np.cumsum(runs_per_mask) - runs_per_mask
    local = np.arange(len(counts)) - np.repeat(run_start, runs_per_mask)
    chars, groups = _varint_chars(_deltas(counts, local))
    char_end = np.cumsum(np.add.reduceat(groups, run_start)).tolist()
    text = chars.tobytes().decode("ascii")
    out = []
    start = 0
    for end in char_end:
        out.append({"size": list(size), "counts": text[start:end]})
        start = end
    return out, counts, runs_per_mask


def _encode_chunks(b: np.ndarray) -> tuple[list[RLE], np.ndarray, np.ndarray]:
    # chunks of ~8M pixels keep the packed intermediates cache-sized (measured fastest at 16-32 DAVIS masks)
    chunk = max(1, _BATCH_PIXELS // max(1, b.shape[1] * b.shape[2]))
    if b.shape[0] <= chunk:
        return _encode_masks(b)
    parts = [_encode_masks(b[start : start + chunk]) for start in range(0, b.shape[0], chunk)]
    rles = [r for p in parts for r in p[0]]
    return rles, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def encode(mask: Any) -> RLE:
    """Encode a 2-D mask (any dtype; nonzero is foreground; any memory layout) as ``{"size", "counts": str}``."""
    b = _check_mask_array(mask, 2, "mask")
    return _encode_masks(b[None])[0][0]


def encode_batch(masks: Any) -> list[RLE]:
    """Encode an (N, H, W) stack of masks in one vectorised pass; returns N RLE dicts in order."""
    return _encode_chunks(_check_mask_array(masks, 3, "masks"))[0]


def encode_batch_with_stats(masks: Any) -> tuple[list[RLE], np.ndarray, np.ndarray]:
    """:func:`encode_batch` plus each mask's area (int64, (N,)) and :func:`bbox` (float64, (N, 4)).

    The statistics come from the runs found while encoding, so nothing is parsed back from the strings.
    """
    b = _check_mask_array(masks, 3, "masks")
    rles, runs, per = _encode_chunks(b)
    hs = np.full(len(per), b.shape[1], dtype=np.int64)
    ws = np.full(len(per), b.shape[2], dtype=np.int64)
    return rles, _areas(runs, per), _boxes(hs, ws, runs, per)


# ---------------------------------------------------------------------------------------------------------------
# runs -> mask, area, bbox
# ---------------------------------------------------------------------------------------------------------------


def _rle_fields(rle: Any, where: str) -> tuple[int, int, Any]:
    if not isinstance(rle, Mapping):
        raise RLEError(f"{where}: expected a dict with 'size' and 'counts', got {type(rle).__name__}")
    missing = [k for k in ("size", "counts") if k not in rle]
    if missing:
        raise RLEError(f"{where}: missing key(s) {missing}; an RLE is {{'size': [h, w], 'counts': str}}")
    h, w = _check_size(rle["size"], where)
    return h, w, rle["counts"]


def _runs_from_list(counts: Any, where: str) -> np.ndarray:
    """Uncompressed counts (list of run lengths) -> int64 runs."""
    try:
        arr = np.asarray(counts)
    except (ValueError, TypeError) as e:
        raise RLEError(f"{where}: counts list is not a flat list of ints ({e})") from None
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise RLEError(f"{where}: uncompressed counts must be a flat list of ints, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > _MAX_PIXELS):
        raise RLEError(f"{where}: run lengths must lie in 0..{_MAX_PIXELS}, got min {arr.min()} max {arr.max()}")
    return arr


def _check_total(runs_sum: int, h: int, w: int, where: str) -> None:
    if runs_sum != h * w:
        raise RLEError(f"{where}: run lengths sum to {runs_sum} but size {h}x{w} has {h * w} pixels")


def _runs_of(rle: Any, where: str = "rle") -> tuple[int, int, np.ndarray]:
    """Validated (h, w, runs) of one RLE dict."""
    h, w, counts = _rle_fields(rle, where)
    if isinstance(counts, (list, tuple, np.ndarray)):
        runs = _runs_from_list(counts, where)
    else:
        buf = np.frombuffer(_counts_bytes(counts, where), dtype=np.uint8)
        runs = _parse_counts(buf, None, [where])[0]
    _check_total(int(runs.sum()), h, w, where)
    return h, w, runs


def _runs_of_many(rles: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated (heights, widths, runs of all RLEs back to back, runs per RLE); strings parsed in one pass."""
    names = [f"rles[{i}]" for i in range(len(rles))]
    fields = [_rle_fields(r, names[i]) for i, r in enumerate(rles)]
    hs = np.array([f[0] for f in fields], dtype=np.int64)
    ws = np.array([f[1] for f in fields], dtype=np.int64)
    if any(isinstance(f[2], (list, tuple, np.ndarray)) for f in fields):
        parts = [_runs_of(r, names[i])[2] for i, r in enumerate(rles)]
        per = np.array([len(p) for p in parts], dtype=np.int64)
        return hs, ws, np.concatenate(parts) if parts else np.zeros(0, np.int64), per
    chunks = [_counts_bytes(f[2], names[i]) for i, f in enumerate(fields)]
    buf = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
    runs, per = _parse_counts(buf, lengths, names)
    cum = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum(runs, out=cum[1:])
    run_end = np.cumsum(per)
    totals = cum[run_end] - cum[run_end - per]
    for i in np.flatnonzero(totals != hs * ws)[:1]:
        _check_total(int(totals[i]), int(hs[i]), int(ws[i]), names[i])
    return hs, ws, runs, per


def _local_index(per: np.ndarray) -> np.ndarray:
    """Index of every run within its own RLE."""
    if len(per) == 1:
        return np.arange(per[0])
    return np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)


def _expand(runs: np.ndarray, per_mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Runs of N masks back to back -> (N, h, w) bool view of a column-major buffer."""
    flat = np.repeat((_local_index(per_mask) & 1).astype(bool), runs)  # odd runs are foreground
    return flat.reshape(len(per_mask), w, h).transpose(0, 2, 1)


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode an RLE dict (counts as str, bytes, or a list of run lengths) to an (h, w) bool mask.

    The result is Fortran-ordered, like pycocotools' (a transposed view of the column-major runs).
    """
    h, w, runs = _runs_of(rle)
    return _expand(runs, np.array([len(runs)]), h, w)[0]


def decode_batch(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Decode RLEs that share one size to an (N, h, w) bool array, parsing all counts in one vectorised pass.

    An empty sequence gives shape (0, 0, 0). Each mask in the result is Fortran-ordered (see :func:`decode`).
    """
    rles = list(rles)
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    hs, ws, runs, per = _runs_of_many(rles)
    odd = np.flatnonzero((hs != hs[0]) | (ws != ws[0]))
    if len(odd):
        i = int(odd[0])
        raise RLEError(
            f"rles[{i}]: size {[int(hs[i]), int(ws[i])]} differs from rles[0] size "
            f"{[int(hs[0]), int(ws[0])]}; decode_batch needs one size (use decode for mixed sizes)"
        )
    return _expand(runs, per, int(hs[0]), int(ws[0]))


def area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels, from the runs (no mask is built)."""
    _, _, runs = _runs_of(rle)
    return int(runs[1::2].sum())


def _areas(runs: np.ndarray, per: np.ndarray) -> np.ndarray:
    """Sum of the odd runs of each RLE (runs back to back, ``per`` runs each)."""
    fg = runs * (_local_index(per) & 1)
    cum = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum(fg, out=cum[1:])
    end = np.cumsum(per)
    return cum[end] - cum[end - per]


def area_batch(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Foreground pixels of each RLE (int64, shape (N,)); all counts parsed in one vectorised pass."""
    rles = list(rles)
    if not rles:
        return np.zeros(0, dtype=np.int64)
    _, _, runs, per = _runs_of_many(rles)
    return _areas(runs, per)


_U32 = 0xFFFFFFFF


def bbox(rle: Mapping[str, Any]) -> list[float]:
    """Bounding box ``[x, y, width, height]`` of the foreground, exactly as ``pycocotools.mask.toBbox``.

    Computed from the runs, no mask is built: each non-empty foreground run covers column-major pixels s..e;
    x is the column (pixel // h), y the row (pixel % h), and a run that crosses into another column spans every
    row. A mask without foreground runs gives ``[0, 0, 0, 0]``. pycocotools' quirks are kept for non-canonical
    counts that contain zero-length foreground runs only: ``[w, h, 2**32 - w + 1, 2**32 - h + 1]`` (uint32
    arithmetic); :func:`encode` never produces such counts.
    """
    h, w, runs = _runs_of(rle)
    m = (len(runs) // 2) * 2  # a trailing background run is ignored
    if m == 0:
        return [0.0, 0.0, 0.0, 0.0]
    ends = np.cumsum(runs[:m])
    length = runs[1:m:2]
    nonempty = length > 0
    last = ends[1::2][nonempty] - 1  # last pixel of each non-empty foreground run
    first = last - length[nonempty] + 1
    if len(last) == 0:
        xs, ys, xe, ye = w, h, 0, 0
    else:
        x0, y0 = np.divmod(first, h)
        x1, y1 = np.divmod(last, h)
        xs, xe = min(w, int(x0.min())), max(0, int(x1.max()))
        if np.any(x0 < x1):  # some run crosses a column boundary: every row is covered
            ys, ye = 0, h - 1
        else:
            ys, ye = min(h, int(y0.min())), max(0, int(y1.max()))
    return [float(xs), float(ys), float((xe - xs + 1) & _U32), float((ye - ys + 1) & _U32)]


def bbox_batch(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """:func:`bbox` of each RLE as a float64 (N, 4) array; all counts parsed in one vectorised pass."""
    rles = list(rles)
    if not rles:
        return np.zeros((0, 4), dtype=np.float64)
    return _boxes(*_runs_of_many(rles))


def _boxes(hs: np.ndarray, ws: np.ndarray, runs: np.ndarray, per: np.ndarray) -> np.ndarray:
    """:func:`bbox` of each RLE from its runs (back to back, ``per`` runs each) and its size."""
    out = np.zeros((len(per), 4), dtype=np.float64)
    local = _local_index(per)
    seg = np.repeat(np.arange(len(per)), per)
    pixels = hs * ws  # every mask's runs sum to its pixel count
    after = np.cumsum(runs) - np.repeat(np.cumsum(pixels) - pixels, per)  # pixel after each run, in its mask
    # every non-empty foreground (odd) run; pycocotools' m // 2 * 2 only drops a trailing background run
    sel = np.flatnonzero((local & 1 == 1) & (runs > 0))
    seg_s = seg[sel]
    last = after[sel] - 1
    first = last - runs[sel] + 1
    h_s = hs[seg_s]
    x0, y0 = np.divmod(first, h_s)
    x1, y1 = np.divmod(last, h_s)
    xs = ws.copy()
    ys = hs.copy()
    xe = np.zeros(len(per), dtype=np.int64)
    ye = np.zeros(len(per), dtype=np.int64)
    if len(sel):
        starts = np.flatnonzero(np.r_[True, seg_s[1:] != seg_s[:-1]])
        segs = seg_s[starts]
        xs[segs] = np.minimum(ws[segs], np.minimum.reduceat(x0, starts))
        xe[segs] = np.maximum.reduceat(x1, starts)
        ys[segs] = np.minimum(hs[segs], np.minimum.reduceat(y0, starts))
        ye[segs] = np.maximum.reduceat(y1, starts)
        crossing = np.unique(seg_s[x0 < x1])  # some run crosses a column boundary: every row is covered
        ys[crossing] = 0
        ye[crossing] = hs[crossing] - 1
    live = per >= 2
    out[live, 0] = xs[live]
    out[live, 1] = ys[live]
    out[live, 2] = (xe[live] - xs[live] + 1) & _U32
    out[live, 3] = (ye[live] - ys[live] + 1) & _U32
    return out
