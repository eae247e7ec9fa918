"""Contact sheet of one video: evenly spaced frames with their masks overlaid, for a quick look at a run.

Each tile is a frame from the corpus, scaled to ``tile_width``, with every object's mask alpha-blended in its
DAVIS palette colour, outlined, and labelled with its object id at the mask's centroid. Tiles are laid out
``cols`` per row, left to right, top to bottom, and captioned with the frame index. If the corpus cannot be
read (no URL, missing, video not in it, undecodable frame) masks are drawn on black and the returned note
says why.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw

from rvos_batch import imaging, rle, storage
from rvos_batch.errors import RvosBatchError
from rvos_batch.maskstore import MaskSource, open_masks

ALPHA = 0.5  # weight of the mask colour in the blend


@dataclass(frozen=True)
class ContactSheet:
    image: Image.Image
    video_id: str
    frame_indices: tuple[int, ...]
    note: str | None = None  # why frames are black, if they are


def pick_frames(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over 0..num_frames-1, first and last included."""
    if num_frames <= 0 or count <= 0:
        return []
    count = min(count, num_frames)
    if count == 1:
        return [0]
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, count)})


def _video_frame_count(source: MaskSource, video_id: str, table: pa.Table) -> int | None:
    if source.videos is not None:
        rows = source.videos.to_table(filter=pc.field("video_id") == video_id, columns=["num_frames"])
        if rows.num_rows:
            return int(pc.max(rows.column("num_frames")).as_py())
    if table.num_rows:
        return int(pc.max(table.column("frame_index")).as_py()) + 1
    return None


def _load_frames(
    corpus: str | None, video_id: str, wanted: list[int], storage_options: dict[str, Any] | None
) -> tuple[dict[int, np.ndarray], int | None, str | None]:
    """(frame_index -> RGB, corpus frame count, note) for the ``wanted`` frames of ``video_id``."""
    if not corpus:
        return {}, None, "no corpus given (--corpus, or 'corpus' in OUT/run.json): masks drawn on black"
    from rvos_batch.corpus import CorpusReader

    try:
        reader = CorpusReader(corpus, storage_options)
        entry = next((e for e in reader.list_videos() if e.video_id == video_id), None)
    except (RvosBatchError, OSError, ValueError) as e:
        return {}, None, f"corpus {corpus} unavailable ({e}): masks drawn on black"
    if entry is None:
        return {}, None, f"video {video_id!r} is not in corpus {corpus}: masks drawn on black"
    frames: dict[int, np.ndarray] = {}
    bad: list[str] = []
    want = set(wanted)
    try:
        for rec in reader.iter_frames(entry) if want else ():
            if rec.frame_index in want:
                try:
                    frames[rec.frame_index] = imaging.decode_image(rec.image)
                except RvosBatchError as e:
                    bad.append(f"frame {rec.frame_index}: {e}")
                want.discard(rec.frame_index)
            if not want:
                break
    except (RvosBatchError, OSError, ValueError) as e:
        bad.append(str(e))
    note = f"some frames could not be read, drawn on black: {'; '.join(bad)[:500]}" if bad else None
    return frames, int(entry.num_frames), note


