"""Export masks as DAVIS palette PNGs: DEST/<video_id>/<frame_index:05d>.png, pixel value = object id.

Reads an OUT store (committed shards only) or a plain mask dataset folder (CORPUS/prompts). Within a frame,
objects are painted in ascending (score, object_id) order, so where masks overlap the pixel gets the object
with the highest score (ties: the highest id) and no pixel counts twice. Palette PNGs hold ids 1..255: a video
with another id fails with an error naming it.

Frames without any mask get an all-zero PNG only when the video's frame count is known (``num_frames`` in
OUT/videos); for a plain mask dataset only frames that have masks are written. Existing files in DEST are
overwritten, never deleted.

Video ids come from data and are not trusted as paths: an id containing '/', '\\', NUL or a control
character, '.', '..', an absolute or drive path, or one whose folder would resolve outside DEST (a symlink)
fails for that video only; the other videos are still exported. DEST is a local folder.
"""

from __future__ import annotations

import ntpath
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rvos_batch import imaging, rle
from rvos_batch.errors import RvosBatchError
from rvos_batch.maskstore import MaskSource, open_masks

MAX_PALETTE_ID = 255
_READ_COLUMNS = ["frame_index", "object_id", "height", "width", "rle_counts", "score"]


class UnsafeVideoIdError(RvosBatchError):
    """A video id that cannot be used as a folder name inside the export destination."""


