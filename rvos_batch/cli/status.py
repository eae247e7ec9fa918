"""Show the progress of a labeling run: shards total, committed, failed, pending; videos; frames; masks."""

from __future__ import annotations

import argparse
import json

from rvos_batch.storage import parse_storage_options


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="the labeling run's output folder or s3:// prefix")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec/s3fs options as JSON")


def run_status(out: str, storage_options: dict | None = None) -> dict:
    """Counts read from OUT's plan, commit markers and failure records (committed data only)."""
    from rvos_batch.errors import MaskStoreError
    from rvos_batch.maskstore import MaskStore

    store = MaskStore(out, storage_options=storage_options)
    run = store.read_run()
    if run is None:
        raise MaskStoreError(f"{out} holds no labeling run (no run.json)")
    committed = store.committed_shards()
    failed = {k: v for k, v in store.failed_shards().items() if k not in committed}
    total = int(run.get("shards_total", 0))
    stats = [m.get("stats", {}) for m in committed.values()]
    return {
        "out": out,
        "shards_total": total,
        "shards_done": len(committed),
        "shards_failed": len(failed),
        "shards_pending": max(0, total - len(committed) - len(failed)),
        "videos_total": int(run.get("videos_total", 0)),
        "videos_ok": sum(int(s.get("videos_ok", 0)) for s in stats),
        "videos_failed": sum(int(s.get("videos_failed", 0)) for s in stats),
        "frames": sum(int(s.get("frames", 0)) for s in stats),
        "masks": sum(int(s.get("masks", 0)) for s in stats),
        "mode": run.get("config", {}).get("mode"),
        "model": run.get("model", {}).get("name"),
        "tracker": (run.get("model", {}).get("tracker") or {}).get("name"),  # zero-shot: the model following its finds
        "auto_levels": (run.get("model", {}).get("levels") or {}).get("range"),  # --auto-levels R, None when off
        "failed_shard_errors": {str(k): v.get("error") for k, v in sorted(failed.items())},
    }


def run(args: argparse.Namespace) -> int:
    s = run_status(args.out, parse_storage_options(args.storage_options))
    if args.json:
        print(json.dumps(s))
        return 0
    tracker = f", tracker {s['tracker']}" if s["tracker"] else ""
    levels = f", auto-levels {s['auto_levels']}" if s["auto_levels"] else ""
    print(f"{s['out']}: {s['mode']} with {s['model']}{tracker}{levels}")
    print(f"shards: {s['shards_done']}/{s['shards_total']} committed, {s['shards_failed']} failed, "
          f"{s['shards_pending']} pending")
    print(f"videos: {s['videos_ok']} ok, {s['videos_failed']} failed (of {s['videos_total']})")
    print(f"frames: {s['frames']}   masks: {s['masks']}")
    for sid, err in s["failed_shard_errors"].items():
        print(f"  shard {sid} failed: {err}")
    return 0
