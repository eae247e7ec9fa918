"""Arrow schemas of everything rvos_batch reads and writes, and the checks that enforce them.

frames/  (the corpus): one row per frame, rows of a video contiguous and in frame order, in one file.
masks/   (labels and prompts): one row per object per frame, sorted by (video_id, frame_index, object_id).
videos/  (per-video status of a labeling run): one row per video.
"""

from __future__ import annotations

import pyarrow as pa

from rvos_batch.errors import CorpusError

FRAME_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("source", pa.string()),
    ]
)
FRAME_REQUIRED = ("video_id", "frame_index", "image")
FRAME_OPTIONAL = ("width", "height", "source")

MASK_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("object_id", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("rle_counts", pa.string(), nullable=False),
        pa.field("area", pa.int64(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)

VIDEO_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("num_objects", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
        pa.field("error", pa.string()),
        pa.field("seconds", pa.float64(), nullable=False),
    ]
)

# Row-group sizes: small enough that min/max statistics on video_id, frame_index, area and score let
# filters skip data, large enough that Parquet overhead stays small.
MASK_ROW_GROUP_ROWS = 16_384
FRAME_ROW_GROUP_ROWS = 64  # frames are large (encoded images): stream a long video in small pieces


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    # Accept the large_/view variants Arrow writers produce, they read the same.
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_string_view(actual)
    if pa.types.is_binary(expected):
        return pa.types.is_binary(actual) or pa.types.is_large_binary(actual) or pa.types.is_binary_view(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual)
    if pa.types.is_list(expected) or pa.types.is_fixed_size_list(expected):
        return (
            pa.types.is_list(actual) or pa.types.is_fixed_size_list(actual) or pa.types.is_large_list(actual)
        ) and pa.types.is_floating(actual.value_type)
    return False


def check_schema(schema: pa.Schema, expected: pa.Schema, required: tuple[str, ...] | None, where: str) -> None:
    """Raise CorpusError naming ``where`` (a file) and the column if ``schema`` does not fit ``expected``.

    ``required``: columns that must be present (default: all of ``expected``); the others are checked only
    when present. Extra columns are allowed.
    """
    required = tuple(expected.names) if required is None else required
    for name in required:
        if schema.get_field_index(name) < 0:
            raise CorpusError(f"{where}: missing required column {name!r} (have {schema.names})")
    for field in expected:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            continue
        actual = schema.field(idx).type
        if not _type_ok(actual, field.type):
            raise CorpusError(f"{where}: column {field.name!r} has type {actual}, expected {field.type}")