def _scaled_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` resized to ``size`` (w, h), nearest neighbour."""
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def render_tile(
    rgb: np.ndarray | None, rows: list[dict[str, Any]], frame_size: tuple[int, int], tile_width: int, caption: str
) -> Image.Image:
    """One tile: the frame (or black) scaled to ``tile_width``, masks blended, outlined and labelled.

    ``frame_size``: (height, width) of the masks; ``rows``: the frame's mask rows (MASK_SCHEMA dicts).
    """
    h, w = frame_size
    tile_h = max(1, round(h * tile_width / w))
    size = (tile_width, tile_h)
    if rgb is None:
        base = np.zeros((tile_h, tile_width, 3), dtype=np.float32)
    else:
        base = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    labels: list[tuple[float, float, str]] = []
    for row in sorted(rows, key=lambda r: (r["score"], r["object_id"])):
        mask = rle.decode({"size": [int(row["height"]), int(row["width"])], "counts": row["rle_counts"]})
        if not mask.any():
            continue
        colour = imaging.DAVIS_PALETTE[int(row["object_id"]) % 256].astype(np.float32)
        small = _scaled_mask(mask, size)
        base[small] = (1 - ALPHA) * base[small] + ALPHA * colour
        base[_contour(small)] = colour
        ys, xs = np.nonzero(mask)
        labels.append((xs.mean() * tile_width / w, ys.mean() * tile_h / h, str(row["object_id"])))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for x, y, text in labels:
        draw.text((x, y), text, fill="white", stroke_width=2, stroke_fill="black", anchor="mm")
    draw.text((4, 4), caption, fill="white", stroke_width=2, stroke_fill="black")
    return img


def contact_sheet(
    source_url: str,
    video_id: str,
    out: str | None = None,
    *,
    corpus: str | None = None,
    frames: int = 8,
    cols: int = 4,
    tile_width: int = 320,
    storage_options: dict[str, Any] | None = None,
) -> ContactSheet:
    """Build the contact sheet of ``video_id`` from the masks at ``source_url`` (OUT store or mask dataset).

    ``out``: also write the sheet there as PNG (local path or URL). ``corpus``: corpus URL for the frames
    (default: the "corpus" key of OUT/run.json). The sheet is ``min(cols, n) * tile_width`` wide and
    ``ceil(n / cols)`` tiles high, n = number of frames shown.
    """
    if frames < 1 or cols < 1 or tile_width < 8:
        raise RvosBatchError(f"frames and cols must be >= 1 and tile_width >= 8, got {frames}, {cols}, {tile_width}")
    source = open_masks(source_url, storage_options)
    table = source.masks.to_table(filter=pc.field("video_id") == video_id)
    if corpus is None and source.store is not None:
        corpus = (source.store.read_run() or {}).get("corpus")
    num_frames = _video_frame_count(source, video_id, table)
    if num_frames is None and not corpus:
        raise RvosBatchError(f"video {video_id!r} has no masks in {source_url} and no corpus was given")
    if num_frames is None:  # no masks and no status row: ask the corpus how long the video is
        _, num_frames, note = _load_frames(corpus, video_id, [], storage_options)
        if num_frames is None:
            raise RvosBatchError(f"video {video_id!r} is neither in {source_url} nor in the corpus ({note})")
    wanted = pick_frames(num_frames, frames)
    images, _, note = _load_frames(corpus, video_id, wanted, storage_options)
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        by_frame.setdefault(row["frame_index"], []).append(row)
    if table.num_rows:
        frame_size = (int(table.column("height")[0].as_py()), int(table.column("width")[0].as_py()))
    else:
        frame_size = next((im.shape[:2] for im in images.values()), (480, 854))  # nothing known: DAVIS 480p
    tiles = [
        render_tile(images.get(i), by_frame.get(i, []), frame_size, tile_width, f"{video_id} #{i}") for i in wanted
    ]
    cols = min(cols, len(tiles))
    rows_n = math.ceil(len(tiles) / cols)
    tile_h = tiles[0].height
    sheet = Image.new("RGB", (cols * tile_width, rows_n * tile_h))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * tile_width, (i // cols) * tile_h))
    result = ContactSheet(sheet, video_id, tuple(wanted), note)
    if out is not None:
        write_contact_sheet(result, out, storage_options)
    return result


def write_contact_sheet(sheet: ContactSheet, out: str, storage_options: dict[str, Any] | None = None) -> None:
    """Save the sheet as PNG at ``out`` (local path or URL), atomically."""
    buf = io.BytesIO()
    sheet.image.save(buf, format="PNG")
    fs, path = storage.get_fs(out, storage_options)
    storage.write_bytes_atomic(fs, path, buf.getvalue())
