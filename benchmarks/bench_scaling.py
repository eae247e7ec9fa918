"""Scaling: labeling throughput with 1 and 2 Ray actors here, the driver's own costs per shard and per video, the
storage requests per shard against a moto S3 server, and what they mean for 10 million videos on 100 GPUs;
writes the "## Scaling" section of benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_scaling.py [--no-write]

Throughput: ``run_job`` (the real Ray driver and actors, a local Ray started by this script with its own temp
dir) over a local corpus, once with 1 actor and once with 2 (1 CPU each); frames/s from the job's wall time
(actor start-up included) and from the shards' own seconds. Driver costs: the driver process's CPU time during
the job, and its fixed steps timed one by one (listing the corpus, planning, the model digest, the lock,
reading commit markers). Storage requests: two counting moto servers share one in-memory S3; the actors are
pointed at one and the driver at the other, so every request is attributed to who made it; a job with corpus
and output on S3 is run and the requests are counted by kind. The last part is arithmetic on those figures.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchkit
from bench_pipeline import make_corpus

from rvos_batch import storage
from rvos_batch.corpus import CorpusReader, CorpusWriter
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.plan import plan_shards
from rvos_batch.maskstore import MaskStore
from rvos_batch.model.checkpoint import file_sha256
from rvos_batch.schema import FRAME_ROW_GROUP_ROWS

Log = list[tuple[str, str, str]]  # (method, path, query)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counting_moto(log: Log, latency: list[float] | None = None) -> Any:
    """A ThreadedMotoServer whose WSGI app appends (method, path, query) of every request to ``log``; with
    ``latency`` (a one-item list, changeable while the server runs), each request first waits that many seconds,
    as a request to a real object store waits on the network and the service."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr

    class Counting(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)

            def counted(environ: dict, start_response: Any) -> Any:
                log.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
                if latency and latency[0] > 0:
                    time.sleep(latency[0])
                return app(environ, start_response)

            self._server = make_server(self._ip_address, self._port, counted, True,
                                       request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    server = Counting(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    return server


def endpoint(server: Any) -> str:
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def classify(entry: tuple[str, str, str], bucket: str, root: str) -> str:
    """'METHOD area' with area the first two path parts below ``root`` (e.g. 'PUT out/_commits'), LIST for
    listings."""
    method, path, query = entry
    key = path.lstrip("/")
    key = key[len(bucket):].lstrip("/") if key.startswith(bucket) else key
    if "list-type" in query or (method == "GET" and not key):
        prefix = next((p.split("=", 1)[1] for p in query.split("&") if p.startswith("prefix=")), "")
        key, method = prefix.replace("%2F", "/"), "LIST"
    key = key[len(root):].lstrip("/") if key.startswith(root) else key
    parts = [p for p in key.split("/") if p][:2]
    area = "/".join(parts) if parts else "(bucket)"
    if len(parts) == 2 and parts[1].startswith("part-"):
        area = parts[0] + "/part-*"
    if len(parts) == 2 and parts[0] == "out" and parts[1].startswith(("shard-", "_tmp")):
        area = "out/" + parts[1].split("-")[0]
    return f"{method} {area}"


def counts(log: Log, bucket: str, root: str) -> collections.Counter:
    return collections.Counter(classify(e, bucket, root) for e in log)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(cfg: LabelConfig) -> dict[str, Any]:
    from rvos_batch.job.driver import run_job

    c0, t0 = cpu_s(), time.perf_counter()
    summary = run_job(cfg, progress=False)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    store = MaskStore(cfg.out, storage_options=cfg.storage_options)
    markers = store.committed_shards()
    shard_s = [m["stats"]["seconds"] for m in markers.values()]
    assert summary.ok and summary.shards_done + summary.shards_skipped == len(markers), summary
    return {"wall": wall, "driver_cpu": cpu, "frames": summary.frames, "shards": len(markers),
            "videos": summary.videos_ok + summary.videos_failed, "shard_seconds": sum(shard_s)}


def fixed_costs(cfg: LabelConfig, repeat: int = 3) -> dict[str, float]:
    """The driver's steps outside its loop, timed alone (best of ``repeat``, seconds)."""
    reader = CorpusReader(cfg.corpus, storage_options=cfg.storage_options)
    store = MaskStore(cfg.out, storage_options=cfg.storage_options)
    out: dict[str, float] = collections.defaultdict(lambda: float("inf"))
    for _ in range(repeat):
        t = time.perf_counter()
        entries = reader.list_videos()
        out["list_videos"] = min(out["list_videos"], time.perf_counter() - t)
        t = time.perf_counter()
        plan_shards(entries, cfg.videos_per_shard)
        out["plan_shards"] = min(out["plan_shards"], time.perf_counter() - t)
        t = time.perf_counter()
        file_sha256(cfg.model)
        out["model_sha256"] = min(out["model_sha256"], time.perf_counter() - t)
        t = time.perf_counter()
        store.committed_shards()
        out["committed_shards"] = min(out["committed_shards"], time.perf_counter() - t)
    return dict(out)


def marginal_driver_cost(root: Path, model_path: str, counts_: tuple[int, int]) -> dict[str, float]:
    """The driver's CPU per extra shard: two jobs of one-video shards (2 frames of 60x90 each, 2 actors) that
    differ only in the number of shards; (CPU_b - CPU_a) / (shards_b - shards_a) leaves out every fixed cost."""
    sys.path.insert(0, str(benchkit.ROOT / "tests"))
    from jobkit import make_corpus as small_corpus

    out: dict[str, float] = {}
    for n in counts_:
        corpus = str(root / f"small{n}")
        small_corpus(corpus, [2] * n, videos_per_file=8, size=(60, 90), prefix="s")
        for attempt in range(2):  # the less disturbed of two runs
            cfg = LabelConfig(corpus=corpus, out=str(root / f"small-out{n}-{attempt}"), model=model_path,
                              videos_per_shard=1, num_actors=2, cpus_per_actor=1.0, batch_videos=1)
            r = run(cfg)
            if attempt == 0 or r["driver_cpu"] < out[f"cpu{n}"]:
                out[f"cpu{n}"], out[f"wall{n}"] = r["driver_cpu"], r["wall"]
            print(f"{n} one-video shards: driver CPU {r['driver_cpu']:.2f} s, wall {r['wall']:.1f} s", flush=True)
    a, b = counts_
    out["per_shard"] = (out[f"cpu{b}"] - out[f"cpu{a}"]) / (b - a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--videos-per-shard", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--actors", default="1,2")
    p.add_argument("--target-videos", type=float, default=1e7)
    p.add_argument("--target-gpus", type=int, default=100)
    p.add_argument("--frames-per-video", type=float, default=100.0, help="mean video length for the extrapolation")
    p.add_argument("--gpu-fps", type=float, default=1000.0,
                   help="frames/s per GPU for the extrapolation (the issue's target; not measured here)")
    p.add_argument("--small-shards", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8, 128),
                   help="shard counts of the two one-video-shard jobs that give the driver's cost per shard")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    host = benchkit.machine()
    print(host, flush=True)
    import ray

    driver_log: Log = []
    actor_log: Log = []
    driver_s3 = counting_moto(driver_log)
    actor_s3 = counting_moto(actor_log)
    with tempfile.TemporaryDirectory(prefix="rvos-bench-scale-") as tmp, \
            benchkit.fake_aws_env(endpoint(actor_s3), Path(tmp)):
        root = Path(tmp)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="rvray", dir="/tmp"))  # actors inherit the actors' endpoint
        os.environ["AWS_ENDPOINT_URL"] = endpoint(driver_s3)  # from here on this process talks to the other server
        try:
            corpus, corpus_desc = make_corpus(root, args.videos, args.frames, (240, 427))
            model, model_desc = benchkit.shipped_model("zero-shot")
            model_path = benchkit.save_model(model, root / "model.pt")
            common = dict(model=model_path, videos_per_shard=args.videos_per_shard, batch_videos=args.batch,
                          cpus_per_actor=1.0, decode_threads=2)
            runs = {}
            for n in [int(x) for x in args.actors.split(",")]:
                cfg = LabelConfig(corpus=corpus, out=str(root / f"out{n}"), num_actors=n, **common)  # type: ignore[arg-type]
                runs[n] = run(cfg)
                r = runs[n]
                print(f"{n} actor(s): {r['frames']} frames in {r['wall']:.1f} s = {r['frames'] / r['wall']:.1f} "
                      f"frames/s; shards' own seconds {r['shard_seconds']:.1f}; driver CPU {r['driver_cpu']:.2f} s",
                      flush=True)
            local_fixed = fixed_costs(LabelConfig(corpus=corpus, out=str(root / "out1"), **common))  # type: ignore[arg-type]
            marginal = marginal_driver_cost(root, model_path, args.small_shards)

            # ---- S3: corpus and output on the (counting) moto server
            from rvos_batch.storage import get_fs

            bucket, prefix = "rvos-bench", "bench"
            fs, _ = get_fs(f"s3://{bucket}")
            fs.mkdir(bucket)
            s3_corpus = f"s3://{bucket}/{prefix}/corpus"
            local = CorpusReader(corpus)
            with CorpusWriter(s3_corpus, videos_per_file=4) as w:
                for e in local.list_videos():
                    w.add_video(e.video_id, ((r.frame_index, r.image, r.width, r.height, None)
                                             for r in local.iter_frames(e)))
            s3_cfg = LabelConfig(corpus=s3_corpus, out=f"s3://{bucket}/{prefix}/out", num_actors=2, **common)  # type: ignore[arg-type]
            driver_log.clear()
            actor_log.clear()
            s3_run = run(s3_cfg)
            by_actor = counts(actor_log, bucket, prefix)
            by_driver = counts(driver_log, bucket, prefix)
            n_shards = s3_run["shards"]
            print(f"S3 run: {s3_run['frames']} frames, {n_shards} shards; actor requests {sum(by_actor.values())}, "
                  f"driver requests {sum(by_driver.values())}", flush=True)
            print("actors:", dict(by_actor), "\ndriver:", dict(by_driver), flush=True)
            driver_log.clear()
            s3_fixed = fixed_costs(s3_cfg, repeat=1)
            fixed_requests = counts(driver_log, bucket, prefix)
            files = len(CorpusReader(s3_corpus).files)
        finally:
            ray.shutdown()
            driver_s3.stop()
            actor_s3.stop()

    if args.no_write:
        return 0
    text = report(args, host, corpus_desc, model_desc, runs, local_fixed, marginal, s3_run, by_actor, by_driver,
                  s3_fixed, fixed_requests, files, argv)
    benchkit.write_section("Scaling", text)
    print("wrote the 'Scaling' section of", benchkit.RESULTS)
    return 0


