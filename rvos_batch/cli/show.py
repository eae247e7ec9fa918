"""rvos-batch show OUT --video ID --out preview.png: a contact sheet of one video with its masks overlaid.

Shows --frames evenly spaced frames, --cols per row; each mask is blended in its DAVIS palette colour,
outlined, and labelled with its object id. Frames come from --corpus, or from the corpus recorded in
OUT/run.json; without a readable corpus the masks are drawn on black (and the command says so).
OUT may also be a plain mask dataset folder such as CORPUS/prompts.
"""

from __future__ import annotations

import argparse
import sys

from rvos_batch.show import contact_sheet
from rvos_batch.storage import parse_storage_options


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "out", metavar="OUT", help="output store of a labeling run, or a mask dataset folder (local or s3://)"
    )
    p.add_argument("--video", required=True, metavar="ID", help="video id to show")
    p.add_argument("--out", dest="png", required=True, metavar="PNG", help="where to write the contact sheet (PNG)")
    p.add_argument("--corpus", metavar="URL", help="corpus with the frames (default: 'corpus' in OUT/run.json)")
    p.add_argument("--frames", type=int, default=8, metavar="N", help="number of frames to show (default: 8)")
    p.add_argument("--cols", type=int, default=4, metavar="C", help="tiles per row (default: 4)")
    p.add_argument("--tile-width", type=int, default=320, metavar="PX", help="width of one tile (default: 320)")
    p.add_argument("--storage-options", metavar="JSON", help="JSON object of fsspec/s3fs options for OUT and corpus")


def run(args: argparse.Namespace) -> int:
    options = parse_storage_options(args.storage_options)
    sheet = contact_sheet(
        args.out,
        args.video,
        args.png,
        corpus=args.corpus,
        frames=args.frames,
        cols=args.cols,
        tile_width=args.tile_width,
        storage_options=options,
    )
    if sheet.note:
        print(f"rvos-batch show: {sheet.note}", file=sys.stderr)
    w, h = sheet.image.size
    print(f"wrote {args.png}: {len(sheet.frame_indices)} frames of {args.video!r}, {w}x{h}")
    return 0
