"""Training and evaluation videos from the layouts users have: DAVIS-2017 and YouTube-VOS folders.

DAVIS: ``ROOT/JPEGImages/480p/<video>/*.jpg``, ``ROOT/Annotations/480p/<video>/*.png``,
``ROOT/ImageSets/2017/<split>.txt``.
YouTube-VOS: ``ROOT/JPEGImages/<video>/*.jpg``, ``ROOT/Annotations/<video>/*.png`` (every 5th frame annotated),
``ROOT/meta.json``; ROOT is the split folder (``train/``, ``valid/``). Only annotated frames are used for training.

``ClipDataset`` yields clips of consecutive annotated frames resized to the model's input size, with one random
affine and flip per clip (the paper's augmentation), as tensors ready for ``RVOS.forward``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from rvos_batch.errors import InputLayoutError
from rvos_batch.imaging import read_palette_png

VOID = 255
_IMG_EXT = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class VOSVideo:
    """One annotated video: frame image paths and, aligned with them, annotation paths (None: not annotated)."""

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path | None, ...]


def detect_layout(root: Path) -> str:
    if (root / "JPEGImages" / "480p").is_dir() and (root / "Annotations" / "480p").is_dir():
        return "davis"
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        return "youtube-vos"
    raise InputLayoutError(
        f"{root}: not a DAVIS folder (JPEGImages/480p and Annotations/480p) nor a YouTube-VOS split folder "
        "(JPEGImages and Annotations)"
    )


def list_videos(root: str | Path, split: str | None = None) -> list[VOSVideo]:
    """Annotated videos of a DAVIS or YouTube-VOS folder, sorted by name.

    split: DAVIS only, a name under ImageSets/2017 (``train``, ``val``); None lists every video.
    """
    root = Path(root)
    layout = detect_layout(root)
    if layout == "davis":
        img_root, ann_root = root / "JPEGImages" / "480p", root / "Annotations" / "480p"
    else:
        img_root, ann_root = root / "JPEGImages", root / "Annotations"
    names = sorted(p.name for p in img_root.iterdir() if p.is_dir())
    if split is not None:
        listing = root / "ImageSets" / "2017" / f"{split}.txt"
        if not listing.is_file():
            raise InputLayoutError(f"{root}: split {split!r} needs {listing}")
        wanted = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
        missing = sorted(set(wanted) - set(names))
        if missing:
            raise InputLayoutError(f"{listing} lists videos with no frames folder: {missing[:5]}")
        names = wanted
    videos = []
    for name in names:
        frames = sorted(p for p in (img_root / name).iterdir() if p.suffix.lower() in _IMG_EXT)
        annos = {p.stem: p for p in (ann_root / name).glob("*.png")} if (ann_root / name).is_dir() else {}
        if not frames or not annos:
            continue
        videos.append(VOSVideo(name, tuple(frames), tuple(annos.get(f.stem) for f in frames)))
    if not videos:
        raise InputLayoutError(f"{root}: no video with frames and annotations")
    return videos


def load_video(video: VOSVideo, size: tuple[int, int], annotated_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and id maps (T, H, W) uint8 resized to ``size`` (bilinear / nearest)."""
    h, w = size
    images, labels = [], []
    for frame, anno in zip(video.frames, video.annotations, strict=True):
        if anno is None and annotated_only:
            continue
        with Image.open(frame) as im:
            images.append(np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)))
        ids = read_palette_png(anno) if anno is not None else np.zeros((h, w), np.uint8)
        labels.append(np.asarray(Image.fromarray(ids).resize((w, h), Image.Resampling.NEAREST)))
    return np.stack(images), np.stack(labels)


class ClipDataset(torch.utils.data.Dataset):
    """Random clips of ``clip_len`` consecutive annotated frames; videos are decoded once and kept in memory.

    Each item: images (T, 3, H, W) float in [0, 1]; masks (T, K, H, W) float of the clip's objects (ids sorted,
    at most ``max_objects``, zero-padded to K = max_objects); void (T, H, W) bool; present (T, K) bool.
    """

    def __init__(self, videos: list[VOSVideo], size: tuple[int, int], clip_len: int = 5, max_objects: int = 10,
                 augment: bool = True, length: int = 10_000, seed: int = 0, colour: bool = False) -> None:
        self.videos = videos
        self.size = size
        self.clip_len = clip_len
        self.max_objects = max_objects
        self.augment = augment
        self.length = length
        self.seed = seed
        self.colour = colour  # also recolour each clip (see _recolour); only with augment
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.length

    def _video(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            self._cache[i] = load_video(self.videos[i], self.size)
        return self._cache[i]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = random.Random(self.seed * 1_000_003 + index)
        images, labels = self._video(rng.randrange(len(self.videos)))
        t_total = images.shape[0]
        start = rng.randrange(max(1, t_total - self.clip_len + 1))
        idx = [min(start + k, t_total - 1) for k in range(self.clip_len)]  # short videos repeat their last frame
        img = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
        lab = torch.from_numpy(labels[idx].astype(np.int64))  # (T, H, W)
        if self.augment:
            img, lab = _augment(img, lab, rng)
            if self.colour:
                img = _recolour(img, rng)
        ids = [int(i) for i in torch.unique(lab).tolist() if i not in (0, VOID)][: self.max_objects]
        masks = torch.zeros(self.clip_len, self.max_objects, *self.size)
        for k, obj in enumerate(ids):
            masks[:, k] = (lab == obj).float()
        present = masks.flatten(2).amax(-1) > 0  # (T, K)
        return {"images": img, "masks": masks, "void": lab == VOID, "present": present}


def _augment(img: Tensor, lab: Tensor, rng: random.Random) -> tuple[Tensor, Tensor]:
    """One random affine (rotation +-10 deg, translation +-10 %, zoom 0.7-1.4) and a flip (p=0.5) per clip."""
    t, _, h, w = img.shape
    angle = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.7, 1.4)
    tx, ty = rng.uniform(-0.1, 0.1) * 2, rng.uniform(-0.1, 0.1) * 2  # in normalised [-1, 1] coordinates
    flip = -1.0 if rng.random() < 0.5 else 1.0
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos * flip, -sin, tx], [sin * flip, cos, ty]], dtype=torch.float32)
    grid = F.affine_grid(theta.expand(t, 2, 3), [t, 3, h, w], align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(lab[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, lab[:, 0].long()


def _recolour(img: Tensor, rng: random.Random) -> Tensor:
    """One random recolouring per clip (every frame alike, so motion stays the cue): a permutation of the colour
    channels, brightness and contrast x0.7-1.3, saturation x0.4-1.6, and with p=0.2 inverted, p=0.1 grey.

    Not in the paper: objects whose colours and textures were never seen in training (the held-out synthetic
    textures, or real video after synthetic training) must be found by shape and motion, not by their look.
    """
    perm = list(range(3))
    rng.shuffle(perm)
    img = img[:, perm]
    grey = _luma(img)
    img = grey + (img - grey) * rng.uniform(0.4, 1.6)  # saturation
    mean = img.mean()
    img = mean + (img - mean) * rng.uniform(0.7, 1.3)  # contrast
    img = img * rng.uniform(0.7, 1.3)  # brightness
    if rng.random() < 0.2:
        img = 1.0 - img
    if rng.random() < 0.1:
        img = _luma(img).expand(-1, 3, -1, -1)
    return img.clamp(0.0, 1.0).contiguous()


def _luma(img: Tensor) -> Tensor:
    """(T, 3, H, W) RGB -> (T, 1, H, W) grey (ITU-R BT.601 weights)."""
    return 0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]
