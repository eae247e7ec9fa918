"""Score a model end to end on a DAVIS-layout folder: ingest -> label (the job's worker) -> export -> DAVIS eval.

    .venv/bin/python scripts/evaluate_model.py HELDOUT --model default --mode one-shot --json

Prints (or writes with --out) the DAVIS figures: semi-supervised protocol for one-shot, unsupervised for
zero-shot. The labeling goes through the same ShardWorker the Ray actors run, in this process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from rvos_batch.cli import size_arg
from rvos_batch.evaluate import evaluate
from rvos_batch.export import export_davis
from rvos_batch.ingest import IngestConfig, ingest
from rvos_batch.job.config import AUTO_TRACKER, LabelConfig, resolve_tracker
from rvos_batch.job.worker import run_in_process


def score(data: str, model: str, mode: str, work: Path, batch_videos: int = 4,
          input_size: tuple[int, int] | None = None, tracker: str | None = AUTO_TRACKER,
          appearance_check: bool = True, appearance_refine: float = 2.0, appearance_filter: int = 4,
          appearance_levels: float = 0.6, auto_levels: float = 0.0) -> dict:
    corpus = work / "corpus"
    if not (corpus / "frames").exists():
        ingest(IngestConfig(src=data, out=str(corpus), format="davis", progress=False))
    tracker = resolve_tracker(tracker, mode, model)
    out = work / f"out-{mode}{'-tracked' if tracker else ''}"
    cfg = LabelConfig(corpus=str(corpus), out=str(out), mode=mode, model=model, batch_videos=batch_videos,
                      input_size=input_size, tracker=tracker, appearance_check=appearance_check,
                      appearance_refine=appearance_refine, appearance_filter=appearance_filter,
                      appearance_levels=appearance_levels, auto_levels=auto_levels, overwrite=True)
    t0 = time.perf_counter()
    results = run_in_process(cfg)
    seconds = time.perf_counter() - t0
    frames = sum(r.frames for r in results)
    pngs = work / f"png-{out.name.removeprefix('out-')}"
    export_davis(str(out), pngs)
    protocol = "semi-supervised" if mode == "one-shot" else "unsupervised"
    gt = Path(data) / "Annotations" / "480p"
    summary = evaluate(str(pngs), str(gt), protocol=protocol, missing="empty").summary()
    check = cfg.appearance_config()
    summary.update({"mode": mode, "model": model, "tracker": tracker,
                    "appearance": check.record() if check is not None else None,
                    "levels": asdict(stretch) if (stretch := cfg.levels_config()) is not None else None,
                    "input_size": list(input_size) if input_size else None,
                    "frames": frames, "label_seconds": round(seconds, 2),
                    "frames_per_second": round(frames / seconds, 2) if seconds else None})
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="DAVIS-layout folder with JPEGImages/480p and Annotations/480p")
    p.add_argument("--model", default="default")
    p.add_argument("--mode", choices=("zero-shot", "one-shot"), required=True)
    p.add_argument("--input-size", type=size_arg, default=None, metavar="HxW",
                   help="label at this size instead of the model's own (as rvos-batch label --input-size)")
    p.add_argument("--tracker", default=AUTO_TRACKER, help="zero-shot: a one-shot model following what it finds, "
                   "'none' for none (as rvos-batch label --tracker; default auto: the shipped one with the shipped "
                   "zero-shot model)")
    p.add_argument("--no-appearance-check", action="store_true", help="as rvos-batch label --no-appearance-check")
    p.add_argument("--appearance-refine", type=float, default=2.0, metavar="K",
                   help="as rvos-batch label --appearance-refine (default 2)")
    p.add_argument("--appearance-filter", type=int, default=4, metavar="R",
                   help="as rvos-batch label --appearance-filter (default 4)")
    p.add_argument("--appearance-levels", type=float, default=0.6, metavar="R",
                   help="as rvos-batch label --appearance-levels (default 0.6; 0: off)")
    p.add_argument("--auto-levels", type=float, default=0.0, metavar="R",
                   help="as rvos-batch label --auto-levels (default 0: off)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="rvos-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    s = score(args.data, args.model, args.mode, work, input_size=args.input_size, tracker=args.tracker,
              appearance_check=not args.no_appearance_check, appearance_refine=args.appearance_refine,
              appearance_filter=args.appearance_filter, appearance_levels=args.appearance_levels,
              auto_levels=args.auto_levels)
    if args.json:
        print(json.dumps(s))
    else:
        for k in ("J&F-Mean", "J-Mean", "F-Mean", "J-Recall", "F-Recall", "frames_per_second"):
            print(f"{k:>18}: {s.get(k)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
