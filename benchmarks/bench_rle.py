"""Benchmark rvos_batch.rle against pycocotools on real DAVIS 2017 val masks; writes the "## RLE" section of
benchmarks/RESULTS.md.

Run:  .venv/bin/python benchmarks/bench_rle.py [--every 10] [--batch 64] [--no-write]

Masks: every ``--every``-th frame of every video in shared/data/davis2017-val-osvos (beside the repository, or
$RVOS_SHARED_DATA), one bool mask per object present. Single-mask figures are the mean over masks of the best of
``--repeat`` timeit runs on the same mask (warm caches); batch figures time one call on a stack of ``--batch``
masks of the most common size, or one call per mask over that stack (the fair baseline for the batch path: every
mask comes cold from memory), and divide by the number of masks. pycocotools needs a Fortran-ordered uint8 array,
so its encode is timed both on a ready Fortran array ("excl.") and including ``np.asfortranarray`` from the
C-ordered bool mask ("incl.").
Results are checked to be identical before anything is timed.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import platform
import re
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from rvos_batch import rle

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def data_dir() -> Path:
    env = os.environ.get("RVOS_SHARED_DATA")
    return (Path(env) if env else ROOT.parent / "shared" / "data") / "davis2017-val-osvos"


def load_masks(every: int) -> list[np.ndarray]:
    """C-ordered (H, W) bool masks, one per object present in every ``every``-th frame."""
    davis = data_dir()
    if not davis.is_dir():
        sys.exit(f"real masks not found at {davis} (set RVOS_SHARED_DATA to the shared/data folder)")
    masks: list[np.ndarray] = []
    for video in sorted(p for p in davis.iterdir() if p.is_dir()):
        for f in sorted(video.glob("*.png"))[::every]:
            ids = np.array(Image.open(f))
            masks.extend(ids == k for k in np.unique(ids) if k != 0)
    return masks


def per_item_us(fn: Callable[[Any], Any], items: Sequence[Any], repeat: int, number: int = 3) -> float:
    """Mean over items of the best-of-``repeat`` time of ``fn(item)``, in microseconds."""
    total = 0.0
    for item in items:
        total += min(timeit.repeat(functools.partial(fn, item), number=number, repeat=repeat)) / number
    return total / len(items) * 1e6


def coco_area_bbox(rles: list[dict]) -> list[Any]:
    # pycocotools.mask.area overflows (uint8 length) on lists of 256 or more RLEs: call it on slices
    return [(mask_util.area(rles[i : i + 255]), mask_util.toBbox(rles[i : i + 255])) for i in range(0, len(rles), 255)]


def batch_us(fn: Callable[[], Any], n: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat)) / n * 1e6


def machine() -> str:
    model = "unknown CPU"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.2f} at start (shared machine)" if hasattr(os, "getloadavg") else ""
    return (
        f"{model}, nproc {usable}{load}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"pycocotools {getattr(mask_util, '__version__', None) or _dist_version('pycocotools')}"
    )


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def run(every: int, batch: int, repeat: int) -> tuple[list[tuple[str, float, float]], dict[str, Any]]:
    masks = load_masks(every)
    shapes = collections.Counter(m.shape for m in masks)
    fortran = [np.asfortranarray(m, dtype=np.uint8) for m in masks]
    ours = [rle.encode(m) for m in masks]
    theirs = [mask_util.encode(f) for f in fortran]
    assert [r["counts"] for r in ours] == [r["counts"].decode("ascii") for r in theirs], "encode differs"
    assert all(np.array_equal(rle.decode(r), m) for r, m in zip(ours, masks, strict=True)), "decode differs"
    assert [rle.area(r) for r in ours] == [int(mask_util.area(r)) for r in theirs], "area differs"
    assert [rle.bbox(r) for r in ours] == [mask_util.toBbox(r).tolist() for r in theirs], "bbox differs"

    shape, _ = shapes.most_common(1)[0]
    same = [i for i, m in enumerate(masks) if m.shape == shape][:batch]
    stack = np.stack([masks[i] for i in same])  # (N, H, W) C-ordered bool
    stack_f = np.asfortranarray(stack.transpose(1, 2, 0), dtype=np.uint8)  # pycocotools' (H, W, N) layout
    rles_b = [ours[i] for i in same]
    theirs_b = [theirs[i] for i in same]
    assert rle.encode_batch(stack) == rles_b
    assert np.array_equal(rle.decode_batch(rles_b), stack)
    n = len(same)

    rows = [
        (
            "encode, C-ordered bool mask (pycocotools incl. np.asfortranarray)",
            per_item_us(rle.encode, masks, repeat),
            per_item_us(lambda m: mask_util.encode(np.asfortranarray(m, dtype=np.uint8)), masks, repeat),
        ),
        (
            "encode, Fortran uint8 mask (pycocotools excl. np.asfortranarray)",
            per_item_us(rle.encode, fortran, repeat),
            per_item_us(mask_util.encode, fortran, repeat),
        ),
        ("decode", per_item_us(rle.decode, ours, repeat), per_item_us(mask_util.decode, theirs, repeat)),
        ("area", per_item_us(rle.area, ours, repeat), per_item_us(mask_util.area, theirs, repeat)),
        ("bbox", per_item_us(rle.bbox, ours, repeat), per_item_us(mask_util.toBbox, theirs, repeat)),
        (
            f"encode, one call per mask over the {n} batch masks (cold caches; pycocotools excl. conversion)",
            batch_us(lambda: [rle.encode(m) for m in stack], n, repeat),
            batch_us(lambda: [mask_util.encode(np.asfortranarray(m)) for m in stack_f.transpose(2, 0, 1)], n, repeat),
        ),
        (
            f"encode_batch, ({n}, H, W) C bool (pycocotools: (H, W, {n}) Fortran uint8, excl. conversion)",
            batch_us(lambda: rle.encode_batch(stack), n, repeat),
            batch_us(lambda: mask_util.encode(stack_f), n, repeat),
        ),
        (
            "encode_batch_with_stats: RLEs + areas + boxes (pycocotools: encode, area, toBbox, excl. conversion)",
            batch_us(lambda: rle.encode_batch_with_stats(stack), n, repeat),
            batch_us(lambda: coco_area_bbox(mask_util.encode(stack_f)), n, repeat),
        ),
        (
            "encode_batch incl. conversion (pycocotools: np.asfortranarray of the (N, H, W) stack)",
            batch_us(lambda: rle.encode_batch(stack), n, repeat),
            batch_us(lambda: mask_util.encode(np.asfortranarray(stack.transpose(1, 2, 0), dtype=np.uint8)), n, repeat),
        ),
        (
            f"decode, one call per RLE over the {n} batch RLEs",
            batch_us(lambda: [rle.decode(r) for r in rles_b], n, repeat),
            batch_us(lambda: [mask_util.decode(r) for r in theirs_b], n, repeat),
        ),
        (
            f"decode_batch, {n} masks (pycocotools: decode of the list)",
            batch_us(lambda: rle.decode_batch(rles_b), n, repeat),
            batch_us(lambda: mask_util.decode(theirs_b), n, repeat),
        ),
        (
            "area_batch / bbox_batch (pycocotools: area / toBbox of the list)",
            batch_us(lambda: (rle.area_batch(rles_b), rle.bbox_batch(rles_b)), n, repeat),
            batch_us(lambda: coco_area_bbox(theirs_b), n, repeat),
        ),
    ]
    runs = np.array([len(rle.string_to_runs(r["counts"])) for r in ours])
    info = {
        "masks": len(masks),
        "frames_every": every,
        "shapes": ", ".join(f"{w}x{h}: {c}" for (h, w), c in shapes.most_common()),
        "batch": f"{n} masks of {shape[1]}x{shape[0]}",
        "runs": f"median {int(np.median(runs))}, max {int(runs.max())} runs per mask",
    }
    return rows, info


def table(rows: list[tuple[str, float, float]]) -> str:
    lines = [
        "| operation (per mask) | rvos_batch.rle (us) | pycocotools (us) | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, ours, theirs in rows:
        lines.append(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f}x |")
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or append) the '## RLE' section of RESULTS.md, leaving every other section as it is."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## RLE\n.*?(?=^## |\Z)", re.M | re.S)
    section = text.rstrip("\n") + "\n\n"
    new = pattern.sub(lambda _: section, old, count=1) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}.tmp")
    tmp.write_text(new.rstrip("\n") + "\n")
    os.replace(tmp, RESULTS)  # other benchmarks update their own sections of the same file


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=int, default=10, help="use every N-th frame of each video (default 10)")
    p.add_argument("--batch", type=int, default=64, help="masks in the batch stack (default 64)")
    p.add_argument("--repeat", type=int, default=5, help="timeit repeats; the best is kept (default 5)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)

    host = machine()
    rows, info = run(args.every, args.batch, args.repeat)
    command = ".venv/bin/python benchmarks/bench_rle.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    body = table(rows)
    text = "\n".join(
        [
            "## RLE",
            "",
            "COCO compressed RLE (`rvos_batch/rle.py`, pure numpy) against pycocotools on real DAVIS 2017 val masks.",
            "Counts, decoded masks, areas and boxes were checked identical before timing.",
            "",
            f"- Machine: {host}",
            f"- Command: `{command}`",
            f"- Data: {info['masks']} object masks from every {info['frames_every']}th frame ({info['shapes']}); "
            f"{info['runs']}; batch rows: {info['batch']}.",
            "- Single-mask rows: mean over masks of the best of the timeit repeats on that mask (warm caches); rows",
            "  over the batch: best of the repeats of the whole loop or batch call, divided by the number of masks.",
            "",
            body,
        ]
    )
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"\nwrote the '## RLE' section of {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
