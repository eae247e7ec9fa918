"""Batched RLE with torch (rvos_batch.rle_torch) against rvos_batch.rle (numpy) and pycocotools on real DAVIS masks;
writes the "## RLE with torch" section of benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_rle_torch.py [--batch 64] [--no-write]

The masks are stacks of ``--batch`` real DAVIS 2017 val object masks of the most common size (every ``--every``-th
frame). Each encoder gets the masks where it would find them: pycocotools a Fortran uint8 (H, W, N) array,
rvos_batch.rle a C bool (N, H, W) array, rle_torch a bool tensor on the device (CPU here; on CUDA also the GPU,
where the masks stay and only the characters come back). Strings, areas and boxes are checked identical before
timing; figures are the best of ``--repeat`` calls, per mask.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Sequence

import benchkit
import numpy as np
import torch
from bench_rle import load_masks
from pycocotools import mask as mask_util

from rvos_batch import rle, rle_torch


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=7)
    args = benchkit.parse(p, argv)
    host = benchkit.machine()
    print(host, flush=True)
    masks = load_masks(args.every)
    sizes: dict[tuple[int, int], list[np.ndarray]] = {}
    for m in masks:
        sizes.setdefault(m.shape, []).append(m)
    size, group = max(sizes.items(), key=lambda kv: len(kv[1]))
    stack = np.stack(group[: args.batch])
    n = len(stack)
    fortran = np.asfortranarray(stack.transpose(1, 2, 0).astype(np.uint8))
    want, want_area, want_box = rle.encode_batch_with_stats(stack)
    coco = mask_util.encode(fortran)
    assert [r["counts"] for r in want] == [c["counts"].decode() for c in coco]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    tensors = {d: torch.from_numpy(stack).to(d) for d in devices}
    for d, t in tensors.items():
        got, area, box = rle_torch.encode_batch_with_stats(t)
        assert [r["counts"] for r in got] == [r["counts"] for r in want] and np.array_equal(area, want_area)
        assert np.array_equal(box, want_box), d

    def best_us(fn) -> float:
        return min(timeit.repeat(fn, number=1, repeat=args.repeat)) / n * 1e6

    rows = [
        ("pycocotools encode + area + toBbox, Fortran uint8 (H, W, N)",
         best_us(lambda: (lambda r: (mask_util.area(r), mask_util.toBbox(r)))(mask_util.encode(fortran)))),
        ("rvos_batch.rle.encode_batch_with_stats, C bool (N, H, W)",
         best_us(lambda: rle.encode_batch_with_stats(stack))),
    ]
    for d, t in tensors.items():
        def run(t=t, d=d) -> None:
            rle_torch.encode_batch_with_stats(t)
            if d == "cuda":
                torch.cuda.synchronize()
        run()
        rows.append((f"rvos_batch.rle_torch.encode_batch_with_stats, bool tensor on {d}", best_us(run)))
    for name, us in rows:
        print(f"{name}: {us:.1f} us per mask", flush=True)
    if args.no_write:
        return 0
    base = rows[0][1]
    lines = [
        "## RLE with torch",
        "",
        "Batched COCO RLE of many masks at once with torch (`rvos_batch/rle_torch.py`; run lengths, delta and "
        "varint coding, areas and boxes as tensor operations on the masks' device), byte-identical to "
        "`rvos_batch.rle` and pycocotools (checked before timing). Per mask, best of the repeats of one batch call.",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_rle_torch.py', argv)}`",
        f"- Masks: {n} real DAVIS 2017 val object masks of {size[0]}x{size[1]} (every {args.every}th frame)",
        "",
        "| encoder (strings + areas + boxes) | us per mask | vs pycocotools |",
        "|---|---:|---:|",
        *[f"| {name} | {us:.1f} | {base / us:.2f}x |" for name, us in rows],
    ]
    if "cuda" not in devices:
        lines += ["", "- No GPU was available: the GPU row was not measured. On CUDA the same command adds it (the "
                  "masks stay on the device; only the RLE characters, areas and boxes are copied back)."]
    benchkit.write_section("RLE with torch", "\n".join(lines))
    print("wrote the 'RLE with torch' section of", benchkit.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
