"""Auto-levels' cost (``label --auto-levels 0.6``): the stretch alone, and the shipped one-shot model alone with and
without it; writes the "## Auto-levels" section of benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_levels.py [--steps 12] [--repeat 3] [--no-write]

The frames are bench_appearance.py's moving blobs with their contrast cut to a third about mid-grey, so every frame
is stretched. ``auto_levels`` alone: each batch of ``--batch`` frames at the one-shot model's input size, best of
``--repeat`` runs of ``--steps`` calls. Model alone as in bench_appearance.py (``benchkit.model_alone``: upload, the
levels, the model step, the appearance check and its filter, the state update; 5 prompted objects per video), with
``PredictConfig.levels`` None and LevelsConfig(), and with None and ``predictor.MIN_PROB`` set to 0: without the
flush of tiny probabilities, the confident background of these dim frames gives denormal floats, which CPUs process
many times slower. The settings alternate so that load on a shared machine falls on all. On the CPU and, where there
is one, the GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import benchkit
import torch
from bench_appearance import frames_of

from rvos_batch import predictor
from rvos_batch.levels import LevelsConfig, LevelsState, auto_levels
from rvos_batch.predictor import PredictConfig


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchkit.add_model_alone_options(p)
    args = benchkit.parse(p, argv)
    host = benchkit.machine()
    print(host, flush=True)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    what = ""
    for device in devices:
        model, what = benchkit.shipped_model("one-shot", device)
        size = model.config.input_size
        frames = (128 + (frames_of(size, 8).float() - 128) / 3).round().to(torch.uint8)  # a third of the contrast
        for batch in args.batch:
            x = frames[:batch].to(device).float() / 255
            state, config = LevelsState.empty(batch, device), LevelsConfig()
            alone = float("inf")
            for _ in range(args.repeat):
                auto_levels(x, state, config)
                benchkit.sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    auto_levels(x, state, config)
                benchkit.sync(device)
                alone = min(alone, (time.perf_counter() - t0) / (args.steps * batch) * 1e3)
            best: dict[str, float] = {}
            flush = predictor.MIN_PROB
            for _ in range(args.repeat):
                for name, levels, min_prob in (("without", None, flush), ("with", config, flush),
                                               ("no flush", None, 0.0)):
                    predictor.MIN_PROB = min_prob
                    cfg = PredictConfig.for_device(device, max_batch_videos=batch, levels=levels)
                    fps, _ = benchkit.model_alone(model, cfg, batch, frames, args.steps, objects=5)
                    best[name] = max(best.get(name, 0.0), fps)
            predictor.MIN_PROB = flush
            f0, f1, f2 = best["without"], best["with"], best["no flush"]
            rows.append((device, batch, alone, f0, f1, f2))
            print(f"{device} batch {batch}: auto_levels alone {alone:.2f} ms per frame; model alone {f0:.1f} -> "
                  f"{f1:.1f} frames/s ({1e3 / f1 - 1e3 / f0:+.2f} ms per frame); without the flush {f2:.1f}",
                  flush=True)
    if args.no_write:
        return 0
    lines = [
        "## Auto-levels",
        "",
        "`label --auto-levels 0.6` (`rvos_batch.levels`): the stretch alone (`auto_levels` on a batch of frames at "
        "the one-shot model's input size: two quantiles over a strided sample, the moving levels, the stretch), "
        "and the shipped one-shot model alone (`benchkit.model_alone`, with the appearance check and its filter, "
        "5 objects per video) without and with it, and without it and without the flush of probabilities under "
        "`predictor.MIN_PROB` (set to 0), which turns the confident background of such frames into denormal floats. "
        "The frames have a third of their contrast, so every one is stretched. Best of the repeats; the settings "
        "alternate.",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_levels.py', argv)}`",
        f"- Model: one-shot: {what}",
        "",
        "| device | videos per step | `auto_levels` alone, ms per frame | frames/s without | frames/s with | "
        "wall ms per frame added | frames/s without, no flush |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {d} | {b} | {a:.2f} | {f0:.1f} | {f1:.1f} | {1e3 / f1 - 1e3 / f0:+.2f} | {f2:.1f} |"
          for d, b, a, f0, f1, f2 in rows],
    ]
    if "cuda" not in devices:
        lines += ["", "- No GPU was available: the GPU rows were not measured. On CUDA the same command adds them."]
    benchkit.write_section("Auto-levels", "\n".join(lines))
    print("wrote the 'Auto-levels' section of", benchkit.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
