"""The appearance check's cost: the shipped models alone, with and without the check (and, one-shot, its guided
filter and its levels); writes the "## Appearance check" section of benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_appearance.py [--steps 12] [--repeat 3] [--no-write]

Model alone as in bench_model.py (``benchkit.model_alone``: a BatchSession stepping ``--batch`` videos together,
upload, model step, state update, no decoding, no masks), each shipped model at its input size (one-shot: 5
prompted objects per video; zero-shot: all 8 slots), on the CPU and, where there is one, the GPU. Each
configuration is the best of ``--repeat`` runs of ``--steps`` steps; the configurations alternate so that load
on a shared machine falls on all of them. The guided filter and the check's levels run in one-shot sessions only, so
the zero-shot model is measured without the check and with it. The frames are five coloured ellipses moving over a
noisy background, so the check has masks, rings and colours to work on; their levels span more than 0.6, so the
levels are measured (two quantiles per frame) but stretch nothing, as on most footage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import benchkit
import numpy as np
import torch

from rvos_batch.appearance import AppearanceConfig
from rvos_batch.predictor import PredictConfig


def frames_of(size: tuple[int, int], count: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, h, w) uint8: coloured blobs moving over a textured background."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(count):
        img = (rng.random((h, w, 3)) * 40 + np.array([60, 120, 90])).astype(np.float32)
        for k in range(5):
            cy, cx = h * (0.3 + 0.1 * k), w * (0.15 + 0.17 * k) + 3 * t
            blob = ((yy - cy) / (0.12 * h)) ** 2 + ((xx - cx) / (0.07 * w)) ** 2 < 1
            img[blob] = np.array([40 * k + 40, 200 - 30 * k, 60 + 35 * k])
        out.append(torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1))
    return torch.stack(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchkit.add_model_alone_options(p)
    args = benchkit.parse(p, argv)
    host = benchkit.machine()
    print(host, flush=True)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    models = []
    for device, mode in [(d, m) for d in devices for m in ("one-shot", "zero-shot")]:
        model, what = benchkit.shipped_model(mode, device)
        size = model.config.input_size
        models.append(f"{mode}: {what}, input {size[0]}x{size[1]}")
        frames = frames_of(size, 8)
        settings: list[tuple[str, AppearanceConfig | None]] = [
            ("without", None), ("with", AppearanceConfig(filter=0, levels=None))]
        if mode == "one-shot":
            settings.append(("filter", AppearanceConfig(levels=None)))  # the check and its guided filter
            settings.append(("levels", AppearanceConfig()))  # the default: and the check's levels
        for batch in args.batch:
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.repeat):
                for name, appearance in settings:
                    cfg = PredictConfig.for_device(device, max_batch_videos=batch, appearance=appearance)
                    fps, cpu_ms = benchkit.model_alone(model, cfg, batch, frames, args.steps, objects=5)
                    if name not in best or fps > best[name][0]:
                        best[name] = (fps, cpu_ms)
            (f0, c0), (f1, c1) = best["without"], best["with"]
            f2, c2 = best.get("filter", (None, None))
            f3, c3 = best.get("levels", (None, None))
            rows.append((device, mode, batch, f0, f1, f2, f3, c0, c1, c2, c3))
            extra = "" if f2 is None or f3 is None else (
                f", with the filter {f2:.1f} (+{1e3 / f2 - 1e3 / f0:.2f} ms, CPU ms {c2:.1f}), and the levels "
                f"{f3:.1f} (+{1e3 / f3 - 1e3 / f0:.2f} ms, CPU ms {c3:.1f})")
            print(f"{device} {mode} batch {batch}: {f0:.1f} -> {f1:.1f} frames/s, +{1e3 / f1 - 1e3 / f0:.2f} ms per "
                  f"frame (CPU ms per frame {c0:.1f} -> {c1:.1f}){extra}", flush=True)
    if args.no_write:
        return 0
    lines = [
        "## Appearance check",
        "",
        "The shipped models alone (`benchkit.model_alone`: upload, model step, state update; no decoding, no "
        "masks; one-shot with 5 objects per video), without the appearance check, with it "
        "(`rvos_batch.appearance`: histograms, the ring, the leave-out test and the refinement, all on the model's "
        "device at its input size; `--appearance-filter 0 --appearance-levels 0`), and, one-shot, with it and its "
        "guided filter (radius 4, fitted at half size; `--appearance-levels 0`) and with both and the check's levels "
        "(the default: each frame's two quantiles, the moving levels; these frames span more than 0.6, so nothing is "
        "stretched). Best of the repeats; the settings alternate. Wall ms per frame added is against the run "
        "without the check.",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_appearance.py', argv)}`",
        *[f"- Model, {m}" for m in dict.fromkeys(models)],
        "",
        "| device | model | videos per step | frames/s without | frames/s with | frames/s with the filter | frames/s "
        "with the filter and levels | wall ms per frame added: check / and filter / and levels | CPU ms per frame "
        "without / with / with the filter / and levels |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {d} | {m} | {b} | {f0:.1f} | {f1:.1f} | {_num(f2, '.1f')} | {_num(f3, '.1f')} | "
          f"{1e3 / f1 - 1e3 / f0:+.2f} / {_num(None if f2 is None else 1e3 / f2 - 1e3 / f0, '+.2f')} / "
          f"{_num(None if f3 is None else 1e3 / f3 - 1e3 / f0, '+.2f')} | {c0:.1f} / {c1:.1f} / {_num(c2, '.1f')} / "
          f"{_num(c3, '.1f')} |"
          for d, m, b, f0, f1, f2, f3, c0, c1, c2, c3 in rows],
    ]
    if "cuda" not in devices:
        lines += ["", "- No GPU was available: the GPU rows were not measured. On CUDA the same command adds them."]
    benchkit.write_section("Appearance check", "\n".join(lines))
    print("wrote the 'Appearance check' section of", benchkit.RESULTS)
    return 0


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


if __name__ == "__main__":
    sys.exit(main())
