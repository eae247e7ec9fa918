"""Model-alone throughput (frames/s) of RVOS for the paper's configuration and the shipped one; writes the
"## Model throughput" section of benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_model.py [--device cuda] [--no-write]

"Model alone" is what the labeling worker's BatchSession does per step without decoding or masks: ``batch``
videos stepped together (upload of uint8 frames, encoder once per frame, ConvLSTM decoder once per slot, state
update), timed over ``--steps`` steps after warm-up, with a device sync at both ends. Each figure is the best of
``--repeat`` runs (the machine is shared; the best run is the least disturbed one). One-shot runs decode only as
many slots as the video has objects (``--objects``). Zero-shot decodes all slots.

Configurations: paper = ResNet-101, H = 128, 10 slots, 256x448, zero-shot (untrained weights: speed does not
depend on them); shipped = MobileNetV2, H = 64, 5 slots, zero-shot at 128x224 and one-shot (with the
refinement head) at 240x424 (the shipped checkpoints when rvos_batch/assets/models holds them). Variants: fp32;
bf16 = bfloat16 autocast + channels_last;
compile = bf16 + torch.compile of the encoder and the per-slot decoder (``--compile-mode``, CUDA graphs with
"reduce-overhead") with a fixed batch. On CUDA the peak GPU memory per video in the batch is reported too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import benchkit
import torch

from rvos_batch.predictor import PredictConfig


@dataclass
class Row:
    config: str
    mode: str
    variant: str
    batch: int
    slots: int
    fps: float
    runs: list[float]
    cpu_ms: list[float]
    mem_per_video_mib: float | None


def variant_config(variant: str, device: str, batch: int, compile_mode: str) -> PredictConfig:
    if variant == "fp32":
        return PredictConfig(device=device, max_batch_videos=batch)
    if variant == "fp32+cl":
        return PredictConfig(device=device, max_batch_videos=batch, channels_last=True)
    if variant == "bf16":
        return PredictConfig(device=device, max_batch_videos=batch, amp_dtype="bfloat16", channels_last=True)
    if variant == "compile":
        return PredictConfig(device=device, max_batch_videos=batch, amp_dtype="bfloat16", channels_last=True,
                             compile=compile_mode, fixed_batch=True)
    raise ValueError(f"variant {variant!r}: allowed are fp32, fp32+cl, bf16, compile")


class Case:
    """One (configuration, mode, variant, batch) measured in rounds; the model is built once."""

    def __init__(self, name: str, mode: str, model_fn, variant: str, batch: int, steps: int, device: str,
                 objects: int, compile_mode: str) -> None:
        self.name, self.mode, self.variant, self.batch, self.steps = name, mode, variant, batch, steps
        self.device, self.objects = device, objects
        self.model = model_fn()
        self.cfg = variant_config(variant, device, batch, compile_mode)
        h, w = self.model.config.input_size
        self.frames = torch.randint(0, 256, (8, 3, h, w), dtype=torch.uint8)
        self.slots = objects if self.model.config.one_shot else self.model.config.num_slots
        self.runs: list[float] = []
        self.cpu_ms: list[float] = []
        self.mem: float | None = None

    def run(self) -> None:
        first = not self.runs
        gpu = self.device.startswith("cuda")
        if gpu and first:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        warmup = (6 if self.variant == "compile" else 3) if first else 1  # compiling happens in the first steps
        fps, cpu_ms = benchkit.model_alone(self.model, self.cfg, self.batch, self.frames, self.steps, warmup=warmup,
                                           objects=self.objects)
        if gpu and first:
            self.mem = (torch.cuda.max_memory_allocated() - base) / self.batch / 2**20
        self.runs.append(fps)
        self.cpu_ms.append(cpu_ms)
        print(f"{self.name:8s} {self.mode:9s} {self.variant:8s} batch {self.batch:4d} slots {self.slots:2d}: "
              f"{fps:8.1f} frames/s, {cpu_ms:7.1f} CPU ms/frame" +
              (f"  {self.mem:.0f} MiB/video" if self.mem is not None else ""), flush=True)

    def row(self) -> Row:
        return Row(self.name, self.mode, self.variant, self.batch, self.slots, max(self.runs), self.runs,
                   self.cpu_ms, self.mem)


def table(rows: list[Row], gpu: bool) -> str:
    head = ("| configuration | mode | variant | videos per step | slots decoded | frames/s (best) | all runs | "
            "CPU ms per frame (median) |")
    sep = "|---|---|---|---:|---:|---:|---|---:|"
    if gpu:
        head += " GPU MiB per video |"
        sep += "---:|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r.config} | {r.mode} | {r.variant} | {r.batch} | {r.slots} | {r.fps:.1f} | "
                f"{', '.join(f'{x:.1f}' for x in r.runs)} | {benchkit.median(r.cpu_ms):.1f} |")
        if gpu:
            line += f" {r.mem_per_video_mib:.0f} |" if r.mem_per_video_mib is not None else " |"
        lines.append(line)
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batches", type=ints, default=None,
                   help="videos per step for the shipped model (default CPU 1,4,8,16; CUDA 1,8,32,64,128)")
    p.add_argument("--paper-batches", type=ints, default=None, help="for the paper model (default CPU 1,4; CUDA "
                   "1,8,32,64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default CPU 6, CUDA 50)")
    p.add_argument("--paper-steps", type=int, default=None, help="timed steps per run, paper (default CPU 2, CUDA 30)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--objects", type=int, default=2, help="objects per one-shot video (slots decoded)")
    p.add_argument("--variants", default=None,
                   help="comma list of fp32, fp32+cl, bf16, compile (default CPU fp32,fp32+cl; CUDA fp32,bf16,compile)")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--skip-paper", action="store_true")
    args = benchkit.parse(p, argv)
    gpu = args.device.startswith("cuda")
    batches = args.batches or ([1, 8, 32, 64, 128] if gpu else [1, 4, 8, 16])
    paper_batches = args.paper_batches or ([1, 8, 32, 64] if gpu else [1, 4])
    steps = args.steps or (50 if gpu else 6)
    paper_steps = args.paper_steps or (30 if gpu else 2)
    variants = (args.variants or ("fp32,bf16,compile" if gpu else "fp32,fp32+cl")).split(",")
    host = benchkit.machine()
    print(host, flush=True)

    cases: list[Case] = []
    notes: list[str] = []
    for mode in ("zero-shot", "one-shot"):
        _, desc = benchkit.shipped_model(mode, "cpu")
        notes.append(f"shipped {mode}: {desc}")
        for variant in variants:
            for b in batches:
                cases.append(Case("shipped", mode, lambda m=mode: benchkit.shipped_model(m, args.device)[0],
                                  variant, b, steps, args.device, args.objects, args.compile_mode))
    if not args.skip_paper:
        for variant in variants if gpu else ["fp32"]:
            for b in paper_batches:
                cases.append(Case("paper", "zero-shot", lambda: benchkit.untrained(benchkit.PAPER, args.device),
                                  variant, b, paper_steps, args.device, args.objects, args.compile_mode))
    # Rounds go over all cases in turn, so that a busy spell on the shared machine hits every case alike.
    for _ in range(args.repeat):
        for case in cases:
            case.run()
    rows = [c.row() for c in cases]
    if args.no_write:
        return 0
    best_shipped = max((r for r in rows if r.config == "shipped" and r.mode == "zero-shot"), key=lambda r: r.fps)
    paper_rows = [r for r in rows if r.config == "paper"]
    lines = [
        "## Model throughput",
        "",
        "RVOS alone (BatchSession steps on ready uint8 frames: upload, encoder, one decoder pass per slot, state "
        "update; no decoding, no masks), frames/s = videos per step x steps / seconds; best of the runs listed "
        "(rounds go over all rows in turn). CPU ms per frame is this process's CPU time (all threads) per frame, "
        "which varies far less than wall time on this shared machine.",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_model.py', argv)}`",
        f"- Device: {args.device}; timed steps per run: shipped {steps}, paper {paper_steps}; one-shot videos have "
        f"{args.objects} objects (so {args.objects} slots decoded)",
        *[f"- Model: {n}" for n in notes],
        "- Paper model: untrained ResNet-101 RVOS (H 128, 10 slots, 256x448, zero-shot); speed does not depend on "
        "the weights",
        "",
        table(rows, gpu),
        "",
        f"- Shipped model, zero-shot, best: {best_shipped.fps:.1f} frames/s on {args.device} at "
        f"{best_shipped.batch} videos per step ({best_shipped.variant}).",
    ]
    if paper_rows:
        best_paper = max(paper_rows, key=lambda r: r.fps)
        lines.append(f"- Paper configuration, best: {best_paper.fps:.2f} frames/s on {args.device} at "
                     f"{best_paper.batch} videos per step ({best_paper.variant}); the paper reports about 23 "
                     "frames/s (0.044 s/frame) on one P100 at batch 1.")
    if not gpu:
        lines.append("- No GPU was available to this run: no GPU figure (frames/s, GPU memory per video) was "
                     "measured. On a CUDA machine the same command measures fp32, bf16 + channels_last and "
                     "bf16 + torch.compile (CUDA graphs) at 1 to 128 videos per step and the GPU memory per video.")
    benchkit.write_section("Model throughput", "\n".join(lines))
    print("wrote the 'Model throughput' section of", benchkit.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
