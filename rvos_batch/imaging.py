"""Image bytes <-> numpy arrays: frame decoding (RGB uint8), DAVIS palette PNG masks, JPEG encoding.

Every decode checks the pixel count from the header before touching pixel data (decompression bombs) and
refuses truncated or corrupt data with :class:`~rvos_batch.errors.ImageDecodeError`; it never relies on
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (if some other code set it, it is switched off while we load).
EXIF orientation is ignored: pixels come out as stored, so the header size equals the decoded shape.
Only the raster formats in :data:`IMAGE_FORMATS` are opened: Pillow would otherwise try some forty formats on
untrusted bytes, among them EPS, whose loader runs Ghostscript on the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from rvos_batch.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = 64_000_000  # 64 Mpx: far above any video frame, far below what exhausts memory
# Formats a frame or an annotation may be in (Pillow format names); anything else is "not a readable image".
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")

_truncation_lock = threading.Lock()


def davis_palette() -> np.ndarray:
    """The 256-colour DAVIS / PASCAL VOC palette, uint8 (256, 3).

    Colour of index ``i``: bits 0, 1, 2 of ``i`` go to the most significant bit of R, G, B; bits 3, 4, 5 to
    the next bit; and so on (index 1 is dark red (128, 0, 0), 2 dark green, 3 olive, ...).
    """
    idx = np.arange(256, dtype=np.int64)
    out = np.zeros((256, 3), dtype=np.int64)
    for level in range(8):  # level-th group of 3 bits of the index -> bit (7 - level) of each channel
        for channel in range(3):
            bit = (idx >> (3 * level + channel)) & 1
            out[:, channel] |= bit << (7 - level)
    return out.astype(np.uint8)


DAVIS_PALETTE = davis_palette()
DAVIS_PALETTE.setflags(write=False)


def _describe(data: bytes | str | os.PathLike[str]) -> str:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return f"image ({len(data)} bytes)"
    return str(data)


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated data even if another library set LOAD_TRUNCATED_IMAGES."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _truncation_lock:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _open(data: bytes | str | os.PathLike[str], max_pixels: int) -> Image.Image:
    """Open (header only) and enforce the pixel limit."""
    what = _describe(data)
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else Path(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(source, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{what}: refused, too many pixels ({e}); limit is {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{what}: not a readable image (not {', '.join(IMAGE_FORMATS)}, or its header is corrupt)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{what}: not a readable image ({e})") from None
    except Exception as e:  # a decoder plugin tripping over hostile bytes (struct.error, IndexError, ...)
        raise ImageDecodeError(f"{what}: not a readable image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{what}: invalid size {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"{what}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels (decompression bomb?)"
        )
    return img


def _load(img: Image.Image, what: str) -> None:
    try:
        with _strict_truncation():
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{what}: corrupt or truncated image data ({e})") from None
    except Exception as e:  # as in _open: whatever the decoder raises on hostile data is this image's error
        raise ImageDecodeError(f"{what}: corrupt image data ({type(e).__name__}: {e})") from None


def image_size(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) read from the header only; ImageDecodeError if unreadable or over ``max_pixels``."""
    with _open(data, max_pixels) as img:
        return img.size


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[tuple[int, int], str]:
    """Fully decode ``data`` cheaply to prove it is a complete image; return ((width, height), format).

    JPEGs are decoded at 1/8 scale (libjpeg still reads the whole entropy-coded stream, so truncation is
    caught) which makes this several times cheaper than :func:`decode_image`.
    """
    what = _describe(data)
    with _open(data, max_pixels) as img:
        size, fmt = img.size, img.format or "?"
        if img.format == "JPEG":
            img.draft("RGB", (1, 1))
        _load(img, what)
    return size, fmt


