"""RVOSConfig: the model's only input. Frozen, validated, and JSON round-trippable (it travels inside checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from rvos_batch.errors import RvosBatchError

Backbone = Literal["resnet101", "resnet50", "resnet34", "resnet18", "mobilenet_v2"]
Mode = Literal["zero-shot", "one-shot"]
Recurrence = Literal["S", "T", "ST"]
BACKBONES: tuple[str, ...] = get_args(Backbone)
MODES: tuple[str, ...] = get_args(Mode)
RECURRENCES: tuple[str, ...] = get_args(Recurrence)
MIN_INPUT_SIDE = 32  # one pixel at stride 32


class ConfigError(RvosBatchError, ValueError):
    """A model or predictor configuration field holds a value outside what is allowed."""


@dataclass(frozen=True)
class RVOSConfig:
    """Architecture of one RVOS model.

    backbone: torchvision encoder. hidden: H, the width of the coarsest ConvLSTM (layers use H, H/2, H/4, H/8).
    num_slots: object slots decoded per frame. mode: "zero-shot" (RVOS) or "one-shot" (RVOS-Mask, previous mask
    as input). recurrence: "S" spatial only, "T" temporal only, "ST" both. input_size: (height, width) frames are
    resized to. refine: add the stride-2 refinement head (not in the paper; see ``rvos_batch.model.decoder``).
    match: one-shot only, match every frame against each slot's reference frame and feed the similarity maps to
    the decoder (not in the paper; see ``rvos_batch.model.matching``).
    """

    backbone: Backbone = "mobilenet_v2"
    hidden: int = 128
    num_slots: int = 10
    mode: Mode = "zero-shot"
    recurrence: Recurrence = "ST"
    input_size: tuple[int, int] = (256, 448)
    refine: bool = False
    match: bool = False

    def __post_init__(self) -> None:
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("mode", self.mode, MODES)
        _check_choice("recurrence", self.recurrence, RECURRENCES)
        if not _is_int(self.hidden) or self.hidden < 8 or self.hidden % 8:
            raise ConfigError(f"RVOSConfig.hidden={self.hidden!r}: allowed is a positive multiple of 8 (H/8 >= 1)")
        if not _is_int(self.num_slots) or self.num_slots < 1:
            raise ConfigError(f"RVOSConfig.num_slots={self.num_slots!r}: allowed is an integer >= 1")
        if not isinstance(self.refine, bool):
            raise ConfigError(f"RVOSConfig.refine={self.refine!r}: allowed is true or false")
        if not isinstance(self.match, bool):
            raise ConfigError(f"RVOSConfig.match={self.match!r}: allowed is true or false")
        if self.match and self.mode != "one-shot":
            raise ConfigError("RVOSConfig.match=True needs mode='one-shot': it matches against the given masks")
        size = self.input_size
        if not is_input_size(size):
            raise ConfigError(
                f"RVOSConfig.input_size={size!r}: allowed is (height, width), integers >= {MIN_INPUT_SIDE}"
            )
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))

    @property
    def one_shot(self) -> bool:
        return self.mode == "one-shot"

    @property
    def spatial(self) -> bool:
        return "S" in self.recurrence

    @property
    def temporal(self) -> bool:
        return "T" in self.recurrence

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (input_size as a list)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RVOSConfig:
        """Inverse of to_dict. Unknown keys are refused; missing keys take their defaults."""
        if not isinstance(d, dict):
            raise ConfigError(f"RVOSConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"RVOSConfig: unknown field(s) {unknown}; allowed: {sorted(known)}")
        kwargs = dict(d)
        if isinstance(kwargs.get("input_size"), list):
            kwargs["input_size"] = tuple(kwargs["input_size"])
        return cls(**kwargs)


def is_input_size(size: object) -> bool:
    """True for a (height, width) pair of integers, each at least MIN_INPUT_SIDE."""
    return (
        isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) and v >= MIN_INPUT_SIDE for v in size)
    )


def is_int_in(value: object, low: int, high: int) -> bool:
    """True for an integer (not a bool) in low..high: the check of the radius-like settings."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"RVOSConfig.{name}={value!r}: allowed values are {list(allowed)}")
