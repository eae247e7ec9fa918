"""Synthetic DAVIS-2017-layout datasets whose objects have real silhouettes and real motion.

Object tracks come from real mask videos (shared/data/davis2017-val-osvos: 30 DAVIS videos, pixel = object id):
each synthetic video takes 1 to ``max_objects`` tracks, possibly from different source videos, scales, places
and maybe mirrors each, and may shift it in time so that it enters after the first frame or leaves before the
last. Each object is filled with a procedural texture in its own colours (the texture moves with the object),
composited in z-order over a textured background that pans and zooms over time. Later objects occlude earlier
ones and the annotation holds the visible pixels only: pixel value k is object k (1..K, in z-order), 0 is
background. Objects that end up with fewer than ``min_visible_pixels`` visible pixels in every frame are
dropped before ids are assigned, so ids are always 1..K.

Texture families and colour schemes come in two disjoint sets: ``train`` (smooth noise, stripes, checkers,
gradients; saturated, bright colours) and ``heldout`` (rings, plaids, waves, posterised cells, speckle; pastel
or dark colours; the key colours of a texture come from HSV ranges disjoint from the training ones). A
held-out test set made with another seed and ``textures="heldout"`` shares no texture family and no key colour
with any training set.

``photos`` (a folder of images or video files, or one such file) adds real appearance: with probability
``photo_prob`` an object's texture or the background is a crop of a real photograph (or of a video frame) at a
random zoom instead of a procedural texture. Photographs have no texture family and no colour scheme: a
training set made with them still shares no procedural family with a ``heldout`` set, but its photographs can
hold any colour. Without ``photos`` the random stream, and so every byte, is as before.

Layout written (DAVIS 2017)::

    OUT/JPEGImages/480p/<video>/00000.jpg     RGB frames, ``height`` x ``width`` (default 240x427)
    OUT/Annotations/480p/<video>/00000.png    palette PNG, pixel value = object id
    OUT/ImageSets/2017/train.txt              the video names, one per line

Everything is a function of the config: the same seed gives the same bytes. Video i draws from its own random
stream (seed, i), so the first N videos of a larger set are the same as a set of N.

The source masks are found through ``$RVOS_SHARED_DATA`` (the shared/data folder, or the
davis2017-val-osvos folder itself) or the ``shared/data`` folder beside the repository.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rvos_batch import imaging
from rvos_batch.errors import InputLayoutError, RvosBatchError

SOURCE_NAME = "davis2017-val-osvos"
TEXTURE_SETS = ("train", "heldout")
MAX_SOURCE_FILL = 0.5  # a source mask covering more of its frame than this is a segmentation failure, not a shape
SOURCE_DOWNSCALE = 2  # source masks are 480 rows; objects are drawn at <= ~240 rows, so half resolution is enough


@dataclass(frozen=True)
class SynthConfig:
    videos: int = 16
    frames: int = 24
    seed: int = 0
    height: int = 240
    width: int = 427
    textures: str = "train"  # "train" or "heldout"
    min_objects: int = 1
    max_objects: int = 5
    enter_leave_prob: float = 0.35  # per object (not the first): chance to enter late, and chance to leave early
    min_visible_pixels: int = 24
    jpeg_quality: int = 90
    photos: str | None = None  # folder of images/videos, or one file: real-appearance textures (see the module doc)
    photo_prob: float = 0.5  # chance that a texture is a photograph crop, when ``photos`` is given

    def __post_init__(self) -> None:
        if self.videos < 1 or self.frames < 1:
            raise RvosBatchError(f"synth: videos and frames must be >= 1, got {self.videos} and {self.frames}")
        if self.height < 16 or self.width < 16:
            raise RvosBatchError(f"synth: size must be at least 16x16, got {self.height}x{self.width}")
        if self.textures not in TEXTURE_SETS:
            raise RvosBatchError(f"synth: textures {self.textures!r} not allowed; use one of {TEXTURE_SETS}")
        if not 1 <= self.min_objects <= self.max_objects <= 255:
            raise RvosBatchError(
                f"synth: need 1 <= min_objects <= max_objects <= 255, got {self.min_objects}, {self.max_objects}"
            )
        if not 0.0 <= self.photo_prob <= 1.0:
            raise RvosBatchError(f"synth: photo_prob must be in [0, 1], got {self.photo_prob}")


def parse_size(text: str) -> tuple[int, int]:
    """'240x427' -> (240, 427): height x width."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RvosBatchError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 240x427") from None
    return h, w