def _to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any PIL mode; alpha is dropped, 16-bit and float are scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (PNG/TIFF) grey: map 0..65535 linearly to 0..255; 32-bit "I" is read as 16-bit too
        # (that is what 16-bit PNGs decode to in older Pillow), values outside are clipped.
        v = np.asarray(img).astype(np.int64)
        grey = ((np.clip(v, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        # float images: [0, 1] if they fit in it, else taken as 0..255 and clipped.
        v = np.asarray(img, dtype=np.float64)
        v = np.nan_to_num(v, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if v.size and v.min() >= 0.0 and v.max() <= 1.0 else 1.0
        grey = np.clip(np.rint(v * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode image bytes to RGB uint8 (H, W, 3).

    ``draft=(w, h)``: for JPEGs, let libjpeg decode at the smallest 1/1, 1/2, 1/4 or 1/8 scale that is still
    at least (w, h) (much faster for thumbnails or models that downscale anyway); ignored for other formats.
    Grey, grey+alpha, RGBA, palette, CMYK, 16-bit and float images are converted to RGB (alpha dropped).
    Raises ImageDecodeError for unreadable, corrupt, truncated or over-``max_pixels`` data.
    """
    what = _describe(data)
    with _open(data, max_pixels) as img:
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (int(draft[0]), int(draft[1])))
        _load(img, what)
        try:
            out = _to_rgb(img)
        except (OSError, ValueError) as e:
            raise ImageDecodeError(f"{what}: cannot convert mode {img.mode} to RGB ({e})") from None
    return np.ascontiguousarray(out)


def _palette_index(rgb: np.ndarray, what: str) -> np.ndarray:
    """Map RGB annotation colours back to DAVIS palette indices."""
    h, w, _ = rgb.shape
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal = DAVIS_PALETTE.astype(np.int64)
    pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]  # all 256 DAVIS colours are distinct
    lookup = dict(zip(pal_key.tolist(), range(256), strict=True))
    colours, inverse = np.unique(key.reshape(-1), return_inverse=True)
    ids = np.empty(len(colours), dtype=np.uint8)
    for i, c in enumerate(colours.tolist()):
        if c not in lookup:
            raise ImageDecodeError(
                f"{what}: RGB colour {(c >> 16, (c >> 8) & 255, c & 255)} is not in the DAVIS palette; "
                "RGB annotations must use DAVIS palette colours (or save them as palette/grey PNGs)"
            )
        ids[i] = lookup[c]
    return ids[inverse].reshape(h, w)


def read_palette_png(
    data_or_path: bytes | str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Object ids uint8 (H, W) of an annotation image.

    Palette ("P") images give their palette indices, grey ("L", "1") images their values, and RGB/RGBA
    images are mapped through the DAVIS palette (a colour outside it raises ImageDecodeError).
    """
    what = _describe(data_or_path)
    with _open(data_or_path, max_pixels) as img:
        _load(img, what)
        mode = img.mode
        if mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if mode == "PA":
            return np.array(img.getchannel(0), dtype=np.uint8)
        if mode == "LA":
            return np.array(img.getchannel("L"), dtype=np.uint8)
        if mode == "1":
            return np.array(img, dtype=np.uint8)
        if mode.startswith("I"):
            v = np.asarray(img).astype(np.int64)
            if v.size and (v.min() < 0 or v.max() > 255):
                raise ImageDecodeError(
                    f"{what}: {mode} annotation has values in [{v.min()}, {v.max()}]; object ids must be 0..255"
                )
            return v.astype(np.uint8)
        if mode in ("RGB", "RGBA"):
            return _palette_index(np.asarray(img.convert("RGB"), dtype=np.uint8), what)
        raise ImageDecodeError(f"{what}: annotation mode {mode} not supported (expected P, L, 1, RGB or RGBA)")


def encode_palette_png(ids: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) object-id map with the DAVIS palette (pixel value = object id, 0..255)."""
    arr = np.asarray(ids)
    if arr.ndim != 2:
        raise ValueError(f"ids must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "biu":
            raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"ids must be in 0..255, got range [{arr.min()}, {arr.max()}]")
        arr = arr.astype(np.uint8)
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
    img.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def fit_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) shrunk, aspect kept, so that the longer side is at most ``max_side`` (None: unchanged)."""
    if max_side is None or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 (H, W, 3) array (or grey (H, W)); ``quality`` 1..100."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got dtype {arr.dtype}")
    if not (arr.ndim == 3 and arr.shape[2] == 3) and arr.ndim != 2:
        raise ValueError(f"rgb must have shape (H, W, 3) or (H, W), got {arr.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
