"""The driver's two scans of many small objects, one request at a time against many in flight, on a moto S3 server
that holds every request for a fixed latency (as a real object store's round trip does); writes the
"## Scans" section of benchmarks/RESULTS.md.

Run:  nice -n 19 .venv/bin/python benchmarks/bench_scans.py [--files 64] [--markers 256] [--latency-ms 20]

``CorpusReader.list_videos`` reads the footer and small columns of every corpus file; ``MaskStore.committed_shards``
reads every commit marker (at the end, for the totals; at start the driver needs only their names,
``committed_shard_ids``, a listing of 1,000 names per request). Both scans go through
``storage.parallel_map``: ``--workers 1`` is the old one-at-a-time scan, the default keeps
``storage.REMOTE_IO_WORKERS`` requests in flight. Requests are counted at the server, so the figure per file or
marker is also requests per file or marker.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import benchkit
from bench_scaling import counting_moto, endpoint
from PIL import Image

from rvos_batch import storage
from rvos_batch.corpus import CorpusReader, CorpusWriter
from rvos_batch.maskstore import MaskStore, shard_name


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 120, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed_scan(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=64, help="corpus files (one small video each)")
    p.add_argument("--markers", type=int, default=256, help="commit markers")
    p.add_argument("--latency-ms", type=float, default=20.0, help="added to every request at the server")
    p.add_argument("--workers", default=f"1,{storage.REMOTE_IO_WORKERS}", help="requests in flight to compare")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    host = benchkit.machine()
    print(host, flush=True)
    log: list = []
    latency = [0.0]
    server = counting_moto(log, latency)
    rows = []
    ids_row = (float("nan"), float("nan"))
    default_workers = storage.REMOTE_IO_WORKERS
    try:
        with tempfile.TemporaryDirectory(prefix="rvos-bench-scans-") as tmp, \
                benchkit.fake_aws_env(endpoint(server), Path(tmp)):
            fs, _ = storage.get_fs("s3://rvos-scans")
            fs.mkdir("rvos-scans")
            corpus, out = "s3://rvos-scans/corpus", "s3://rvos-scans/out"
            image = jpeg()
            with CorpusWriter(corpus, videos_per_file=1) as w:
                for v in range(args.files):
                    w.add_video(f"v{v:05d}", [(0, image, 32, 24, None)])
            fs.pipe({f"rvos-scans/out/_commits/{shard_name(i)}.json": json.dumps({"shard": i}).encode()
                     for i in range(args.markers)})
            latency[0] = args.latency_ms / 1000
            for workers in [int(x) for x in args.workers.split(",")]:
                storage.REMOTE_IO_WORKERS = workers
                log.clear()
                t_list = timed_scan(lambda: CorpusReader(corpus).list_videos(), args.repeat)
                n_list = len(log) / args.repeat
                log.clear()
                t_mark = timed_scan(lambda: MaskStore(out).committed_shards(), args.repeat)
                n_mark = len(log) / args.repeat
                log.clear()
                t_ids = timed_scan(lambda: MaskStore(out).committed_shard_ids(), args.repeat)
                n_ids = len(log) / args.repeat
                rows.append((workers, t_list, n_list, t_mark, n_mark))
                ids_row = (t_ids, n_ids)
                print(f"{workers} in flight: list_videos {t_list:.2f} s ({n_list:.0f} requests), "
                      f"committed_shards {t_mark:.2f} s ({n_mark:.0f} requests)", flush=True)
    finally:
        storage.REMOTE_IO_WORKERS = default_workers
        server.stop()
    if args.no_write:
        return 0
    big_files, big_shards = 625_000, 625_000  # 10 M videos at 16 videos per file and per shard
    lines = [
        "## Scans",
        "",
        "The driver's scans of many small objects on S3: listing the corpus (every file's footer and small columns) "
        "and reading commit markers, one request at a time against many in flight (storage.parallel_map), on a "
        "moto server that holds every request for a fixed latency as a real object store's round trip does. "
        "Here the moto server and the client share the 2 cores: the requests in flight are bounded by their CPU, "
        "not by the latency.",
        "",
        f"- Machine: {host}",
        f"- Command: `{benchkit.command('bench_scans.py', argv)}`",
        f"- Setup: moto S3 on 127.0.0.1 holding every request {args.latency_ms:.0f} ms before answering; "
        f"{args.files} corpus files of one video each; {args.markers} commit markers; best of {args.repeat}.",
        "",
        "| requests in flight | list_videos (s) | requests | ms per file | committed_shards (s) | requests "
        "| ms per marker | 625,000 files, listing (h) | 625,000 markers, reading (h) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers, t_list, n_list, t_mark, n_mark in rows:
        lines.append(f"| {workers} | {t_list:.2f} | {n_list:.0f} | {t_list / args.files * 1e3:.2f} | {t_mark:.2f} "
                     f"| {n_mark:.0f} | {t_mark / args.markers * 1e3:.2f} | "
                     f"{big_files * t_list / args.files / 3600:.2f} | "
                     f"{big_shards * t_mark / args.markers / 3600:.2f} |")
    one, many = rows[0], rows[-1]
    lines += ["", f"- {many[0]} in flight against {one[0]}: listing {one[1] / many[1]:.1f}x and marker reads "
              f"{one[3] / many[3]:.1f}x faster at {args.latency_ms:.0f} ms per request. The last two columns scale "
              "the measured time per object to a 10 M-video corpus (16 videos per file, 16 per shard).",
              f"- At start the driver skips committed shards by name: committed_shard_ids() took {ids_row[0]:.2f} s "
              f"and {ids_row[1]:.0f} request(s) for the {args.markers} markers (S3 lists 1,000 names per request: "
              f"{big_shards / 1000:,.0f} requests for 625,000 markers)."]
    benchkit.write_section("Scans", "\n".join(lines))
    print("wrote the 'Scans' section of", benchkit.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