# --------------------------------------------------------------------------------------------- source tracks


def find_source(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder of real mask videos: ``path`` if given, else ``$RVOS_SHARED_DATA`` if set, else
    ``shared/data`` beside the repository. Each may name the davis2017-val-osvos folder or its parent."""
    if path:
        bases, what = [Path(path)], "the given source"
    elif os.environ.get("RVOS_SHARED_DATA"):
        bases, what = [Path(os.environ["RVOS_SHARED_DATA"])], "RVOS_SHARED_DATA"
    else:
        repo = Path(__file__).resolve().parents[1]
        bases, what = [repo.parent / "shared" / "data", repo / "shared" / "data"], "the default location"
    candidates = [c for b in bases for c in (b / SOURCE_NAME, b)]
    for c in candidates:
        if c.is_dir() and any(p.is_dir() and any(p.glob("*.png")) for p in c.iterdir()):
            return c
    raise InputLayoutError(
        f"real mask videos ({SOURCE_NAME}/<video>/<frame>.png) not found in {what}: looked in "
        f"{', '.join(str(c) for c in candidates)}. Point RVOS_SHARED_DATA (or --source) at the shared/data folder."
    )


class _Sources:
    """Source mask videos at half resolution, loaded on first use and kept in a small LRU cache."""

    def __init__(self, root: Path, cache_size: int = 8) -> None:
        self.root = root
        self.names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.png")))
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def video(self, name: str) -> np.ndarray:
        """(T, H/2, W/2) uint8 ids of source video ``name``."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        frames = sorted((self.root / name).glob("*.png"))
        ids = np.stack([imaging.read_palette_png(p)[::SOURCE_DOWNSCALE, ::SOURCE_DOWNSCALE] for p in frames])
        ids[ids == 255] = 0
        self._cache[name] = ids
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return ids


# --------------------------------------------------------------------------------------------- textures


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, axis=-1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[i, np.arange(len(h))] * 255


def _colours(rng: np.random.Generator, n: int, scheme: str) -> np.ndarray:
    """(n, 3) float RGB 0..255. train: saturated and bright; heldout: pastel or dark (disjoint in HSV)."""
    h = rng.random(n)
    if scheme == "train":
        s, v = rng.uniform(0.55, 1.0, n), rng.uniform(0.55, 1.0, n)
    else:
        pastel = rng.random(n) < 0.5
        s = np.where(pastel, rng.uniform(0.05, 0.45, n), rng.uniform(0.3, 1.0, n))
        v = np.where(pastel, rng.uniform(0.6, 1.0, n), rng.uniform(0.12, 0.45, n))
    return _hsv_to_rgb(h, s, v)


def _coords(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle: (u, v) float32 (h, w)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, math.pi)
    return xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)


