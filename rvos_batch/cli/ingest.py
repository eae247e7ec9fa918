"""rvos-batch ingest SRC OUT: build a corpus (OUT/frames, and OUT/prompts where annotations exist) from a
DAVIS-2017 or YouTube-VOS folder, a folder of frame folders, or video files. SRC and OUT may be local paths
or s3:// URLs. Nothing is left in OUT when it fails.

Examples:
  rvos-batch ingest DAVIS/ corpus/ --split val
  rvos-batch ingest youtube-vos/valid s3://bucket/ytvos-valid
  rvos-batch ingest clips/ corpus/ --format video --fps 6 --max-side 854
"""

from __future__ import annotations

import argparse
import sys

from rvos_batch.imaging import DEFAULT_MAX_PIXELS
from rvos_batch.ingest import FORMATS, IngestConfig, ingest
from rvos_batch.storage import parse_storage_options


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("src", metavar="SRC", help="source folder (or one video file), local path or s3:// URL")
    p.add_argument("out", metavar="OUT", help="corpus to create: OUT/frames/*.parquet and OUT/prompts/")
    p.add_argument("--format", choices=FORMATS, default=None, help="source layout (default: detected)")
    p.add_argument("--split", default=None, help="davis: ImageSets/2017/<SPLIT>.txt; youtube-vos: SRC/<SPLIT>/")
    p.add_argument("--resolution", default="480p", help="davis: JPEGImages/<RESOLUTION> (default: 480p)")
    p.add_argument("--videos-per-file", type=int, default=16, metavar="N", help="videos per Parquet part (16)")
    p.add_argument("--fps", type=float, default=None, metavar="F", help="video: keep about F frames per second")
    p.add_argument("--max-side", type=int, default=None, metavar="S", help="video: shrink so the longer side <= S")
    p.add_argument("--jpeg-quality", type=int, default=90, metavar="Q", help="video: JPEG quality 1..100 (90)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger images (bombs)",
    )
    p.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec/s3fs options for SRC and OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")


def run(args: argparse.Namespace) -> int:
    config = IngestConfig(
        src=args.src,
        out=args.out,
        format=args.format,
        videos_per_file=args.videos_per_file,
        fps=args.fps,
        max_side=args.max_side,
        jpeg_quality=args.jpeg_quality,
        split=args.split,
        resolution=args.resolution,
        max_pixels=args.max_pixels,
        storage_options=parse_storage_options(args.storage_options),
        progress=False if args.no_progress else None,
    )
    result = ingest(config)
    prompts = f", {result.num_prompts} prompts in {result.prompts}" if result.prompts else ""
    print(
        f"ingested {result.num_videos} videos, {result.num_frames} frames ({result.format}) "
        f"into {len(result.frame_files)} files under {args.out}/frames{prompts}",
        file=sys.stdout,
    )
    return 0
