"""Fault injection for the chaos tests and the nightly script: off unless ``RVOS_BATCH_FAULTS`` is set.

``RVOS_BATCH_FAULTS`` is a JSON object of rules; a rule fires when a worker reaches its point:
    {"exit_in_shard": [3], "after_frames": 5}    the actor process exits (os._exit) in shard 3 after 5 frames
    {"exit_before_marker": [2]}                  shard 2's data files are written, then the process exits
                                                 before its commit marker (MaskStore.commit_shard)
    {"raise_in_shard": [1]}                      processing shard 1 raises (a shard-level error)
    "action": "hold", "flag": PATH               instead of exiting, write PATH (JSON with the pid, point and
                                                 shard) and block there forever, so that a test can kill the
                                                 driver while a worker sits exactly at that point
The variable reaches Ray actors through the environment the driver starts its local Ray with.
Production code calls :func:`fault_point`; with the variable unset it is a dictionary lookup.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "RVOS_BATCH_FAULTS"
EXIT_CODE = 17


def _rules() -> dict[str, Any]:
    text = os.environ.get(ENV)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _fire(rules: dict[str, Any], point: str, shard_id: int) -> None:
    """Die as a killed process would (no cleanup, no exception), or hold still at the point."""
    if rules.get("action") == "hold":
        flag = rules.get("flag")
        if flag:
            tmp = f"{flag}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "point": point, "shard": shard_id}, f)
            os.replace(tmp, flag)
        while True:
            time.sleep(3600)
    os._exit(EXIT_CODE)


def fault_point(point: str, shard_id: int, frames: int = 0) -> None:
    """Fire the configured fault for ``point`` ("frame", "shard_start", "before_marker") in ``shard_id``."""
    rules = _rules()
    if not rules:
        return
    if point == "frame" and shard_id in rules.get("exit_in_shard", []) and frames >= int(rules.get("after_frames", 0)):
        _fire(rules, point, shard_id)
    if point == "before_marker" and shard_id in rules.get("exit_before_marker", []):
        _fire(rules, point, shard_id)
    if point == "shard_start" and shard_id in rules.get("raise_in_shard", []):
        raise RuntimeError(f"injected fault in shard {shard_id} ({ENV})")
