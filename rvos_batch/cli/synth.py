"""rvos-batch synth OUT: write a synthetic DAVIS-2017-layout dataset (see rvos_batch.synth).

Objects are real silhouettes with real motion (tracks of shared/data/davis2017-val-osvos, found through
$RVOS_SHARED_DATA or shared/data beside the repository), filled with procedural textures and composited over a
panning, zooming textured background. --textures heldout uses texture families and colours never used by
--textures train, for a test set that differs from training in more than the seed. --photos adds real
appearance: some objects and backgrounds are filled with crops of real photographs or video frames instead.
"""

from __future__ import annotations

import argparse
import logging

from rvos_batch.synth import TEXTURE_SETS, SynthConfig, parse_size, write_dataset

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="local folder to write JPEGImages/, Annotations/, ImageSets/ into")
    p.add_argument("--videos", type=int, default=16, help="number of videos (default 16)")
    p.add_argument("--frames", type=int, default=24, help="frames per video (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", default="240x427", help="frame size HEIGHTxWIDTH (default 240x427)")
    p.add_argument("--textures", choices=TEXTURE_SETS, default="train", help="texture and colour set")
    p.add_argument("--max-objects", type=int, default=5, help="objects per video: 1..N (default 5)")
    p.add_argument(
        "--photos",
        metavar="PATH",
        help="folder of images or videos (or one file) whose crops fill some objects and backgrounds",
    )
    p.add_argument(
        "--photo-prob",
        type=float,
        default=0.5,
        help="with --photos: chance that a texture is a photograph crop (default 0.5)",
    )
    p.add_argument("--source", help="folder of real mask videos (default: $RVOS_SHARED_DATA or ../shared/data)")
    p.add_argument("--overwrite", action="store_true", help="write into OUT even if it already holds a dataset")


def run(args: argparse.Namespace) -> int:
    height, width = parse_size(args.size)
    cfg = SynthConfig(
        videos=args.videos,
        frames=args.frames,
        seed=args.seed,
        height=height,
        width=width,
        textures=args.textures,
        max_objects=args.max_objects,
        photos=args.photos,
        photo_prob=args.photo_prob,
    )
    names = write_dataset(
        args.out, cfg, source=args.source, overwrite=args.overwrite, progress=lambda n: log.debug("wrote %s", n)
    )
    look = f"{cfg.textures} textures" + (f" and photographs from {cfg.photos}" if cfg.photos else "")
    print(f"wrote {len(names)} videos x {cfg.frames} frames ({height}x{width}, {look}) to {args.out}")
    return 0
