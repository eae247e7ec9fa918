"""Auto-levels: the stretch against its definition, frames that already span the range left exactly as they are, each
video's moving levels, and a session whose model sees the stretched frames, row by row, undone by a snapshot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rvos_batch.levels import LevelsConfig, LevelsState, auto_levels, frame_levels
from rvos_batch.model import RVOS, ConfigError, RVOSConfig
from rvos_batch.predictor import BatchSession, PredictConfig, preprocess

SIZE = (64, 96)


def _frames(lo: float, hi: float, n: int = 1) -> torch.Tensor:
    """(n, 3, 64, 96) values spread evenly from lo to hi, so their quantiles are known; the first and the last value
    are in the strided sample (18,431 is a multiple of 7), so the 0 and 1 quantiles are exact."""
    return torch.linspace(lo, hi, 3 * SIZE[0] * SIZE[1]).view(1, 3, *SIZE).repeat(n, 1, 1, 1)


def test_levels_config_is_validated():
    for field, bad in (("range", 0.0), ("range", 1.5), ("quantile", 0.5), ("max_gain", 0.5), ("momentum", 1.0),
                       ("range", True), ("range", "0.6"), ("momentum", None)):
        with pytest.raises(ConfigError, match=f"LevelsConfig.{field}="):
            LevelsConfig(**{field: bad})


def test_frames_that_span_the_range_are_left_exactly_as_they_are():
    frames = _frames(0.1, 0.75, n=2)
    out, state = auto_levels(frames, LevelsState.empty(2), LevelsConfig(range=0.6))
    assert torch.equal(out, frames)
    assert state.seen.all() and torch.allclose(state.hi - state.lo, torch.full((2,), 0.65 * 0.99), atol=5e-3)


def test_a_low_contrast_frame_is_stretched_about_its_middle_with_one_gain_for_all_channels():
    frames = _frames(0.4, 0.6)  # span 0.2: a gain of 3 brings it to 0.6
    cfg = LevelsConfig(range=0.6, quantile=0.0)
    out, _ = auto_levels(frames, LevelsState.empty(1), cfg)
    assert torch.allclose(out, (frames - 0.5) * 3 + 0.5, atol=1e-5)
    lo, hi = frame_levels(out, 0.0)
    assert hi.item() - lo.item() == pytest.approx(0.6, abs=1e-4)
    # a dark frame is stretched as much and shifted just enough to stay in [0, 1]
    dark, _ = auto_levels(_frames(0.02, 0.22), LevelsState.empty(1), cfg)
    assert dark.min().item() == pytest.approx(0.0, abs=1e-5) and dark.max().item() == pytest.approx(0.6, abs=1e-4)
    # the gain is capped
    flat, _ = auto_levels(_frames(0.45, 0.5), LevelsState.empty(1), LevelsConfig(range=0.6, quantile=0.0))
    assert (flat.max() - flat.min()).item() == pytest.approx(0.05 * 4, abs=1e-4)


def test_a_videos_levels_are_a_moving_average_from_its_first_frame_and_restart_with_a_new_video():
    cfg = LevelsConfig(quantile=0.0, momentum=0.75)
    _, s1 = auto_levels(_frames(0.2, 0.4), LevelsState.empty(1), cfg)
    assert (s1.lo.item(), s1.hi.item()) == pytest.approx((0.2, 0.4), abs=1e-5), "the first frame's own levels"
    _, s2 = auto_levels(_frames(0.0, 1.0), s1, cfg)
    assert (s2.lo.item(), s2.hi.item()) == pytest.approx((0.15, 0.55), abs=1e-5)
    _, s3 = auto_levels(_frames(0.0, 1.0), s2.reset_rows(torch.tensor([0])), cfg)
    assert (s3.lo.item(), s3.hi.item()) == pytest.approx((0.0, 1.0), abs=1e-5)


def _recording_model(seen: list[torch.Tensor]) -> RVOS:
    torch.manual_seed(0)
    model = RVOS(RVOSConfig(backbone="mobilenet_v2", hidden=16, num_slots=2, mode="zero-shot", recurrence="ST",
                            input_size=SIZE)).eval()
    step = model.step

    def recording(frames, state, given=None, valid=None, num_active_slots=None):
        seen.append(frames.clone())
        return step(frames, state, given, valid, num_active_slots=num_active_slots)

    model.step = recording  # type: ignore[method-assign]
    return model


def _video(lo: int, hi: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi + 1, (*SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_the_model_sees_each_videos_stretched_frames_row_by_row(fixed_batch):
    seen: list[torch.Tensor] = []
    config = PredictConfig(fixed_batch=fixed_batch, levels=LevelsConfig())
    session = BatchSession(_recording_model(seen), config, capacity=2)
    session.add(0, "dim", SIZE)
    session.add(1, "normal", SIZE)
    dim = [_video(100, 150, t) for t in range(3)]
    normal = [_video(20, 235, 10 + t) for t in range(3)]
    session.step({0: (0, preprocess(dim[0], SIZE)), 1: (0, preprocess(normal[0], SIZE))})
    session.step({0: (1, preprocess(dim[1], SIZE))})  # row 1 idle: its levels must not move
    session.step({0: (2, preprocess(dim[2], SIZE)), 1: (1, preprocess(normal[1], SIZE))})

    cfg = LevelsConfig()
    state = LevelsState.empty(1)
    for t in range(3):
        want, state = auto_levels(preprocess(dim[t], SIZE)[None].float() / 255, state, cfg)
        assert torch.allclose(seen[t][0], want[0], atol=1e-6), f"frame {t} of the dim video"
        assert not torch.allclose(want, preprocess(dim[t], SIZE)[None].float() / 255), "it was stretched"
    assert torch.equal(seen[0][1], preprocess(normal[0], SIZE).float() / 255), "a full-range video is left as is"
    assert torch.equal(seen[2][1], preprocess(normal[1], SIZE).float() / 255)
    normal_levels = frame_levels(preprocess(normal[0], SIZE)[None].float() / 255, cfg.quantile)
    after = frame_levels(preprocess(normal[1], SIZE)[None].float() / 255, cfg.quantile)
    assert session.levels is not None
    assert session.levels.lo[1].item() == pytest.approx(0.9 * normal_levels[0].item() + 0.1 * after[0].item())


def test_a_snapshot_restores_the_levels_and_levels_are_off_by_default():
    seen: list[torch.Tensor] = []
    session = BatchSession(_recording_model(seen), PredictConfig(levels=LevelsConfig()), capacity=1)
    session.add(0, "v", SIZE)
    session.step({0: (0, preprocess(_video(100, 150, 0), SIZE))})
    snap = session.snapshot()
    session.step({0: (1, preprocess(_video(0, 255, 1), SIZE))})
    assert session.levels is not None and snap.levels is not None
    assert not torch.equal(session.levels.hi, snap.levels.hi)
    session.restore(snap)
    assert torch.equal(session.levels.hi, snap.levels.hi)

    off = BatchSession(_recording_model(seen), PredictConfig(), capacity=1)  # off by default
    off.add(0, "v", SIZE)
    frame = preprocess(_video(100, 150, 0), SIZE)
    off.step({0: (0, frame)})
    assert off.levels is None and torch.equal(seen[-1][0], frame.float() / 255)
    with pytest.raises(ConfigError, match="PredictConfig.levels="):
        PredictConfig(levels=0.6)  # type: ignore[arg-type]
