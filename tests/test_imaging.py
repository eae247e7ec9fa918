"""imaging: RGB decoding of every common mode, the pixel limit checked from the header, truncated data refused
(even when LOAD_TRUNCATED_IMAGES is set elsewhere), JPEG draft decoding, and DAVIS palette PNG round trips."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from rvos_batch.errors import ImageDecodeError
from rvos_batch.imaging import (
    DAVIS_PALETTE,
    check_image,
    decode_image,
    encode_jpeg,
    encode_palette_png,
    image_size,
    read_palette_png,
)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth RGB gradient: compresses well in JPEG, so decoded pixels stay close to it."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=2).astype(np.uint8)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR claims ``width`` x ``height`` (pixel data is for 1x1)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    assert data[12:16] == b"IHDR"
    ihdr = bytes(data[12:29])  # type + 13 bytes of IHDR payload
    ihdr = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


# --------------------------------------------------------------------------------------------- palette


def test_davis_palette_known_colours_and_distinct() -> None:
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 5: (128, 0, 128)}
    for i, rgb in expected.items():
        assert tuple(DAVIS_PALETTE[i]) == rgb
    assert tuple(DAVIS_PALETTE[8]) == (64, 0, 0)
    assert tuple(DAVIS_PALETTE[255]) == (224, 224, 192)
    assert len({tuple(c) for c in DAVIS_PALETTE.tolist()}) == 256


def test_palette_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    data = encode_palette_png(ids)
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P" and img.size == (53, 37)
    assert np.array_equal(np.array(img.getpalette()[: 3 * 256]).reshape(256, 3), DAVIS_PALETTE)
    assert np.array_equal(read_palette_png(data), ids)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert np.array_equal(read_palette_png(path), ids)
    assert np.array_equal(read_palette_png(str(path)), ids)
    # int arrays in range are accepted; out of range / wrong rank are refused
    assert np.array_equal(read_palette_png(encode_palette_png(ids.astype(np.int64))), ids)
    with pytest.raises(ValueError, match="0..255"):
        encode_palette_png(np.full((2, 2), 256))
    with pytest.raises(ValueError, match="2-D"):
        encode_palette_png(np.zeros((2, 2, 1), np.uint8))


def test_read_palette_png_grey_and_rgb_annotations() -> None:
    ids = np.array([[0, 1, 2], [3, 255, 7]], dtype=np.uint8)
    assert np.array_equal(read_palette_png(_png(Image.fromarray(ids, mode="L"))), ids)
    rgb = DAVIS_PALETTE[ids]  # an annotation saved as RGB with DAVIS colours
    assert np.array_equal(read_palette_png(_png(Image.fromarray(rgb))), ids)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(read_palette_png(_png(Image.fromarray(rgba))), ids)
    bad = rgb.copy()
    bad[0, 0] = (1, 2, 3)
    with pytest.raises(ImageDecodeError, match=r"\(1, 2, 3\) is not in the DAVIS palette"):
        read_palette_png(_png(Image.fromarray(bad)))


# --------------------------------------------------------------------------------------------- decode


def test_decode_jpeg_and_png_rgb() -> None:
    rgb = _smooth()
    out = decode_image(encode_jpeg(rgb, quality=95))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3
    noise = _noise()
    assert np.array_equal(decode_image(_png(Image.fromarray(noise))), noise)


def test_decode_converts_modes_to_rgb() -> None:
    noise = _noise()
    grey = noise[..., 0]
    assert np.array_equal(decode_image(_png(Image.fromarray(grey, "L"))), np.repeat(grey[..., None], 3, 2))
    rgba = np.concatenate([noise, np.zeros_like(noise[..., :1])], axis=2)  # fully transparent: alpha dropped
    assert np.array_equal(decode_image(_png(Image.fromarray(rgba, "RGBA"))), noise)
    la = Image.fromarray(np.stack([grey, grey], axis=2), "LA")
    assert np.array_equal(decode_image(_png(la)), np.repeat(grey[..., None], 3, 2))
    ids = (noise[..., 0] % 4).astype(np.uint8)
    assert np.array_equal(decode_image(encode_palette_png(ids)), DAVIS_PALETTE[ids])
    one_bit = Image.fromarray(grey > 127).convert("1")
    assert set(np.unique(decode_image(_png(one_bit)))) <= {0, 255}


def test_decode_16bit_and_float_scaled_to_8bit() -> None:
    v16 = np.array([[0, 257, 65535], [32896, 1000, 65280]], dtype=np.uint16)
    img16 = Image.fromarray(v16)  # mode I;16
    assert img16.mode.startswith("I;16")
    out = decode_image(_png(img16))
    assert out.shape == (2, 3, 3)
    assert out[..., 0].tolist() == [[0, 1, 255], [128, 4, 254]]
    assert np.array_equal(out[..., 0], out[..., 2])
    as_i = Image.fromarray(v16.astype(np.int32))  # mode I (32-bit), read as 16-bit grey
    tiff = io.BytesIO()
    as_i.save(tiff, format="TIFF")
    assert decode_image(tiff.getvalue())[..., 1].tolist() == [[0, 1, 255], [128, 4, 254]]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    tiff = io.BytesIO()
    f.save(tiff, format="TIFF")
    assert decode_image(tiff.getvalue())[0, :, 0].tolist() == [0, 128, 255]


def test_draft_decodes_jpeg_at_reduced_scale() -> None:
    rgb = _smooth(480, 640)
    data = encode_jpeg(rgb)
    assert decode_image(data, draft=(160, 120)).shape == (120, 160, 3)
    assert decode_image(data, draft=(200, 130)).shape == (240, 320, 3)  # smallest scale still >= request
    assert decode_image(data).shape == (480, 640, 3)
    png = _png(Image.fromarray(rgb))
    assert decode_image(png, draft=(160, 120)).shape == (480, 640, 3)  # not a JPEG: draft ignored


# --------------------------------------------------------------------------------------------- refusals


def test_pixel_limit_checked_from_header() -> None:
    claim = _png_with_size(9000, 9000)  # 81 Mpx, over the 64 Mpx default, under PIL's own bomb threshold
    assert image_size(claim, max_pixels=10**9) == (9000, 9000)
    with pytest.raises(ImageDecodeError, match=r"81000000 pixels exceeds the limit of 64000000"):
        decode_image(claim)
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(_png_with_size(30000, 30000))  # PIL's own DecompressionBombError, reported our way
    small = encode_jpeg(_noise())
    with pytest.raises(ImageDecodeError, match=r"64x48 = 3072 pixels exceeds the limit of 1000"):
        decode_image(small, max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="limit of 1000"):
        check_image(small, max_pixels=1000)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_images_refused(kind: str, load_truncated: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = _noise(120, 160)
    data = encode_jpeg(rgb) if kind == "jpeg" else _png(Image.fromarray(rgb))
    cut = data[: len(data) // 2]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    assert image_size(cut) == (160, 120)  # the header is intact
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(cut)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(cut, draft=(20, 15))
    with pytest.raises(ImageDecodeError, match="truncated"):
        check_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # someone else's setting is left as it was


def test_garbage_and_empty_bytes_refused() -> None:
    for data in (b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20):
        with pytest.raises(ImageDecodeError, match="not a readable image"):
            decode_image(data)
        with pytest.raises(ImageDecodeError):
            image_size(data)


def test_check_image_returns_size_and_format() -> None:
    assert check_image(encode_jpeg(_noise())) == ((64, 48), "JPEG")
    assert check_image(_png(Image.fromarray(_noise()))) == ((64, 48), "PNG")


def test_encode_jpeg_validates_input() -> None:
    assert decode_image(encode_jpeg(_noise()[..., 0])).shape == (48, 64, 3)  # grey accepted
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_jpeg(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(np.zeros((4, 4, 3), np.uint8), quality=0)
