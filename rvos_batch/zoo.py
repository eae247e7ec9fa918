"""Shipped models: names that resolve to checkpoints inside the package, or a user's checkpoint path/URL."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rvos_batch.errors import CheckpointError

MODELS_DIR = Path(__file__).parent / "assets" / "models"
DEFAULT_MODELS = {"zero-shot": "rvos-mnv2-synth-zs", "one-shot": "rvos-mnv2-synth-os"}
SAMPLE_CORPUS = Path(__file__).parent / "assets" / "sample"


def is_shipped_default(name_or_path: str, mode: str) -> bool:
    """Whether ``name_or_path`` names the shipped model for ``mode``: "default", "" or its name."""
    return name_or_path in ("default", "", DEFAULT_MODELS[mode])


def available_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.pt"))


def resolve_model(name_or_path: str, mode: str = "zero-shot") -> str:
    """Return a local checkpoint path for a shipped model name, a path, or a URL.

    "default" (or "") names the shipped model for ``mode``: one model per mode, as in the paper.
    A remote checkpoint (s3://...) is copied once into ``~/.cache/rvos_batch``, keyed by its URL.
    """
    if is_shipped_default(name_or_path, mode):
        name_or_path = DEFAULT_MODELS[mode]
    shipped = MODELS_DIR / f"{name_or_path}.pt"
    if shipped.is_file():
        return str(shipped)
    if "://" in name_or_path and not name_or_path.startswith("file://"):
        from rvos_batch.storage import get_fs

        cache = Path(os.environ.get("RVOS_BATCH_CACHE", Path.home() / ".cache" / "rvos_batch"))
        cache.mkdir(parents=True, exist_ok=True)
        local = cache / (hashlib.sha256(name_or_path.encode()).hexdigest()[:16] + ".pt")
        if not local.exists():
            fs, path = get_fs(name_or_path)
            tmp = local.with_suffix(".part")
            fs.get_file(path, str(tmp))
            tmp.replace(local)
        return str(local)
    local_path = Path(name_or_path.removeprefix("file://")).expanduser()
    if not local_path.is_file():
        raise CheckpointError(
            f"model {name_or_path!r} is neither a shipped model ({', '.join(available_models()) or 'none'}) "
            "nor an existing checkpoint file"
        )
    return str(local_path)
