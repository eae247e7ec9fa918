"""Queries over a labeling output store OUT: each is one short pyarrow dataset expression.

Every function reads committed shards only (through :class:`rvos_batch.maskstore.MaskStore`). The plain
pyarrow equivalent, which also works without rvos_batch installed, is::

    import pyarrow.dataset as ds, pyarrow.compute as pc
    masks = ds.dataset("OUT/masks")            # pyarrow skips the _tmp-* files
    masks.to_table(filter=pc.field("video_id") == "bear")
    masks.to_table(filter=(pc.field("object_id") == 3)
                   & (pc.field("area") > pc.field("height") * pc.field("width") * 0.01))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rvos_batch import rle
from rvos_batch.maskstore import MaskStore, sort_masks


def video_masks(out: str, video_id: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """All masks of ``video_id``, sorted by (frame_index, object_id)."""
    masks = MaskStore(out, storage_options).masks_dataset()
    return sort_masks(masks.to_table(filter=pc.field("video_id") == video_id))


def frames_where(
    out: str,
    video_id: str | None = None,
    object_id: int = 3,
    min_area_fraction: float = 0.01,
    storage_options: dict[str, Any] | None = None,
) -> pa.Table:
    """Mask rows of ``object_id`` covering more than ``min_area_fraction`` of their frame (area > f*h*w).

    ``video_id``: restrict to one video (default: all videos).
    """
    expr = (pc.field("object_id") == object_id) & (
        pc.field("area") > pc.field("height") * pc.field("width") * float(min_area_fraction)
    )
    if video_id is not None:
        expr = (pc.field("video_id") == video_id) & expr
    masks = MaskStore(out, storage_options).masks_dataset()
    return sort_masks(masks.to_table(filter=expr))


def videos(out: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The per-video status rows (VIDEO_SCHEMA) of committed shards, sorted by video_id."""
    table = MaskStore(out, storage_options).videos_dataset().to_table()
    return table.sort_by("video_id") if table.num_rows > 1 else table


def decode_mask(row_or_table: pa.Table | pa.RecordBatch | dict[str, Any], index: int = 0) -> np.ndarray:
    """The (height, width) bool mask of one mask row: a dict (``table.to_pylist()[i]``) or row ``index``."""
    if isinstance(row_or_table, (pa.Table, pa.RecordBatch)):
        if not 0 <= index < row_or_table.num_rows:
            raise IndexError(f"row {index} out of range for a table of {row_or_table.num_rows} rows")
        row = {name: row_or_table.column(name)[index].as_py() for name in ("height", "width", "rle_counts")}
    else:
        row = row_or_table
    return rle.decode({"size": [int(row["height"]), int(row["width"])], "counts": row["rle_counts"]})
