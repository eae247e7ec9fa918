"""Model checkpoints: one torch file holding the state_dict, the RVOSConfig as JSON, and caller extras.

Loading is strict and safe: ``torch.load(weights_only=True)`` (no arbitrary pickles), an optional sha256 check
over exactly the bytes that are loaded, and missing, unexpected or mis-shaped keys raise CheckpointError naming
them. Paths may be local or URLs understood by :mod:`rvos_batch.storage` (e.g. ``s3://``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any

import torch

from rvos_batch.errors import CheckpointError
from rvos_batch.model.config import RVOSConfig
from rvos_batch.model.rvos import RVOS
from rvos_batch.storage import get_fs, write_bytes_atomic

FORMAT = "rvos_batch.checkpoint"
VERSION = 1
_KEYS = {"format", "version", "config", "state_dict", "extra"}
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Only what ``weights_only`` loading accepts back: tensors, numbers, str, None, lists/tuples/dicts of them."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"checkpoint extra{where}: key {k!r} must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(
            f"checkpoint extra{where}: {type(value).__name__} is not storable; allowed are tensors, str, int, "
            "float, bool, None and lists/tuples/dicts of them"
        )


def save_checkpoint(path: str | os.PathLike[str], model: RVOS, config: RVOSConfig, extra: dict[str, Any]) -> None:
    """Write ``model``'s weights, ``config`` and ``extra`` (plain data: epoch, metrics, optimiser state) atomically."""
    if config != model.config:
        raise CheckpointError(f"save_checkpoint {path}: config {config} differs from the model's {model.config}")
    if not isinstance(extra, dict):
        raise CheckpointError(f"save_checkpoint {path}: extra must be a dict, got {type(extra).__name__}")
    _check_plain(extra, "")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    fs, fs_path = get_fs(os.fspath(path))
    write_bytes_atomic(fs, fs_path, buf.getvalue())


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    fs, fs_path = get_fs(os.fspath(path))
    try:
        with fs.open(fs_path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: file not found") from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (local path or URL)."""
    fs, fs_path = get_fs(os.fspath(path))
    h = hashlib.sha256()
    try:
        with fs.open(fs_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: file not found") from None
    return h.hexdigest()


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    expected_sha256: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> tuple[RVOS, RVOSConfig, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns (model in eval mode, config, extra).

    ``expected_sha256``: full hex digest or a prefix of at least 8 hex digits; a mismatch raises CheckpointError.
    ``input_size``: (height, width) to run the model at instead of the size it was saved with. No weight depends on
    the input size, so every weight loads as saved; the returned config (and ``model.config``) hold the new size.
    """
    data = _read_bytes(path)
    if expected_sha256 is not None:
        expected = expected_sha256.lower()
        if len(expected) < 8:
            raise CheckpointError(f"expected_sha256={expected_sha256!r}: allowed is at least 8 hex digits")
        digest = hashlib.sha256(data).hexdigest()
        if not digest.startswith(expected):
            raise CheckpointError(f"checkpoint {path}: sha256 {digest} does not match the expected {expected_sha256}")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors, truncated zip, disallowed globals: all mean "not our file"
        raise CheckpointError(
            f"checkpoint {path}: not a valid weights-only torch file ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an rvos_batch checkpoint (no format={FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: version {payload.get('version')!r}; allowed is {VERSION}")
    if set(payload) != _KEYS:
        raise CheckpointError(f"checkpoint {path}: top-level keys {sorted(payload)}; expected {sorted(_KEYS)}")
    try:
        config = RVOSConfig.from_dict(json.loads(payload["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: bad config: {e}") from None
    if input_size is not None:
        config = dataclasses.replace(config, input_size=input_size)
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"checkpoint {path}: state_dict is a {type(state_dict).__name__}, expected a dict")
    model = RVOS(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match RVOS({config.backbone}, {config.mode}, {config.recurrence}): "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    bad = [
        f"{k}: checkpoint {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} "
        f"vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape
    ]
    if bad:
        raise CheckpointError(f"checkpoint {path}: shape mismatch: {'; '.join(bad)}")
    model.load_state_dict(state_dict, strict=True)
    model.to(map_location)
    model.eval()
    return model, config, payload["extra"]
