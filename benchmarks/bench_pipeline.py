"""Pipeline efficiency: the whole labeling worker's frames/s over the model alone's frames/s, on the same
machine, same shard, same batch, in the same run; writes the "## Pipeline efficiency" section of
benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_pipeline.py [--rounds 3] [--no-write]

Corpus: ``rvos-batch synth`` videos (real DAVIS silhouettes, textured, real JPEG bytes) at 240x427 ingested into
a Parquet corpus with prompts (one-shot), or jobkit's moving-square JPEGs when the DAVIS source masks are absent.
Pipeline = ``ShardWorker.process_shard`` (no Ray): read Parquet row groups, decode JPEGs on the decode threads
(PIL draft mode), resize, step the model over ``--batch`` videos at once, upsample the masks to 240x427, resolve
overlaps, RLE, build rows, write and commit the shard (Parquet + marker). Model alone = the same schedule of the
same videos through the same BatchSession from frames decoded beforehand, without masks. Rounds alternate the
two (and the pipeline without the post thread, "serial"), so that load from other jobs on the machine hits all
of them alike; each round gives a ratio, and the median ratio is reported. A profile gives each stage's cost per
frame measured alone, and the worker's own split of the pipeline's wall time.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchkit
import numpy as np
import torch

from rvos_batch import imaging, maskstore, rle
from rvos_batch.corpus import CorpusReader
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.plan import ShardSpec, plan_shards
from rvos_batch.job.worker import ShardWorker, _MaskRows
from rvos_batch.predictor import BatchSession, preprocess, resolve_masks


def make_corpus(root: Path, videos: int, frames: int, size: tuple[int, int]) -> tuple[str, str]:
    """A corpus (with prompts) of ``videos`` x ``frames`` real JPEGs; returns (url, description)."""
    corpus = root / "corpus"
    try:
        from rvos_batch import synth
        from rvos_batch.ingest import IngestConfig, ingest

        synth.find_source()
        src = root / "synth"
        synth.write_dataset(src, synth.SynthConfig(videos=videos, frames=frames, height=size[0], width=size[1]))
        ingest(IngestConfig(src=str(src), out=str(corpus), videos_per_file=4, progress=False))
        return str(corpus), f"rvos-batch synth: {videos} videos x {frames} frames, {size[0]}x{size[1]} JPEG q90"
    except Exception as e:  # no DAVIS source masks: moving squares over noise
        sys.path.insert(0, str(benchkit.ROOT / "tests"))
        from jobkit import make_corpus as jobkit_corpus

        jobkit_corpus(str(corpus), [frames] * videos, size=size)
        return str(corpus), f"tests/jobkit moving squares ({type(e).__name__}: synth unavailable)"


def model_alone(worker: ShardWorker, spec: ShardSpec, decoded: dict[str, list[Any]]) -> tuple[float, float]:
    """(wall, CPU) seconds for the model alone over the shard: the worker's schedule, frames already decoded,
    no masks."""
    session = BatchSession(worker.model, worker.predict_config, capacity=worker.config.batch_videos)
    loaded = worker._load_prompts(spec)
    prompts = loaded[0] if isinstance(loaded, tuple) else loaded  # (prompts, errors) or prompts
    todo = iter(spec.videos)
    rows: dict[int, tuple[str, int]] = {}  # row -> (video, next frame position)
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        for row in range(worker.config.batch_videos):
            if row in rows:
                continue
            entry = next(todo, None)
            if entry is None:
                break
            one_shot = worker.config.mode == "one-shot"
            session.add(row, entry.video_id, prompts=prompts.get(entry.video_id, {}) if one_shot else None)
            rows[row] = (entry.video_id, 0)
        if not rows:
            break
        inputs = {}
        for row, (vid, pos) in list(rows.items()):
            if pos == len(decoded[vid]):
                del rows[row]
                session.release(row)
                continue
            d = decoded[vid][pos]
            inputs[row] = (d.frame_index, d.tensor, d.orig_size)
            rows[row] = (vid, pos + 1)
        if inputs:
            session.step_async(inputs)
    benchkit.sync(worker.device)
    return time.perf_counter() - t0, time.process_time() - c0


def pipeline(worker: ShardWorker, spec: ShardSpec, out: str, overlap: bool) -> tuple[float, float, dict[str, float]]:
    """(wall, CPU) seconds of ``process_shard`` over the shard (all threads of this process), and its timings."""
    worker.post_queue_steps = 2 if overlap else 0
    worker.store = maskstore.MaskStore(out)
    c0 = time.process_time()
    t0 = time.perf_counter()
    worker.process_shard(spec)
    return time.perf_counter() - t0, time.process_time() - c0, dict(worker.last_timings)


def profile(worker: ShardWorker, spec: ShardSpec, reader: CorpusReader, frames: int,
            repeat: int = 3) -> list[tuple[str, float]]:
    """Cost of each stage per frame, measured alone on one thread (ms); each stage the best of ``repeat``."""

    def best(fn: Any) -> tuple[float, Any]:
        times, out = [], None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    out: list[tuple[str, float]] = []
    t, records = best(lambda: [r for e in spec.videos for r in reader.iter_frames(e)])
    out.append(("read Parquet (row groups, per frame)", t / frames))
    draft = worker._draft
    t, rgbs = best(lambda: [(imaging.image_size(r.image), imaging.decode_image(r.image, draft=draft))[1]
                            for r in records])
    out.append(("JPEG decode (PIL draft) + header", t / frames))
    t, tensors = best(lambda: [preprocess(x, worker.model_config) for x in rgbs])
    out.append(("resize to the model input", t / frames))
    # masks: upsample + overlap resolution, then RLE + rows, on real model output of one batch
    b = worker.config.batch_videos
    session = BatchSession(worker.model, worker.predict_config, capacity=b)
    size = rgbs[0].shape[:2]
    for row in range(b):
        session.add(row, f"p{row}", size, {0: {1: np.ones(size, bool)}} if worker.config.mode == "one-shot" else None)
    t_resolve = t_rle = t_rows = 0.0
    n = 0
    cfg = worker.predict_config
    for i in range(0, min(len(tensors), 8 * b) - b + 1, b):
        pending = session.step_async({row: (i // b, tensors[i + row]) for row in range(b)})
        probs, started = pending._probs, pending._reportable
        assert probs is not None and started is not None

        def resolve(probs: torch.Tensor = probs, started: torch.Tensor = started) -> np.ndarray:
            with torch.inference_mode():
                masks, area, _ = resolve_masks(probs, started, size, cfg.threshold)
                keep = ((area >= cfg.min_area) & started).cpu().numpy()
                return masks.cpu().numpy()[keep]

        t1, kept = best(resolve)
        t2, _ = best(functools.partial(rle.encode_batch_with_stats, kept) if len(kept) else lambda: None)
        rows = _MaskRows()
        for fr in pending.rles().values():
            rows.add(fr)
        t3, _ = best(functools.partial(rows.table, "v"))
        t_resolve += t1
        t_rle += t2
        t_rows += t3
        n += b
    out.append((f"upsample to {size[0]}x{size[1]} + resolve overlaps (batched)", t_resolve / n))
    out.append(("RLE encode + areas + boxes (rvos_batch.rle)", t_rle / n))
    out.append(("mask rows -> Arrow table", t_rows / n))
    return [(name, s * 1e3) for name, s in out]


def run_mode(mode: str, args: argparse.Namespace, root: Path, corpus: str) -> dict[str, Any]:
    model, desc = benchkit.shipped_model(mode, "cpu")
    model_path = benchkit.save_model(model, root / f"model-{mode}.pt")
    cfg = LabelConfig(corpus=corpus, out=str(root / f"out-{mode}"), mode=mode, model=model_path,
                      batch_videos=args.batch, videos_per_shard=args.videos, decode_threads=args.decode_threads,
                      min_area=16, tracker=None)  # the model alone, never the zero-shot tracker
    worker = ShardWorker(cfg, device=args.device)
    reader = CorpusReader(corpus)
    [spec] = plan_shards(reader.list_videos(), args.videos)
    frames = spec.num_frames
    decoded = {e.video_id: [worker._decode(r) for r in reader.iter_frames(e)] for e in spec.videos}
    model_alone(worker, spec, decoded)  # warm-up (allocator, kernels, compile)
    pipeline(worker, spec, str(root / f"warm-{mode}"), True)
    rounds = []
    for i in range(args.rounds):
        t_model, c_model = model_alone(worker, spec, decoded)
        t_pipe, c_pipe, timings = pipeline(worker, spec, str(root / f"o-{mode}-{i}"), True)
        t_serial, c_serial, _ = pipeline(worker, spec, str(root / f"s-{mode}-{i}"), False)
        r: dict[str, Any] = {
            "model_fps": frames / t_model, "pipe_fps": frames / t_pipe, "serial_fps": frames / t_serial,
            "model_cpu_ms": c_model / frames * 1e3, "pipe_cpu_ms": c_pipe / frames * 1e3,
            "serial_cpu_ms": c_serial / frames * 1e3, "timings": timings,
        }
        r["ratio"] = r["pipe_fps"] / r["model_fps"]
        r["serial_ratio"] = r["serial_fps"] / r["model_fps"]
        r["cpu_ratio"] = r["model_cpu_ms"] / r["pipe_cpu_ms"]
        rounds.append(r)
        print(f"{mode} round {i}: model alone {r['model_fps']:.1f} f/s, pipeline {r['pipe_fps']:.1f} f/s "
              f"(ratio {r['ratio']:.3f}), serial {r['serial_fps']:.1f} f/s (ratio {r['serial_ratio']:.3f}); CPU ms "
              f"per frame: model {r['model_cpu_ms']:.1f}, pipeline {r['pipe_cpu_ms']:.1f} (ratio {r['cpu_ratio']:.3f}),"
              f" serial {r['serial_cpu_ms']:.1f}; timings {({k: round(v, 2) for k, v in timings.items()})}",
              flush=True)
    prof = profile(worker, spec, reader, frames) if args.profile else []
    worker.close()
    return {"mode": mode, "model": desc, "frames": frames, "rounds": rounds, "profile": prof}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--videos", type=int, default=None, help="videos in the shard (default CPU 8, CUDA 256)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default CPU 30, CUDA 60)")
    p.add_argument("--batch", type=int, default=None, help="videos stepped together (default CPU 4, CUDA 64)")
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="zero-shot,one-shot")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    args = benchkit.parse(p, argv)
    gpu = args.device.startswith("cuda")
    args.videos = args.videos or (256 if gpu else 8)
    args.frames = args.frames or (60 if gpu else 30)
    args.batch = args.batch or (64 if gpu else 4)
    host = benchkit.machine()
    print(host, flush=True)
    with tempfile.TemporaryDirectory(prefix="rvos-bench-pipe-") as tmp:
        root = Path(tmp)
        corpus, corpus_desc = make_corpus(root, args.videos, args.frames, (240, 427))
        results = [run_mode(m, args, root, corpus) for m in args.modes.split(",")]
    if args.no_write:
        return 0
    lines = [
        "## Pipeline efficiency",
        "",
        "Whole worker (`ShardWorker.process_shard`, no Ray: Parquet read, PIL draft JPEG decode on "
        f"{args.decode_threads} decode threads, resize, model, masks upsampled to 240x427 and resolved, RLE, rows, "
        "Parquet write and commit) against the model alone (same shard, same schedule, same batch, frames decoded "
        "beforehand, no masks), alternated in the same run. \"serial\" is the same worker with masks made inline "
        "in the model's thread (post thread off), to show what the overlap gains.",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_pipeline.py', argv)}`",
        f"- Corpus: {corpus_desc}; one shard of {args.videos} videos, {args.batch} videos per step, device "
        f"{args.device}",
        "",
        "Wall-clock frames/s are what the target is about, but on this shared 2-core machine (other jobs run "
        "beside the benchmark, which runs at nice 19; see the load in the machine line) they can swing from one "
        "run to the next. CPU time per frame (all threads of the process) is far steadier: its ratio (model CPU ms / "
        "pipeline CPU ms) is the share of the pipeline's work that is the model, i.e. the wall-clock ratio a "
        "saturated machine would reach if nothing overlapped.",
        "",
        "| mode | round | model alone (frames/s) | pipeline (frames/s) | pipeline / model | serial (frames/s) | "
        "serial / model | CPU ms per frame: model | pipeline | serial | CPU ratio model / pipeline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for i, r in enumerate(res["rounds"]):
            lines.append(f"| {res['mode']} | {i + 1} | {r['model_fps']:.1f} | {r['pipe_fps']:.1f} | {r['ratio']:.3f} "
                         f"| {r['serial_fps']:.1f} | {r['serial_ratio']:.3f} | {r['model_cpu_ms']:.1f} | "
                         f"{r['pipe_cpu_ms']:.1f} | {r['serial_cpu_ms']:.1f} | {r['cpu_ratio']:.3f} |")
    lines.append("")
    for res in results:
        ratios = [r["ratio"] for r in res["rounds"]]
        serial = [r["serial_ratio"] for r in res["rounds"]]
        cpu = [r["cpu_ratio"] for r in res["rounds"]]
        lines.append(f"- {res['mode']} ({res['model']}): median wall-clock pipeline / model = "
                     f"**{benchkit.median(ratios):.3f}** (target 0.9), serial {benchkit.median(serial):.3f}; median "
                     f"CPU-time ratio **{benchkit.median(cpu):.3f}**.")
    for res in results:
        t = res["rounds"][-1]["timings"]
        lines.append(
            f"- {res['mode']}, where the pipeline's wall time went (last round, s): total {t['total']:.2f} = model "
            f"thread stepping {t['model']:.2f} + waiting for decoded frames {t['wait_frames']:.2f} + waiting for "
            f"the post thread at the end {t['post_wait']:.2f} + commit {t['commit']:.2f} (+ prompts, setup); the "
            f"post thread was busy {t['post_busy']:.2f} s, overlapped with the model."
        )
    for res in results:
        if res["profile"]:
            lines += ["", f"Stage costs measured alone, one thread, best of 3, {res['mode']} (ms per frame):", "",
                      "| stage | ms per frame |", "|---|---:|"]
            lines += [f"| {name} | {ms:.3f} |" for name, ms in res["profile"]]
            model_ms = 1e3 / benchkit.median([r["model_fps"] for r in res["rounds"]])
            lines.append(f"| model alone (from the rounds, {args.batch} videos per step) | {model_ms:.3f} |")
    for res in results:
        if not res["profile"]:
            continue
        prof = dict(res["profile"])
        host_side = sum(ms for name, ms in res["profile"] if not name.startswith(("upsample", "RLE")))
        post_side = sum(ms for name, ms in res["profile"] if name.startswith(("upsample", "RLE")))
        model_cpu = benchkit.median([r["model_cpu_ms"] for r in res["rounds"]])
        over = benchkit.median([r["ratio"] for r in res["rounds"]])
        serial_med = benchkit.median([r["serial_ratio"] for r in res["rounds"]])
        bound = model_cpu / (model_cpu + host_side + post_side)
        lines += ["", f"- {res['mode']}: besides the model ({model_cpu:.1f} CPU ms per frame), each frame costs "
                  f"{host_side:.2f} ms of reading, decoding, resizing and row building and {post_side:.2f} ms of "
                  f"upsampling, overlap resolution and RLE, so model / (model + the rest) = {bound:.3f}. On a CPU "
                  "all of it runs on the same cores as the model; overlap only helps with an idle core, which this "
                  f"shared machine rarely has (overlapped {over:.3f} against serial {serial_med:.3f}). With the model "
                  f"and the mask work on a GPU, the host keeps only the first part: {host_side:.2f} CPU ms per "
                  f"frame here, i.e. about "
                  f"{host_side:.1f} cores per 1,000 frames/s of GPU throughput at these per-frame costs (decode "
                  f"threads; {prof.get('JPEG decode (PIL draft) + header', 0.0):.2f} ms of it is JPEG decoding)."]
    if not gpu:
        lines += ["", "- No GPU was available: no GPU pipeline figure was measured. On CUDA the same command runs "
                  "256 videos x 60 frames at 64 videos per step, with bf16 + channels_last, masks resolved and "
                  "run-length encoded on the GPU on a side stream (only RLE characters come back to the host)."]
    benchkit.write_section("Pipeline efficiency", "\n".join(lines))
    print("wrote the 'Pipeline efficiency' section of", benchkit.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