def report(args: argparse.Namespace, host: str, corpus_desc: str, model_desc: str, runs: dict[int, dict[str, Any]],
           local_fixed: dict[str, float], marginal: dict[str, float], s3_run: dict[str, Any],
           by_actor: collections.Counter, by_driver: collections.Counter, s3_fixed: dict[str, float],
           fixed_requests: collections.Counter, files: int, argv: Sequence[str] | None) -> str:
    lines = [
        "## Scaling",
        "",
        "The Ray job (`run_job`, real actors on a local Ray started by the benchmark) with 1 and 2 actors, the "
        "driver's own costs, and the storage requests counted at a moto S3 server (the actors and the driver "
        "talk to two counting servers sharing one in-memory S3, so each request is attributed to its maker).",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_scaling.py', argv)}`",
        f"- Corpus: {corpus_desc}; {args.videos_per_shard} videos per shard, {args.batch} videos per step, "
        f"1 CPU per actor; model: {model_desc}",
        "",
        "| actors | frames | shards | wall s (incl. actor start) | frames/s (wall) | sum of shard seconds | "
        "frames/s per actor (shard seconds) | driver CPU s | driver CPU ms per shard | per video |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in runs.items():
        lines.append(f"| {n} | {r['frames']} | {r['shards']} | {r['wall']:.1f} | {r['frames'] / r['wall']:.1f} | "
                     f"{r['shard_seconds']:.1f} | {r['frames'] / r['shard_seconds']:.1f} | {r['driver_cpu']:.2f} | "
                     f"{r['driver_cpu'] / r['shards'] * 1e3:.0f} | {r['driver_cpu'] / r['videos'] * 1e3:.0f} |")
    one, two = runs.get(1), runs.get(2)
    if one and two:
        speedup = two["frames"] / two["wall"] / (one["frames"] / one["wall"])
        busy = two["shard_seconds"] / two["wall"]
        lines += ["", f"- 2 actors / 1 actor: {speedup:.2f}x the wall-clock frames/s. On average {busy:.2f} of the "
                  "2 actors were inside a shard (the rest of the wall time is their start-up in Ray and the tail "
                  "of the last shard), and each ran slower than the single actor "
                  f"({two['frames'] / two['shard_seconds']:.1f} against {one['frames'] / one['shard_seconds']:.1f} "
                  "frames/s of shard time): the machine has 2 cores shared with other jobs (load in the machine "
                  "line), and the driver, Ray and the decode threads share them too. The driver itself is not the "
                  "limit (next rows)."]
    lines += ["", "Driver steps outside its loop, timed alone (best of 3; local corpus / moto S3):", "",
              "| step | local (ms) | S3, moto on localhost (ms) |", "|---|---:|---:|"]
    for k in ("list_videos", "plan_shards", "model_sha256", "committed_shards"):
        lines.append(f"| {k} | {local_fixed[k] * 1e3:.1f} | {s3_fixed[k] * 1e3:.1f} |")
    a, b = args.small_shards
    lines += ["", f"- Driver CPU per shard, marginal: jobs of {a} and {b} one-video shards (2 actors) took "
              "(the less disturbed of two runs each) "
              f"{marginal[f'cpu{a}']:.2f} s and {marginal[f'cpu{b}']:.2f} s of driver CPU "
              f"(wall {marginal[f'wall{a}']:.1f} s and {marginal[f'wall{b}']:.1f} s): "
              f"**{marginal['per_shard'] * 1e3:.1f} ms per shard** (dispatch, streamed progress, result). "
              "Everything else the driver does is per job or per corpus file."]
    n_shards, n_videos = s3_run["shards"], s3_run["videos"]
    actor_total = sum(by_actor.values())
    driver_total = sum(by_driver.values())
    lines += ["", f"S3 requests of one job with corpus and output on moto ({n_videos} videos in {files} corpus files, "
              f"{n_shards} shards, 2 actors), by maker and kind:", "",
              "| maker | request kind | count | per shard |", "|---|---|---:|---:|"]
    for who, counter in (("actors", by_actor), ("driver", by_driver)):
        for kind, c in sorted(counter.items()):
            lines.append(f"| {who} | {kind} | {c} | {c / n_shards:.2f} |")
    lines.append(f"| actors | total | {actor_total} | {actor_total / n_shards:.1f} |")
    lines.append(f"| driver | total | {driver_total} | {driver_total / n_shards:.1f} |")
    fixed_total = sum(fixed_requests.values())
    lines += ["", f"- The driver's fixed steps alone (list_videos, plan, digest, committed_shards) made "
              f"{fixed_total} requests: " + ", ".join(f"{k} {v}" for k, v in sorted(fixed_requests.items())) + "."]

    # ---- extrapolation
    n, g, length, fps = args.target_videos, args.target_gpus, args.frames_per_video, args.gpu_fps
    frames = n * length
    t_gpu = frames / (g * fps)
    corpus_reads = sum(c for k, c in by_actor.items() if " corpus/" in k)
    measured_reads = corpus_reads / n_videos  # per video: row groups + its share of file openings
    opens = 2 * by_actor.get("HEAD corpus/frames", 0) / n_videos  # HEAD + footer GET per opening
    # a video of L frames spans at most ceil(L / 64) + 1 row groups of 64 frames (FRAME_ROW_GROUP_ROWS)
    per_video_reads = opens + math.ceil(length / FRAME_ROW_GROUP_ROWS) + 1
    per_shard_other = (actor_total - corpus_reads) / n_shards  # prompts, commit writes, checks
    loop_per_shard = max(0.0, marginal["per_shard"])
    list_per_file = s3_fixed["list_videos"] / files
    marker_read = s3_fixed["committed_shards"] / max(1, n_shards)
    lines += ["", f"Extrapolation to {n:,.0f} videos of {length:.0f} frames on {g} GPUs at {fps:,.0f} frames/s each "
              "(the issue's target for one H100; no GPU was measured here, so this throughput is an assumption): "
              f"{frames:,.0f} frames / ({g} x {fps:,.0f} frames/s) = {t_gpu:,.0f} s ({t_gpu / 3600:.1f} h) of GPU "
              f"time. Measured inputs: the driver's CPU per shard {loop_per_shard * 1e3:.1f} ms (marginal, above); "
              f"actors made {measured_reads:.2f} corpus reads per video of {args.frames} frames ({opens:.2f} to open "
              "files, shared by the videos of a file read one after another, the rest row groups), so at most "
              f"{per_video_reads:.0f} for {length:.0f} frames, and "
              f"{per_shard_other:.1f} other requests per shard.", ""]
    loop_cores: dict[int, float] = {}
    req_rates: dict[int, float] = {}
    for vps in (16, 256):
        shards = n / vps
        rate = shards / t_gpu
        req_rate = (shards * per_shard_other + n * per_video_reads) / t_gpu
        loop_cores[vps] = loop_per_shard * rate
        req_rates[vps] = req_rate
        lines.append(
            f"- videos_per_shard {vps}: {shards:,.0f} shards, {rate:.1f} shards/s finish. Driver: "
            f"{loop_per_shard * rate:.2f} of one core busy. Storage: {req_rate:,.0f} requests/s over the whole job "
            f"({per_shard_other * rate:,.0f}/s for commits and checks, the rest reading frames; S3 documents 3,500 "
            "writes and 5,500 reads per second per prefix, and the corpus can be spread over prefixes)."
        )
    lines += [
        f"- Start-up, listing: list_videos reads every corpus file's footer and small columns, "
        f"{storage.REMOTE_IO_WORKERS} files at a time on S3 (storage.parallel_map): {list_per_file * 1e3:.1f} ms "
        f"per file here, with only {files} files (too few to fill the requests in flight). The Scans section "
        "(bench_scans.py) measures both scans on 64 files and 256 markers with 20 ms added to every request.",
        f"- Resume: the driver skips committed shards by the markers' names (committed_shard_ids, one LIST per "
        f"1,000 markers: {625_000 / 1000:,.0f} requests at 625,000 shards). Totals at the end read every marker, "
        f"{storage.REMOTE_IO_WORKERS} at a time ({marker_read * 1e3:.1f} ms per marker here, {n_shards} markers).",
        f"- So per shard, the driver ({loop_cores[256]:.2f} of a core at 256 videos per shard, "
        f"{loop_cores[16]:.2f} at 16) and the commit protocol ({per_shard_other:.0f} requests per shard) keep up "
        f"with 100 GPUs; the frame reads ({opens:.2f} requests per video to open corpus files, a HEAD and a footer "
        "GET per opening, shared by the videos of one file, then the row groups) are most of the request rate, "
        "well within what S3 serves when the corpus is spread over a few prefixes.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