@dataclass(frozen=True)
class VideoExport:
    """What happened to one video: frames written into ``directory``, or the error that stopped it."""

    video_id: str
    frames: int = 0
    directory: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ExportReport:
    dest: str
    videos: tuple[VideoExport, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> tuple[VideoExport, ...]:
        return tuple(v for v in self.videos if v.error is not None)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def frames(self) -> int:
        return sum(v.frames for v in self.videos)


def safe_video_dir(dest: str | os.PathLike[str], video_id: str) -> Path:
    """The folder for ``video_id`` directly inside ``dest``; raises UnsafeVideoIdError if it would not be."""
    if not isinstance(video_id, str) or not video_id:
        raise UnsafeVideoIdError(f"video id {video_id!r}: must be a non-empty string")
    bad = [c for c in ("/", "\\", "\x00") if c in video_id]
    if bad:
        raise UnsafeVideoIdError(f"video id {video_id!r}: contains {bad[0]!r}, not allowed in a folder name")
    if any(ord(c) < 32 or ord(c) == 127 for c in video_id):
        raise UnsafeVideoIdError(f"video id {video_id!r}: contains a control character")
    if video_id in (".", "..") or os.path.isabs(video_id) or ntpath.isabs(video_id) or ntpath.splitdrive(video_id)[0]:
        raise UnsafeVideoIdError(f"video id {video_id!r}: not a plain folder name")
    root = Path(dest).resolve()
    target = (root / video_id).resolve()
    if target.parent != root:
        raise UnsafeVideoIdError(f"video id {video_id!r}: its folder {target} is outside {root}")
    return root / video_id


def paint_frame(rows: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """A (height, width) uint8 id map from mask rows of one frame, painted in ascending (score, object_id)."""
    ids = np.zeros((height, width), dtype=np.uint8)
    for row in sorted(rows, key=lambda r: (r["score"], r["object_id"])):
        if not 1 <= row["object_id"] <= MAX_PALETTE_ID:
            raise RvosBatchError(f"object id {row['object_id']} cannot be painted (allowed: 1..{MAX_PALETTE_ID})")
        if (int(row["height"]), int(row["width"])) != (height, width):
            raise RvosBatchError(
                f"mask of object {row['object_id']} is {row['height']}x{row['width']}, frame is {height}x{width}"
            )
        mask = rle.decode({"size": [int(row["height"]), int(row["width"])], "counts": row["rle_counts"]})
        ids[mask] = row["object_id"]
    return ids


def _check_ids(video_id: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    ids = table.column("object_id")
    lo, hi = pc.min(ids).as_py(), pc.max(ids).as_py()
    if lo < 1 or hi > MAX_PALETTE_ID:
        value = hi if hi > MAX_PALETTE_ID else lo
        raise RvosBatchError(
            f"video {video_id!r}: object id {value} cannot be written to a palette PNG (allowed: 1..{MAX_PALETTE_ID})"
        )
    frames = table.column("frame_index")
    if pc.min(frames).as_py() < 0:
        raise RvosBatchError(f"video {video_id!r}: negative frame_index {pc.min(frames).as_py()}")


def _frame_size(video_id: str, table: pa.Table) -> tuple[int, int] | None:
    if table.num_rows == 0:
        return None
    sizes = set(zip(table.column("height").to_pylist(), table.column("width").to_pylist(), strict=True))
    if len(sizes) != 1:
        raise RvosBatchError(f"video {video_id!r}: masks of different sizes {sorted(sizes)} (height, width)")
    return next(iter(sizes))


def export_video(source: MaskSource, dest: str | os.PathLike[str], video_id: str, num_frames: int | None) -> int:
    """Write the PNGs of one video; returns how many frames were written."""
    folder = safe_video_dir(dest, video_id)
    table = source.masks.to_table(filter=pc.field("video_id") == video_id, columns=_READ_COLUMNS)
    _check_ids(video_id, table)
    size = _frame_size(video_id, table)
    if size is None:
        raise RvosBatchError(f"video {video_id!r}: no masks, so the frame size is unknown; nothing written")
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        by_frame.setdefault(row["frame_index"], []).append(row)
    frame_indices = set(by_frame)
    if num_frames is not None:
        frame_indices |= set(range(num_frames))
    folder.mkdir(parents=True, exist_ok=True)
    for frame_index in sorted(frame_indices):
        ids = paint_frame(by_frame.get(frame_index, []), *size)
        (folder / f"{frame_index:05d}.png").write_bytes(imaging.encode_palette_png(ids))
    return len(frame_indices)


def _video_frames(source: MaskSource) -> dict[str, tuple[int, str, str | None]]:
    """video_id -> (num_frames, status, error) from the store's video rows (empty for a plain dataset)."""
    if source.videos is None:
        return {}
    out: dict[str, tuple[int, str, str | None]] = {}
    for row in source.videos.to_table(columns=["video_id", "num_frames", "status", "error"]).to_pylist():
        prev = out.get(row["video_id"])
        if prev is None or row["num_frames"] > prev[0]:
            out[row["video_id"]] = (row["num_frames"], row["status"], row["error"])
    return out


def export_davis(
    source_url: str,
    dest: str | os.PathLike[str],
    *,
    video_ids: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ExportReport:
    """Export the masks at ``source_url`` (OUT store or mask dataset) to ``dest`` as DAVIS palette PNGs.

    ``video_ids``: only these videos (default: every video with masks or a status row). Per-video failures
    (unsafe id, id > 255, unknown video, failed labeling) are reported in the result, not raised.
    """
    source = open_masks(source_url, storage_options)
    status = _video_frames(source)
    present = set(pc.unique(source.masks.to_table(columns=["video_id"]).column("video_id")).to_pylist())
    known = present | set(status)
    wanted = sorted(known) if video_ids is None else list(dict.fromkeys(video_ids))
    Path(dest).mkdir(parents=True, exist_ok=True)
    results = []
    for video_id in wanted:
        if video_id not in known:
            results.append(VideoExport(video_id, error=f"video {video_id!r} is not in {source_url}"))
            continue
        num_frames, state, err = status.get(video_id, (None, "ok", None))
        if state != "ok" and video_id not in present:
            results.append(VideoExport(video_id, error=f"video {video_id!r} failed in the labeling run: {err}"))
            continue
        try:
            frames = export_video(source, dest, video_id, num_frames)
        except (RvosBatchError, OSError) as e:
            results.append(VideoExport(video_id, error=str(e)))
            continue
        results.append(VideoExport(video_id, frames, str(safe_video_dir(dest, video_id))))
    return ExportReport(str(dest), tuple(results))
