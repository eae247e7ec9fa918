"""Shared helpers for the labeling-job tests: small real corpora (real JPEG bytes) and a tiny seeded model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rvos_batch.corpus import CorpusWriter
from rvos_batch.imaging import encode_jpeg
from rvos_batch.model.checkpoint import save_checkpoint
from rvos_batch.model.config import RVOSConfig
from rvos_batch.model.rvos import RVOS

REPO = Path(__file__).resolve().parents[1]


def frame_jpeg(t: int, size: tuple[int, int] = (60, 90), seed: int = 0) -> bytes:
    """A real JPEG: a bright square moving over a noisy background."""
    h, w = size
    rng = np.random.default_rng(seed * 100_003 + t)
    rgb = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    y, x = (3 * t) % max(1, h - 20), (5 * t) % max(1, w - 20)
    rgb[y : y + 20, x : x + 20] = (230, 60, 40)
    return encode_jpeg(rgb)


def make_corpus(url: str, lengths: Iterable[int], videos_per_file: int = 4, size: tuple[int, int] = (60, 90),
                storage_options: dict | None = None, prefix: str = "v") -> list[str]:
    """Write a corpus of videos ``{prefix}000, {prefix}001, ...`` with the given frame counts; returns the ids."""
    ids = []
    with CorpusWriter(url, videos_per_file=videos_per_file, storage_options=storage_options) as writer:
        for i, n in enumerate(lengths):
            vid = f"{prefix}{i:03d}"
            ids.append(vid)
            writer.add_video(vid, ((t, frame_jpeg(t, size, i), size[1], size[0], None) for t in range(n)))
    return ids


def tiny_model(path: Path, mode: str = "zero-shot", input_size: tuple[int, int] = (64, 96), seed: int = 0) -> str:
    """A seeded untrained RVOS small enough for fast tests, biased to emit masks; returns its path."""
    import torch

    torch.manual_seed(seed)
    model = RVOS(RVOSConfig(backbone="mobilenet_v2", hidden=16, num_slots=3, mode=mode, input_size=input_size))
    with torch.no_grad():  # a positive head bias: every frame yields masks, so output counts are never trivially 0
        model.decoder.head.bias.fill_(2.0)
    save_checkpoint(path, model, model.config, {"note": "test model"})
    return str(path)


def cli(*args: str, env: dict | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m rvos_batch ARGS`` in a fresh process (as a user would)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "rvos_batch", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=kw.pop("cwd", None), **kw)
