"""The README's first command: `rvos-batch label` with no arguments, on the shipped sample and model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jobkit import cli

from rvos_batch.zoo import DEFAULT_MODELS, MODELS_DIR, SAMPLE_CORPUS

pytestmark = pytest.mark.ray


def test_shipped_assets_exist():
    assert (SAMPLE_CORPUS / "frames").is_dir() and (SAMPLE_CORPUS / "prompts").is_dir()
    for name in DEFAULT_MODELS.values():
        assert (MODELS_DIR / f"{name}.pt").is_file(), name
    assert (MODELS_DIR / "MODEL_CARD.md").is_file()


def test_label_with_no_arguments(tmp_path):
    r = cli("label", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "rvos-output"
    assert "preview:" in r.stdout and (out / "preview.png").is_file()
    status = cli("status", str(out), "--json", cwd=str(tmp_path))
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)
    for key in ("shards_total", "shards_done", "shards_failed", "videos_ok", "videos_failed", "frames", "masks"):
        assert key in s
    assert s["shards_done"] == s["shards_total"] >= 1 and s["shards_failed"] == 0
    assert s["mode"] == "zero-shot" and s["model"] == "default" and s["tracker"] == "default"
    assert s["auto_levels"] is None  # off by default
    assert s["videos_ok"] == 4 and s["frames"] == 64 and s["masks"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["name"] == "default" and Path(run["model"]["path"]).name == "rvos-mnv2-synth-zs.pt"
    # zero-shot with the shipped model: the shipped one-shot model follows what it finds (--tracker auto)
    assert Path(run["model"]["tracker"]["path"]).name == "rvos-mnv2-synth-os.pt"


def test_one_shot_on_the_sample_uses_its_prompts(tmp_path):
    r = cli("label", str(SAMPLE_CORPUS), str(tmp_path / "os"), "--mode", "one-shot", "--no-preview", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["videos_ok"] == 4 and s["masks"] > 0