def _smooth_noise(h: int, w: int, rng: np.random.Generator, cell: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of about ``cell`` px spacing, bicubic upsampled."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = Image.fromarray(rng.random((gh, gw)).astype(np.float32))  # mode "F"
    out = np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / (hi - lo + 1e-6)


def _tex_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    base = _smooth_noise(h, w, rng, rng.uniform(12, 48))
    return 0.7 * base + 0.3 * _smooth_noise(h, w, rng, rng.uniform(3, 8))


def _tex_stripes(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    u, _ = _coords(h, w, rng)
    return 0.5 + 0.5 * np.sin(2 * math.pi * u / rng.uniform(6, 24) + rng.uniform(0, 6.3))


def _tex_checker(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coords(h, w, rng)
    p = rng.uniform(5, 20)
    return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)


def _tex_gradient(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    u, _ = _coords(h, w, rng)
    return (u - u.min()) / (u.max() - u.min() + 1e-6)


def _tex_rings(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(yy - rng.uniform(0, h), xx - rng.uniform(0, w))
    return 0.5 + 0.5 * np.sin(2 * math.pi * r / rng.uniform(5, 18))


def _tex_plaid(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coords(h, w, rng)
    return 0.5 + 0.25 * (np.sin(2 * math.pi * u / rng.uniform(5, 15)) + np.sin(2 * math.pi * v / rng.uniform(5, 15)))


def _tex_waves(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coords(h, w, rng)
    bend = rng.uniform(2, 8) * np.sin(2 * math.pi * v / rng.uniform(15, 40))
    return 0.5 + 0.5 * np.sin(2 * math.pi * (u + bend) / rng.uniform(6, 14))


def _tex_cells(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    levels = int(rng.integers(3, 6))
    return np.floor(_smooth_noise(h, w, rng, rng.uniform(8, 24)) * levels).clip(0, levels - 1) / (levels - 1)


def _tex_speckle(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    return (0.6 * rng.random((h, w)) + 0.4 * _smooth_noise(h, w, rng, 20)).astype(np.float32)


Texture = Callable[[int, int, np.random.Generator], np.ndarray]
TEXTURE_FAMILIES: dict[str, dict[str, Texture]] = {
    "train": {"noise": _tex_noise, "stripes": _tex_stripes, "checker": _tex_checker, "gradient": _tex_gradient},
    "heldout": {
        "rings": _tex_rings,
        "plaid": _tex_plaid,
        "waves": _tex_waves,
        "cells": _tex_cells,
        "speckle": _tex_speckle,
    },
}


def texture(h: int, w: int, rng: np.random.Generator, textures: str, family: str | None = None) -> np.ndarray:
    """An RGB float32 (h, w, 3) image: a field of a random family of the set ``textures``, in 2-3 colours."""
    families = TEXTURE_FAMILIES[textures]
    name = family if family is not None else str(rng.choice(sorted(families)))
    field = families[name](h, w, rng).astype(np.float32)[..., None]
    c = _colours(rng, 3, textures).astype(np.float32)
    if rng.random() < 0.5:  # two colours
        return c[0] * (1 - field) + c[1] * field
    lo = np.clip(1 - 2 * field, 0, 1)
    hi = np.clip(2 * field - 1, 0, 1)
    return c[0] * lo + c[1] * (1 - lo - hi) + c[2] * hi


PHOTO_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PHOTO_VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
PHOTO_MAX_SIDE = 640  # photographs are kept at most this large: textures are drawn at <= 1.6x a 240x427 frame
PHOTO_FRAMES_PER_VIDEO = 24  # frames taken from each video file, evenly spaced


class Photos:
    """A pool of real photographs (RGB uint8 arrays) read from image files and evenly spaced video frames.

    ``path`` is a folder (searched recursively, files in sorted order) or one image or video file. Videos are
    decoded with PyAV. A file that cannot be read is an error naming it: a texture pool silently missing half
    its photographs would change a dataset without a trace.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        root = Path(path)
        if root.is_dir():
            suffixes = PHOTO_IMAGE_SUFFIXES + PHOTO_VIDEO_SUFFIXES
            files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        elif root.is_file():
            files = [root]
        else:
            raise InputLayoutError(f"synth photos: {root} is neither a folder nor a file")
        self.images: list[np.ndarray] = []
        for f in files:
            if f.suffix.lower() in PHOTO_VIDEO_SUFFIXES:
                self.images.extend(_video_photos(f))
            elif f.suffix.lower() in PHOTO_IMAGE_SUFFIXES:
                try:
                    with Image.open(f) as im:
                        self.images.append(_shrink(np.asarray(im.convert("RGB"))))
                except OSError as e:
                    raise InputLayoutError(f"synth photos: {f} is not a readable image ({e})") from None
            else:
                known = ", ".join(PHOTO_IMAGE_SUFFIXES + PHOTO_VIDEO_SUFFIXES)
                raise InputLayoutError(f"synth photos: {f} is neither an image nor a video ({known})")
        if not self.images:
            raise InputLayoutError(f"synth photos: no images or videos under {root}")

    def __len__(self) -> int:
        return len(self.images)

    def texture(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        """An RGB float32 (h, w, 3) crop of a random photograph at a random zoom, maybe mirrored."""
        img = self.images[int(rng.integers(len(self.images)))]
        ph, pw = img.shape[:2]
        # zoom = output px per photo px; at least enough for the crop to fit inside the photograph
        zoom = max(rng.uniform(0.6, 2.0), h / ph, w / pw)
        ch, cw = min(ph, max(1, round(h / zoom))), min(pw, max(1, round(w / zoom)))
        y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop = Image.fromarray(img[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.Resampling.BILINEAR)
        out = np.asarray(crop, dtype=np.float32)
        return out[:, ::-1].copy() if rng.random() < 0.5 else out


def _shrink(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = imaging.fit_size(w, h, PHOTO_MAX_SIDE)
    if size == (w, h):
        return np.ascontiguousarray(rgb)
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def _video_photos(path: Path) -> list[np.ndarray]:
    """PHOTO_FRAMES_PER_VIDEO evenly spaced frames of a video, each shrunk as it is decoded: a long video is
    counted first (packets, not decoded) so that only the chosen frames are ever kept in memory."""
    import av  # PyAV, a dependency of the video ingest layout

    kept: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputLayoutError(f"synth photos: {path} has no video stream")
            stream = container.streams.video[0]
            total = sum(1 for packet in container.demux(stream) if packet.size)
            chosen = set(np.linspace(0, max(0, total - 1), min(PHOTO_FRAMES_PER_VIDEO, total)).round().astype(int))
            container.seek(0)
            for i, frame in enumerate(container.decode(stream)):
                if i in chosen:
                    kept.append(_shrink(frame.to_ndarray(format="rgb24")))
    except av.FFmpegError as e:
        raise InputLayoutError(f"synth photos: {path} is not a readable video ({e})") from None
    if not kept:
        raise InputLayoutError(f"synth photos: {path} has no decodable frames")
    return kept


def _texture(h: int, w: int, rng: np.random.Generator, cfg: SynthConfig, photos: Photos | None) -> np.ndarray:
    """A procedural texture of ``cfg.textures``, or, with ``photos``, a photograph crop with ``cfg.photo_prob``."""
    if photos is not None and rng.random() < cfg.photo_prob:
        return photos.texture(h, w, rng)
    return texture(h, w, rng, cfg.textures)


# --------------------------------------------------------------------------------------------- one video


@dataclass(frozen=True)
class _Placement:
    masks: np.ndarray  # (frames, oh, ow) bool, already scaled/flipped; all-False outside the object's life
    y0: int
    x0: int
    tex: np.ndarray  # (oh, ow, 3) float32


def _track(
    rng: np.random.Generator, sources: _Sources, cfg: SynthConfig, life: tuple[int, int], photos: Photos | None
) -> _Placement | None:
    src = sources.video(str(rng.choice(sources.names)))
    ids = np.unique(src)
    ids = ids[ids != 0]
    if ids.size == 0:
        return None
    obj = src == int(rng.choice(ids))  # (Ts, Hs, Ws)
    a, b = life
    n = b - a
    ts = obj.shape[0]
    if rng.random() < 0.3:
        obj = obj[::-1]
    if n <= ts:  # a window of real motion
        start = int(rng.integers(0, ts - n + 1))
        idx = np.arange(start, start + n)
    else:  # longer than the source: play it forward and back
        period = max(1, 2 * ts - 2)
        k = np.arange(n) % period
        idx = np.where(k < ts, k, period - k)
    seq = obj[idx]
    present = seq.any(axis=0)
    if not present.any() or seq.mean(axis=(1, 2)).max() > MAX_SOURCE_FILL:
        return None  # empty, or a broken source frame (some OSVOS masks cover nearly the whole frame)
    rows, cols = np.flatnonzero(present.any(axis=1)), np.flatnonzero(present.any(axis=0))
    seq = seq[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    bh, bw = seq.shape[1:]
    scale = rng.uniform(0.2, 0.9) * cfg.height / bh
    scale = float(np.clip(scale, 0.25, min(3.0, 1.3 * cfg.width / bw)))
    oh, ow = max(1, round(bh * scale)), max(1, round(bw * scale))
    ry = np.minimum((np.arange(oh) + 0.5) / scale, bh - 1).astype(int)
    rx = np.minimum((np.arange(ow) + 0.5) / scale, bw - 1).astype(int)
    if rng.random() < 0.5:
        rx = rx[::-1]
    masks = np.zeros((cfg.frames, oh, ow), dtype=bool)
    masks[a:b] = seq[:, ry][:, :, rx]
    cy, cx = rng.uniform(0.2, 0.8) * cfg.height, rng.uniform(0.15, 0.85) * cfg.width
    tex = _texture(oh, ow, rng, cfg, photos)
    return _Placement(masks, int(cy - oh / 2), int(cx - ow / 2), tex)


def _paste(canvas: np.ndarray, patch: np.ndarray | int, mask: np.ndarray, y0: int, x0: int) -> None:
    """canvas[y0:, x0:][mask] = patch[mask] (an image aligned with ``mask``) or = patch (an id), clipped."""
    h, w = canvas.shape[:2]
    oh, ow = mask.shape
    ya, xa = max(0, y0), max(0, x0)
    yb, xb = min(h, y0 + oh), min(w, x0 + ow)
    if ya >= yb or xa >= xb:
        return
    m = mask[ya - y0 : yb - y0, xa - x0 : xb - x0]
    region = canvas[ya:yb, xa:xb]
    region[m] = patch if isinstance(patch, int) else patch[ya - y0 : yb - y0, xa - x0 : xb - x0][m]


def _label_maps(placements: list[_Placement], cfg: SynthConfig) -> np.ndarray:
    ids = np.zeros((cfg.frames, cfg.height, cfg.width), dtype=np.uint8)
    for k, p in enumerate(placements, start=1):
        for t in range(cfg.frames):
            _paste(ids[t], k, p.masks[t], p.y0, p.x0)
    return ids


def _background(
    rng: np.random.Generator, cfg: SynthConfig, photos: Photos | None
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """A textured background 1.6x the frame and a per-frame (centre y, centre x, zoom) camera path."""
    bh, bw = math.ceil(1.6 * cfg.height), math.ceil(1.6 * cfg.width)
    bg = _texture(bh, bw, rng, cfg, photos)
    bg = 0.75 * bg + 0.25 * _texture(bh, bw, rng, cfg, photos)  # two layers: less regular than an object
    z0, z1 = rng.uniform(1.0, 1.5, 2)
    path = []
    ends = []
    for z in (z0, z1):
        half_h, half_w = z * cfg.height / 2, z * cfg.width / 2
        ends.append((rng.uniform(half_h, bh - half_h), rng.uniform(half_w, bw - half_w)))
    for t in range(cfg.frames):
        s = t / max(1, cfg.frames - 1)
        z = z0 + (z1 - z0) * s
        cy = ends[0][0] + (ends[1][0] - ends[0][0]) * s
        cx = ends[0][1] + (ends[1][1] - ends[0][1]) * s
        # keep the window inside the background at this zoom
        cy = float(np.clip(cy, z * cfg.height / 2, bh - z * cfg.height / 2))
        cx = float(np.clip(cx, z * cfg.width / 2, bw - z * cfg.width / 2))
        path.append((cy, cx, z))
    return bg, path


def make_video(
    index: int, cfg: SynthConfig, sources: _Sources, photos: Photos | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and ids (T, H, W) uint8 of synthetic video ``index``.

    ``photos`` is the pool loaded from ``cfg.photos`` (``write_dataset`` loads it once for all videos).
    """
    rng = np.random.default_rng([cfg.seed, index, TEXTURE_SETS.index(cfg.textures)])
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placements: list[_Placement] = []
    tries = 0
    while len(placements) < n_obj and tries < 4 * n_obj:
        tries += 1
        a, b = 0, cfg.frames
        if placements and cfg.frames >= 4:  # the first object is there from frame 0
            if rng.random() < cfg.enter_leave_prob:
                a = int(rng.integers(1, cfg.frames // 2 + 1))
            low = max(a + 2, cfg.frames // 2 + 1)
            if rng.random() < cfg.enter_leave_prob and low < cfg.frames:
                b = int(rng.integers(low, cfg.frames))
        p = _track(rng, sources, cfg, (a, b), photos)
        if p is not None:
            placements.append(p)
    # drop objects that are (almost) never visible, then fix ids 1..K in z-order
    ids = _label_maps(placements, cfg)
    counts = np.stack([(ids == k).sum(axis=(1, 2)) for k in range(1, len(placements) + 1)]) if placements else None
    if counts is not None:
        keep = [p for k, p in enumerate(placements) if counts[k].max() >= cfg.min_visible_pixels]
        if len(keep) != len(placements):
            placements = keep
            ids = _label_maps(placements, cfg)
    bg, path = _background(rng, cfg, photos)
    frames = np.empty((cfg.frames, cfg.height, cfg.width, 3), dtype=np.uint8)
    for t, (cy, cx, z) in enumerate(path):
        ys = np.clip((cy + (np.arange(cfg.height) + 0.5 - cfg.height / 2) * z).astype(int), 0, bg.shape[0] - 1)
        xs = np.clip((cx + (np.arange(cfg.width) + 0.5 - cfg.width / 2) * z).astype(int), 0, bg.shape[1] - 1)
        img = bg[ys][:, xs].copy()
        for p in placements:
            _paste(img, p.tex, p.masks[t], p.y0, p.x0)
        frames[t] = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)  # a little sensor noise
    return frames, ids


# --------------------------------------------------------------------------------------------- dataset


def video_name(index: int) -> str:
    return f"synth-{index:05d}"


def write_dataset(
    out: str | os.PathLike[str],
    cfg: SynthConfig,
    *,
    source: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Write ``cfg.videos`` synthetic videos under ``out`` (DAVIS layout); returns the video names."""
    root = Path(out)
    images = root / "JPEGImages" / "480p"
    annotations = root / "Annotations" / "480p"
    if not overwrite and (images.exists() or annotations.exists()):
        raise RvosBatchError(f"{root}: already holds a dataset (JPEGImages/ or Annotations/); pass overwrite")
    sources = _Sources(find_source(source))
    photos = Photos(cfg.photos) if cfg.photos is not None else None
    names = []
    for i in range(cfg.videos):
        frames, ids = make_video(i, cfg, sources, photos)
        name = video_name(i)
        (images / name).mkdir(parents=True, exist_ok=True)
        (annotations / name).mkdir(parents=True, exist_ok=True)
        for t in range(cfg.frames):
            (images / name / f"{t:05d}.jpg").write_bytes(imaging.encode_jpeg(frames[t], cfg.jpeg_quality))
            (annotations / name / f"{t:05d}.png").write_bytes(imaging.encode_palette_png(ids[t]))
        names.append(name)
        if progress is not None:
            progress(name)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{n}\n" for n in names))
    return names
