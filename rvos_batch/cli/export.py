"""rvos-batch export OUT DEST --format davis: write masks as DAVIS palette PNGs DEST/<video>/<frame:05d>.png.

OUT is a labeling output store (only committed shards are read) or a plain mask dataset folder such as
CORPUS/prompts. Frames without masks get an all-zero PNG only when OUT/videos knows the frame count.
Videos whose id is unsafe as a folder name, or that hold object ids above 255, are reported and skipped.
Exit status: 0 if every video was exported, 1 if some failed.
"""

from __future__ import annotations

import argparse
import sys

from rvos_batch.export import export_davis
from rvos_batch.storage import parse_storage_options


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "out", metavar="OUT", help="output store of a labeling run, or a mask dataset folder (local or s3://)"
    )
    p.add_argument("dest", metavar="DEST", help="local folder to write <video>/<frame:05d>.png into")
    p.add_argument("--format", choices=["davis"], default="davis", help="output layout (default: davis)")
    p.add_argument("--videos", nargs="+", metavar="ID", help="export only these video ids")
    p.add_argument("--storage-options", metavar="JSON", help="JSON object of fsspec/s3fs options for OUT")


def run(args: argparse.Namespace) -> int:
    report = export_davis(
        args.out,
        args.dest,
        video_ids=args.videos,
        storage_options=parse_storage_options(args.storage_options),
    )
    for video in report.errors:
        print(f"rvos-batch export: {video.video_id!r}: {video.error}", file=sys.stderr)
    done = len(report.videos) - len(report.errors)
    print(f"exported {done} of {len(report.videos)} videos ({report.frames} frames) to {report.dest}")
    return 0 if report.ok else 1
