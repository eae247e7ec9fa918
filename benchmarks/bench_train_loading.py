"""Training's clip loading against its step: how long `rvos-batch train` spends decoding and augmenting clips,
with and without `--workers`, beside the time of one training step; writes the "## Training clip loading"
section of benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_train_loading.py [--size 256x448] [--batches 24] [--no-write]

The clips are what `train` loads (`rvos_batch.vosdata.ClipDataset`: 5-frame clips, a batch of 4, the paper's
affine and flip, recolouring) from a synthetic DAVIS folder of real JPEGs (`rvos-batch synth`, 8 videos of 24
frames, written to a temporary folder). Loading is measured twice per setting: the first pass decodes every video
it touches (each worker process decodes and keeps its own copy), the second reads from that cache, as the
rest of a run does. The step is a one-shot stage-2 step with the appearance check (`train.clip_loss`, backward and
Adam) of the shipped configuration at the same size, on the CPU and, where there is one, on the GPU: where the step
is shorter than a batch's loading, `--workers` is what keeps the device busy.

The step is timed from untrained weights and from the shipped one-shot model's (the fine-tuning start of its
last runs), each with the loss's logits clamped to +-20 (as `train` runs: `train.LOSS_LOGIT_CLAMP`) and without.
Unclamped, a trained model's confident pixels give vanishing gradients that are denormal floats, which the CPU
processes many times slower.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import benchkit
import torch

from rvos_batch import train
from rvos_batch.cli import size_arg
from rvos_batch.model.rvos import RVOS
from rvos_batch.synth import SynthConfig, write_dataset
from rvos_batch.train import TrainConfig, clip_batches, clip_loss
from rvos_batch.vosdata import ClipDataset, list_videos


def loading(videos: list, size: tuple[int, int], batches: int, workers: int) -> tuple[float, float]:
    """(ms per batch on a first pass, ms per batch warm) over ``batches`` batches of 4 clips."""
    data = ClipDataset(videos, size, 5, 5, augment=True, length=2 * batches * 4, seed=0, colour=True)

    def timed(it: Iterator[Any], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        return (time.perf_counter() - t0) * 1e3 / n

    first = timed(iter(clip_batches(data, 4, 0, batches, workers)), batches)  # decodes as it goes
    it = iter(clip_batches(data, 4, 0, 2 * batches, workers))  # fresh workers: warm their caches, then time
    timed(it, batches)
    return first, timed(it, batches)


def step_ms(videos: list, size: tuple[int, int], device: str, steps: int, weights: str, clamp: bool) -> float:
    """Median ms of a one-shot stage-2 training step (with the appearance check) of the shipped configuration,
    from ``weights`` ("untrained" or "shipped"), with the loss's logits clamped as ``train`` does, or not."""
    if weights == "shipped":
        model, _ = benchkit.shipped_model("one-shot", device)
        model.config = dataclasses.replace(model.config, input_size=size)
    else:
        torch.manual_seed(0)
        model = RVOS(dataclasses.replace(benchkit.SHIPPED["one-shot"], input_size=size)).to(device)
    model.train()
    saved_clamp = train.LOSS_LOGIT_CLAMP
    train.LOSS_LOGIT_CLAMP = saved_clamp if clamp else math.inf
    try:
        return _median_step(model, videos, size, device, steps)
    finally:
        train.LOSS_LOGIT_CLAMP = saved_clamp


def _median_step(model: RVOS, videos: list, size: tuple[int, int], device: str, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    cfg = TrainConfig(data="-", out="-", mode="one-shot", stage=2, appearance_check=True)
    data = ClipDataset(videos, size, 5, 5, augment=True, length=(steps + 1) * 4, seed=0, colour=True)
    times = []
    for i, batch in enumerate(clip_batches(data, 4, 0, steps + 1)):
        batch = {k: v.to(device) for k, v in batch.items()}
        benchkit.sync(device)
        t0 = time.perf_counter()
        loss = clip_loss(model, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        benchkit.sync(device)
        if i:  # the first step warms up
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=size_arg, default=(256, 448), metavar="HxW")
    p.add_argument("--batches", type=int, default=24)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--steps", type=int, default=4)
    args = benchkit.parse(p, argv)
    host = benchkit.machine()
    print(host, flush=True)
    size = tuple(args.size)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, SynthConfig(videos=8, frames=24, seed=0))
        videos = list_videos(root, None)
        rows = []
        for workers in args.workers:
            first, warm = loading(videos, size, args.batches, workers)
            rows.append((workers, first, warm))
            print(f"workers {workers}: {first:.1f} ms per batch first pass, {warm:.1f} warm", flush=True)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        steps = []
        for device in devices:
            for weights in ("untrained", "shipped"):
                for clamp in (True, False):
                    ms = step_ms(videos, size, device, args.steps, weights, clamp)
                    steps.append((device, weights, clamp, ms))
                    print(f"{device}, {weights} weights, logits {'clamped' if clamp else 'not clamped'}: {ms:.0f} "
                          "ms per training step", flush=True)
    if args.no_write:
        return 0
    lines = [
        "## Training clip loading",
        "",
        "What `rvos-batch train` spends per batch (4 clips of 5 frames, the paper's augmentation and recolouring) "
        f"loading clips at {size[0]}x{size[1]} from a synthetic DAVIS folder of real JPEGs, with `--workers N` "
        "worker processes or in the training process (0), beside one one-shot stage-2 training step with the "
        "appearance check (`train.clip_loss`, backward, Adam) of the shipped configuration at that size. The "
        "first pass decodes the videos; warm reads each worker's cache, as the rest of a run does.",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_train_loading.py', argv)}`",
        "",
        "| `--workers` | ms per batch, first pass | ms per batch, warm |",
        "|---:|---:|---:|",
        *[f"| {w} | {a:.1f} | {b:.1f} |" for w, a, b in rows],
        "",
        "| device | weights | loss's logits | ms per training step |",
        "|---|---|---|---:|",
        *[f"| {d} | {w} | {'clamped (as `train` runs)' if f else 'not clamped'} | {ms:.0f} |" for d, w, f, ms in steps],
    ]
    inline = next((b for w, _, b in rows if w == 0), None)
    if inline is not None:
        lines += [""] + [f"- Loading in the training process (warm) is {100 * inline / ms:.0f}% of a {d} step "
                         f"({w} weights)." for d, w, f, ms in steps if f]
    for d, w, f, ms in steps:
        if f:
            kept = next(k for d2, w2, f2, k in steps if (d2, w2, f2) == (d, w, False))
            lines.append(f"- {d}, {w} weights: the clamp makes a step {kept / ms:.2f}x as fast.")
    if "cuda" not in devices:
        lines += ["- No GPU was available: the GPU step was not measured. On CUDA the same command adds it."]
    benchkit.write_section("Training clip loading", "\n".join(lines))
    print("wrote the 'Training clip loading' section of", benchkit.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
