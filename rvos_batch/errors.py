"""Error types shared by every stage. Each message names the file, video or field and what is allowed."""


class RvosBatchError(Exception):
    """Base class for errors a user can act on; the CLI prints them without a traceback."""


class CorpusError(RvosBatchError):
    """A corpus (frames/ or prompts/) breaks its contract: schema, ordering, contiguity, unreadable file."""


class InputLayoutError(RvosBatchError):
    """An ingest source folder does not have the layout its --format promises."""


class ImageDecodeError(RvosBatchError):
    """Image bytes could not be decoded (corrupt, truncated, too large, unsupported mode)."""


class RLEError(RvosBatchError, ValueError):
    """Malformed COCO RLE (bad counts string, counts not summing to h*w, negative size)."""


class MaskStoreError(RvosBatchError):
    """A mask store (OUT/) is inconsistent, or a run would mix configurations."""


class CheckpointError(RvosBatchError):
    """A model checkpoint is missing, tampered with (checksum), or does not match the model (keys, shapes)."""
