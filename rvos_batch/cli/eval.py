"""rvos-batch eval PRED GT --protocol semi-supervised|unsupervised: DAVIS-2017 J and F (see rvos_batch.evaluate).

PRED and GT are DAVIS-layout folders of palette PNGs (ROOT/<video>/<frame>.png, ROOT/Annotations/480p/<video>/
or ROOT/Annotations/<video>/), or mask datasets / labeling output stores (local or s3://). Every ground-truth
video is scored unless --videos is given. --json prints one JSON object (fractions, not percentages):
J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay, per_object {<video>_<id>: {J-Mean, F-Mean}}.
--bootstrap N adds how far those figures could move on other videos like these ("bootstrap": a 95% percentile
interval and the standard deviation of each, from N replicates that draw the scored videos with replacement).

YouTube-VOS seen/unseen figures: --seen FILE (one training category per line, a JSON list, or the training
meta.json) together with the ground truth's meta.json (found next to GT, or given with --meta).
"""

from __future__ import annotations

import argparse
import json
import logging
import math

from rvos_batch.evaluate import (
    DEFAULT_BOUND_TH,
    MAX_PROPOSALS,
    PROTOCOLS,
    SUMMARY_KEYS,
    EvaluationError,
    check_bootstrap_samples,
    evaluate,
)
from rvos_batch.storage import parse_storage_options

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", metavar="PRED", help="predictions: PNG folder, mask dataset or labeling output store")
    p.add_argument("gt", metavar="GT", help="ground truth: PNG folder (DAVIS or YouTube-VOS layout) or mask dataset")
    p.add_argument("--protocol", choices=PROTOCOLS, default="semi-supervised", help="default: semi-supervised")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--videos", nargs="+", metavar="ID", help="score only these videos")
    p.add_argument(
        "--missing",
        choices=["error", "empty"],
        default="error",
        help="a missing prediction video or frame: fail (default) or score it as an empty mask",
    )
    p.add_argument("--meta", metavar="JSON", help="YouTube-VOS meta.json with object categories (default: GT's)")
    p.add_argument("--seen", metavar="FILE", help="categories seen in training: text lines, JSON list or meta.json")
    p.add_argument("--bound-th", type=float, default=DEFAULT_BOUND_TH, help="F tolerance (fraction of diagonal)")
    p.add_argument("--max-proposals", type=int, default=MAX_PROPOSALS, help="unsupervised proposal id limit")
    p.add_argument("--workers", type=int, default=None, help="videos scored in parallel (default: up to 4)")
    p.add_argument("--storage-options", metavar="JSON", help="JSON object of fsspec/s3fs options")
    p.add_argument(
        "--bootstrap",
        type=_samples,
        metavar="N",
        help="also a 95%% interval of every summary figure: N bootstrap replicates drawing videos with replacement",
    )
    p.add_argument("--bootstrap-seed", type=int, default=0, metavar="S", help="the bootstrap's random seed (0)")


def _samples(text: str) -> int:
    """--bootstrap's N, checked before the scoring starts rather than after it."""
    try:
        return check_bootstrap_samples(int(text))
    except (ValueError, EvaluationError) as e:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is an integer >= 2 (bootstrap replicates)") from e


def _pct(v: float | None) -> str:
    return "   nan" if v is None or not math.isfinite(v) else f"{100 * v:6.1f}"


def _interval(v: list[float] | None) -> str:
    return "nan" if v is None else f"{100 * v[0]:.1f}-{100 * v[1]:.1f}"


def run(args: argparse.Namespace) -> int:
    result = evaluate(
        args.pred,
        args.gt,
        args.protocol,
        videos=args.videos,
        meta=args.meta,
        seen=args.seen,
        bound_th=args.bound_th,
        max_proposals=args.max_proposals,
        missing=args.missing,
        storage_options=parse_storage_options(args.storage_options),
        workers=args.workers,
        progress=lambda video: log.debug("scored %s", video),
    )
    out = result.to_json()
    if args.bootstrap is not None:
        out["bootstrap"] = result.bootstrap(args.bootstrap, seed=args.bootstrap_seed)
    if args.json:
        print(json.dumps(out, indent=1, allow_nan=False))
        return 0
    print(f"{args.protocol}: {out['num_objects']} objects in {out['num_videos']} videos (percent)")
    print("  ".join(f"{k:>8}" for k in SUMMARY_KEYS))
    print("  ".join(f"{_pct(out[k]):>8}" for k in SUMMARY_KEYS))
    if "bootstrap" in out:
        boot = out["bootstrap"]
        print(f"{100 * boot['level']:g}% interval, {boot['samples']} bootstrap replicates over videos: "
              + ", ".join(f"{k} {_interval(boot['interval'][k])}" for k in SUMMARY_KEYS))
    print(f"\n{'object':<32} {'J-Mean':>7} {'F-Mean':>7}")
    for name, entry in out["per_object"].items():
        print(f"{name:<32} {_pct(entry['J-Mean']):>7} {_pct(entry['F-Mean']):>7}")
    if "youtube_vos" in out:
        yt = out["youtube_vos"]
        print(
            "\nYouTube-VOS: "
            + "  ".join(f"{k} {_pct(yt[k])}" for k in ("J-seen", "J-unseen", "F-seen", "F-unseen", "overall"))
        )
    return 0
