"""The appearance check: its pieces against plain references, and a session that leaves out a mask whose object has
gone, reports it again when it comes back, leaves other rows alone, and snapshots the check's state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from rvos_batch.appearance import (
    AppearanceConfig,
    AppearanceState,
    _box,
    _cells,
    bhattacharyya,
    check,
    colour_bins,
    guided_filter,
    histograms,
    majority,
    surroundings,
    view,
)
from rvos_batch.levels import LevelsState
from rvos_batch.model import RVOS, ConfigError, RVOSConfig
from rvos_batch.predictor import BatchSession, PredictConfig, preprocess

SIZE = (64, 96)
ORIG = (64, 96)


def test_colour_bins_and_histograms_match_numpy():
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.random((2, 3, 10, 12), dtype=np.float32))
    masks = torch.from_numpy(rng.random((2, 3, 10, 12)) < 0.4)
    masks[1, 2] = False  # an empty mask
    idx = colour_bins(frames, 4)
    q = np.minimum((frames.numpy() * 4).astype(int), 3)
    assert np.array_equal(idx.numpy(), ((q[:, 0] * 4 + q[:, 1]) * 4 + q[:, 2]).reshape(2, -1))
    h = histograms(idx, masks.flatten(2), 64).numpy()
    for b in range(2):
        for s in range(3):
            m = masks[b, s].numpy().reshape(-1)
            counts = np.bincount(idx[b].numpy()[m], minlength=64).astype(float)
            ref = counts / counts.sum() if counts.sum() else counts
            np.testing.assert_allclose(h[b, s], ref, atol=1e-6)
    assert h[1, 2].sum() == 0
    p = torch.tensor([[0.5, 0.5, 0.0]])
    assert bhattacharyya(p, p).item() == pytest.approx(1.0)
    assert bhattacharyya(p, torch.tensor([[0.0, 0.0, 1.0]])).item() == 0.0


@pytest.mark.parametrize("width", [1, 2, 5, 12])
def test_surroundings_is_the_grown_mask_less_every_mask(width):
    rng = np.random.default_rng(width)
    masks = np.zeros((1, 2, 40, 50), dtype=bool)
    masks[0, 0, 5:15, 7:20] = True
    masks[0, 1, 22:30, 30:41] = True
    masks[0, 1] &= rng.random((40, 50)) < 0.9
    ring = surroundings(torch.from_numpy(masks), width).numpy()
    others = masks.any(axis=1)
    f = max(1, width // 3)
    for s in range(2):
        exact = ndimage.binary_dilation(masks[0, s], np.ones((2 * width + 1,) * 2, bool)) & ~others[0]
        loose = ndimage.binary_dilation(masks[0, s], np.ones((2 * (width + 2 * f) + 1,) * 2, bool)) & ~others[0]
        assert not (ring[0, s] & others[0]).any(), "the ring never lies on a mask"
        assert (exact <= ring[0, s]).all(), "the ring holds every pixel within the width"
        assert (ring[0, s] <= loose).all(), "and nothing further than the width plus two coarse cells"
        if f == 1:
            assert np.array_equal(ring[0, s], exact)


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 1, 1, 5), (1, 2, 4, 1)])
def test_majority_is_a_3x3_vote_within_the_frame(shape):
    flags = torch.from_numpy(np.random.default_rng(sum(shape)).random(shape) < 0.5)
    share = torch.nn.functional.avg_pool2d(flags.reshape(-1, 1, *shape[-2:]).float(), 3, stride=1, padding=1,
                                           count_include_pad=False)
    assert torch.equal(majority(flags), share.reshape(shape) > 0.5)


def _state(hists: list[list[np.ndarray | None]], bins: int) -> AppearanceState:
    b, n = len(hists), len(hists[0])
    models = torch.zeros(b, n, bins**3)
    known = torch.zeros(b, n, dtype=torch.bool)
    for i, row in enumerate(hists):
        for s, h in enumerate(row):
            if h is not None:
                models[i, s] = torch.from_numpy(h).float()
                known[i, s] = True
    return AppearanceState(models, known, LevelsState.empty(b))


def _frames_and_probs():
    """Row 0: a red square at rows 4..12, cols 4..12 on grey; slot 0's mask is that square, slot 1's a grey patch.
    Frame values are bin centres, so each colour falls in one bin."""
    frames = torch.full((1, 3, 20, 20), 0.55)
    frames[0, :, 4:12, 4:12] = torch.tensor([0.95, 0.05, 0.05])[:, None, None]
    probs = torch.zeros(1, 2, 20, 20)
    probs[0, 0, 4:12, 4:12] = 0.9
    probs[0, 1, 14:18, 14:18] = 0.9
    return frames, probs


def test_check_hides_a_mask_that_looks_like_its_surroundings_not_its_object():
    cfg = AppearanceConfig(bins=2, margin=0.1, rate=0.5)
    frames, probs = _frames_and_probs()
    red = np.zeros(8)
    red[1 * 4 + 0 * 2 + 0] = 1.0  # r high, g low, b low
    grey = np.zeros(8)
    grey[1 * 4 + 1 * 2 + 1] = 1.0  # 0.55 in every channel: the high bin of each
    state = _state([[red, red]], bins=2)  # both slots were given a red object
    reportable = torch.ones(1, 2, dtype=torch.bool)
    hidden, _, _, new = check(frames, probs, reportable, 0.5, None, None, state, cfg)
    assert hidden.tolist() == [[False, True]], "slot 1 sits on grey background, like its ring; slot 0 is red"
    assert torch.equal(new.models[0, 1], state.models[0, 1]), "a hidden slot's histogram is not updated"
    assert new.models[0, 0].tolist() == pytest.approx(red.tolist()), "a kept red mask keeps the red histogram"
    # unknown slots (never given a mask) and unreportable slots are never hidden
    hidden, _, _, _ = check(frames, probs, reportable, 0.5, None, None, _state([[red, None]], bins=2), cfg)
    assert hidden.tolist() == [[False, False]]
    hidden, _, _, _ = check(frames, probs, torch.tensor([[True, False]]), 0.5, None, None, state, cfg)
    assert hidden.tolist() == [[False, False]]
    # a slot given a mask at this frame is never hidden, and the given mask sets its histogram
    given = torch.zeros(1, 2, 20, 20)
    given[0, 1, 14:18, 14:18] = 1.0
    hidden, _, _, new = check(frames, probs, reportable, 0.5, given, torch.tensor([[False, True]]), state, cfg)
    assert hidden.tolist() == [[False, False]]
    assert new.models[0, 1].tolist() == pytest.approx(grey.tolist()) and bool(new.known[0, 1])
    # an empty given mask gives no appearance
    _, _, _, new = check(frames, probs, reportable, 0.5, torch.zeros(1, 2, 20, 20), torch.tensor([[True, True]]),
                   _state([[None, None]], bins=2), cfg)
    assert new.known.tolist() == [[False, False]]


def test_the_histogram_follows_kept_masks_at_its_rate():
    cfg = AppearanceConfig(bins=2, margin=1.0, rate=0.25)  # margin 1: never hidden
    frames, probs = _frames_and_probs()
    old = np.full(8, 1 / 8)
    new = check(frames, probs, torch.ones(1, 2, dtype=torch.bool), 0.5, None, None, _state([[old, None]], 2), cfg).state
    red = np.zeros(8)
    red[4] = 1.0
    assert new.models[0, 0].tolist() == pytest.approx((0.75 * old + 0.25 * red).tolist())


def test_refinement_trims_what_looks_like_the_ring_and_grows_into_what_looks_like_the_object():
    """Slot 0's mask is the red square and a grey band beside it: the band is taken out, the square's inside kept.
    Then its mask is the square's left part only: the ring's red pixels are added."""
    frames, probs = _frames_and_probs()
    probs[0, 0, 4:12, 12:16] = 0.9  # the band, on grey background
    red = np.zeros(8)
    red[4] = 1.0
    state = _state([[red, None]], bins=2)
    reportable = torch.ones(1, 2, dtype=torch.bool)
    cfg = AppearanceConfig(bins=2)
    hidden, trim, grow, _ = check(frames, probs, reportable, 0.5, None, None, state, cfg)
    assert hidden.tolist() == [[False, False]] and trim is not None and grow is not None
    assert trim[0, 0, 4:12, 12:16].all(), "the grey band is the ring's colour: taken out"
    assert not trim[0, 0, 5:11, 5:11].any(), "the square's inside is the object's colour: kept"
    assert not trim[0, 0, :, :4].any() and not trim[0, 0, :4].any(), "only mask pixels are taken"
    assert not trim[0, 1].any() and not grow[0, 1].any(), "a slot never given a mask is not refined"
    assert not grow.any(), "the whole square is in the mask: nothing red left to add"

    probs[0, 0] = 0.0
    probs[0, 0, 4:12, 4:9] = 0.9  # the square's left part; the ring (1 pixel at this size) is column 9 and around
    _, trim, grow, _ = check(frames, probs, reportable, 0.5, None, None, state, cfg)
    assert trim is not None and grow is not None
    assert not trim[0, 0, 5:11].any(), "at most the square's corners, where grey outnumbers red around them, go"
    assert grow[0, 0, 4:12, 9].all() and int(grow[0, 0].sum()) == 8, "the ring's red pixels are added, no others"

    given = torch.zeros(1, 2, 20, 20)
    given[0, 0, 4:12, 4:16] = 1.0
    _, trim, grow, _ = check(frames, probs, reportable, 0.5, given, torch.tensor([[True, False]]), state, cfg)
    assert trim is not None and grow is not None and not trim.any() and not grow.any(), (
        "a mask given at this frame is not refined")
    result = check(frames, probs, reportable, 0.5, None, None, state, AppearanceConfig(bins=2, refine=None))
    assert result.trim is None and result.grow is None


def test_appearance_config_is_validated():
    for bad in ({"margin": 2.0}, {"rate": -0.1}, {"bins": 1}, {"bins": True}, {"ring": 0.0}, {"refine": 0.5},
                {"filter": -1}, {"filter": True}, {"filter": 2.5}, {"filter_eps": 0.0}, {"filter_step": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AppearanceConfig(**bad)
    with pytest.raises(ConfigError, match="appearance"):
        PredictConfig(appearance=0.1)  # type: ignore[arg-type]


def _guided_reference(image: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """The guided filter from its definition, window by window in float64: image (3, h, w), p (h, w). Each window
    (the in-frame pixels within ``r`` of its centre) fits p ~ a . colour + b by ridge regression; a pixel's output
    averages the fits of the windows that hold it."""
    _, h, w = image.shape
    coef = np.zeros((h, w, 4))
    for y in range(h):
        for x in range(w):
            win = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
            colours = image[:, win[0], win[1]].reshape(3, -1)
            values = p[win].ravel()
            mean_c, mean_p = colours.mean(axis=1), values.mean()
            cov = np.cov(colours, bias=True) + eps * np.eye(3)
            a = np.linalg.solve(cov, (colours * values).mean(axis=1) - mean_c * mean_p)
            coef[y, x] = (*a, mean_p - a @ mean_c)
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            c = coef[max(0, y - r): y + r + 1, max(0, x - r): x + r + 1].reshape(-1, 4).mean(axis=0)
            out[y, x] = c[:3] @ image[:, y, x] + c[3]
    return np.clip(out, 0.0, 1.0)


def test_guided_filter_matches_its_definition():
    rng = np.random.default_rng(3)
    image = rng.random((2, 3, 9, 11))
    probs = (rng.random((2, 2, 9, 11)) > 0.5).astype(np.float64)
    for r, eps in ((1, 1e-3), (2, 1e-4)):
        got = guided_filter(torch.from_numpy(image), torch.from_numpy(probs), r, eps).numpy()
        for i in range(2):
            for k in range(2):
                np.testing.assert_allclose(got[i, k], _guided_reference(image[i], probs[i, k], r, eps), atol=1e-4)


def test_window_means_match_a_plain_loop():
    """The guided filter's window means (shifted sums over the part of the window inside the plane) and its
    cell means, against loops: radii from 0 to past the plane's size, sizes that the step does and does not divide."""
    rng = np.random.default_rng(5)
    x = rng.random((2, 3, 7, 10))
    for r in (0, 1, 2, 4, 12):
        want = np.zeros_like(x)
        for y in range(7):
            for z in range(10):
                want[:, :, y, z] = x[:, :, max(0, y - r): y + r + 1, max(0, z - r): z + r + 1].mean(axis=(2, 3))
        np.testing.assert_allclose(_box(torch.from_numpy(x), r).numpy(), want, atol=1e-12, err_msg=f"radius {r}")
    for h, w, step in ((6, 10, 2), (7, 10, 2), (9, 9, 3), (7, 10, 4)):
        cells = _cells(torch.from_numpy(x[:, :, :h, :w]), step).numpy()
        want = np.zeros((2, 3, -(-h // step), -(-w // step)))
        for i in range(want.shape[2]):
            for j in range(want.shape[3]):
                want[:, :, i, j] = x[:, :, i * step: (i + 1) * step, j * step: (j + 1) * step].mean(axis=(2, 3))
        np.testing.assert_allclose(cells, want, atol=1e-12, err_msg=f"{h}x{w} step {step}")


def test_guided_filter_keeps_what_the_colours_explain_and_moves_edges_onto_the_frames():
    rng = np.random.default_rng(4)
    image = torch.from_numpy(rng.random((1, 3, 24, 32), dtype=np.float32))
    for step in (1, 2):
        affine = 0.5 * image[:, :1] - 0.2 * image[:, 2:] + 0.3  # a mask the colours explain exactly: unchanged
        out = guided_filter(image, affine, 4, 1e-6, step)
        assert torch.allclose(out, affine, atol=2e-3), step
        flat = torch.full((1, 1, 24, 32), 0.7)
        assert torch.allclose(guided_filter(image, flat, 4, 1e-4, step), flat, atol=1e-5), "constant stays constant"
    # a red left half on a blue right half (with a little noise), and masks that overshoot the edge
    frame = torch.zeros(1, 3, 24, 32)
    frame[0, 0, :, :16], frame[0, 2, :, 16:] = 0.9, 0.8
    frame += 0.02 * torch.from_numpy(rng.random((1, 3, 24, 32), dtype=np.float32))
    for step in (1, 2):
        for over in (1, 2, 3):
            mask = torch.zeros(1, 1, 24, 32)
            mask[..., : 16 + over] = 1.0
            out = guided_filter(frame, mask, 4, 1e-4, step)[0, 0]
            assert (out[:, :16] > 0.5).all(), (step, over)
            if over == 1:  # back on the edge
                assert not (out[:, 16:] > 0.5).any(), step
            else:  # a regression over the window: a wider overshoot is pulled back in part
                assert (out[:, 16:] > 0.5).sum() < 24 * over, (step, over)


# ---- in a session -------------------------------------------------------------------------------------------------

RED, BACKGROUND = (230, 30, 30), (40, 120, 200)
SQUARE = (slice(16, 40), slice(24, 56))


def _frame(with_object: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(BACKGROUND) + rng.normal(0, 6, (*ORIG, 3)), 0, 255).astype(np.uint8)
    if with_object:
        img[SQUARE] = RED
    return img


def _square() -> np.ndarray:
    m = np.zeros(ORIG, dtype=bool)
    m[SQUARE] = True
    return m


def _model_that_keeps_the_square(monkeypatch, region: tuple[slice, slice] = SQUARE, mode: str = "one-shot") -> RVOS:
    """A model whose slot 0 always segments ``region`` (default: the square), as a decoder that keeps feeding its
    mask back would after the object left; the recurrent state still steps as usual."""
    torch.manual_seed(0)
    model = RVOS(RVOSConfig(backbone="mobilenet_v2", hidden=16, num_slots=2, mode=mode, recurrence="ST",
                            input_size=SIZE)).eval()
    step = model.step
    square = torch.zeros(1, 1, *ORIG)
    square[0, 0][region] = 1.0
    small = torch.nn.functional.interpolate(square, size=SIZE, mode="bilinear", align_corners=False)[0, 0] > 0.5

    def scripted(frames, state, given=None, valid=None, num_active_slots=None):
        logits, new = step(frames, state, given, valid, num_active_slots=num_active_slots)
        logits = torch.full_like(logits, -10.0)
        logits[:, 0][:, small] = 10.0
        return logits, new

    monkeypatch.setattr(model, "step", scripted)
    return model


def _run(session: BatchSession, rows: dict[int, list[bool]], start: int = 0) -> dict[int, list[list[int]]]:
    """Step the rows together from frame ``start``; rows[r][i]: whether row r's frame start + i shows the object.
    Returns the ids reported per frame."""
    out: dict[int, list[list[int]]] = {r: [] for r in rows}
    for t in range(start, start + len(next(iter(rows.values())))):
        frames = {r: (t, preprocess(_frame(shows[t - start], seed=10 * r + t), session.input_size))
                  for r, shows in rows.items()}
        for r, res in session.step(frames).items():
            out[r].append(res.object_ids.tolist())
    return out


def test_a_session_leaves_out_an_object_while_it_is_gone_and_reports_it_when_it_is_back(monkeypatch):
    model = _model_that_keeps_the_square(monkeypatch)
    shows = [True, True, False, False, True]
    session = BatchSession(model, PredictConfig(), capacity=2)
    session.add(0, "leaves", ORIG, {0: {7: _square()}})
    session.add(1, "stays", ORIG, {0: {7: _square()}})
    ids = _run(session, {0: shows, 1: [True] * 5})
    assert ids[0] == [[7], [7], [], [], [7]], "left out while its patch shows background, back when the object is"
    assert ids[1] == [[7]] * 5, "the other row, stepped in the same batch, is unaffected"

    plain = BatchSession(model, PredictConfig(appearance=None), capacity=1)
    plain.add(0, "leaves", ORIG, {0: {7: _square()}})
    assert _run(plain, {0: shows})[0] == [[7]] * 5, "without the check every mask the model makes is reported"


def test_a_session_refines_the_output_and_the_mask_it_feeds_back(monkeypatch):
    """The model segments the red square's left half; from the frame after the prompt, the red columns of the ring
    (3 pixels at 64x96) are added, in the output and in the mask fed to the next frame."""
    left = (SQUARE[0], slice(24, 40))
    model = _model_that_keeps_the_square(monkeypatch, left)
    outputs = {}
    refine_only = AppearanceConfig(filter=0)  # the refinement alone; the filter has its own test below
    for name, config in (("refined", PredictConfig(appearance=refine_only)), ("plain", PredictConfig(appearance=None))):
        session = BatchSession(model, config, capacity=1)
        session.add(0, "v", ORIG, {0: {7: _square()}})
        masks = [session.step({0: (t, preprocess(_frame(True, seed=t), session.input_size))})[0].masks[0]
                 for t in range(2)]
        outputs[name] = masks
        fed = session.state.prev_masks
        assert fed is not None
        assert bool((fed[0, 0, 17:39, 40:43] > 0.5).all()) == (name == "refined"), "the fed-back mask is refined"
    # the prompt frame's output is the given mask itself, neither the model's half nor refined
    assert (outputs["refined"][0] == _square()).all() and (outputs["plain"][0] == _square()).all()
    assert outputs["refined"][1][17:39, 40:43].all() and not outputs["plain"][1][:, 40:].any()
    assert not outputs["refined"][1][:, 44:].any() and not outputs["refined"][1][:14].any(), "only the ring grows"


def test_one_shot_sessions_filter_their_masks_and_feed_them_back_and_zero_shot_sessions_do_not(monkeypatch):
    """The model's mask overshoots the red square by a column onto the blue background; the guided filter (no colour
    refinement here) moves its edge back onto the square's, in the output and in the mask fed back. The prompt
    frame's output is the given mask; the fed mask there is the given one too."""
    wide = (SQUARE[0], slice(24, 57))
    filtered = PredictConfig(appearance=AppearanceConfig(refine=None, filter=4))
    unfiltered = PredictConfig(appearance=AppearanceConfig(refine=None, filter=0))
    outputs = {}
    for name, config in (("filtered", filtered), ("unfiltered", unfiltered)):
        session = BatchSession(_model_that_keeps_the_square(monkeypatch, wide), config, capacity=1)
        session.add(0, "v", ORIG, {0: {7: _square()}})
        outputs[name] = [session.step({0: (t, preprocess(_frame(True, seed=t), session.input_size))})[0].masks[0]
                         for t in range(2)]
        fed = session.state.prev_masks
        assert fed is not None
        if name == "filtered":  # the scripted model's own fed mask is its network's; the filtered one replaces it
            assert ((fed[0, 0] > 0.5).numpy() == _square()).all(), "the fed mask is the filtered one"
    assert (outputs["unfiltered"][0] == _square()).all() and (outputs["filtered"][0] == _square()).all()
    assert outputs["unfiltered"][1][16:40, 24:57].all() and outputs["unfiltered"][1].sum() == 24 * 33
    assert (outputs["filtered"][1] == _square()).all()

    zero = _model_that_keeps_the_square(monkeypatch, wide, mode="zero-shot")
    masks = {}
    for name, config in (("filtered", filtered), ("unfiltered", unfiltered)):
        session = BatchSession(zero, config, capacity=1)
        session.add(0, "v", ORIG)
        masks[name] = [session.step({0: (t, preprocess(_frame(True, seed=t), session.input_size))})[0].masks
                       for t in range(2)]
    assert all((a == b).all() for a, b in zip(masks["filtered"], masks["unfiltered"], strict=True))


def test_the_check_views_a_low_contrast_video_stretched_and_others_as_they_are():
    dim = torch.rand(2, 3, 16, 16) * 0.1 + 0.45  # levels spanning about 0.1 of the range
    bright = torch.rand(2, 3, 16, 16)
    state = AppearanceState.empty(2, 1, AppearanceConfig(), "cpu")
    out, seen = view(dim, state, AppearanceConfig(levels=0.6))
    span = out.flatten(1).quantile(0.995, dim=1) - out.flatten(1).quantile(0.005, dim=1)
    assert (span > 0.35).all() and bool(seen.levels.seen.all()), "stretched (at most 4x), and the levels kept"
    assert torch.equal(view(bright, state, AppearanceConfig(levels=0.6))[0], bright), "a contrasty video is as it is"
    same, kept = view(dim, state, AppearanceConfig(levels=None))
    assert same is dim and kept is state, "levels None: the frames and the state as they are"
    _, part = view(dim, state, AppearanceConfig(), present=torch.tensor([True, False]))
    assert part.levels.seen.tolist() == [True, False], "a padded step's blank row keeps its video's levels"
    assert AppearanceConfig(levels=None).record() == {
        k: v for k, v in dataclasses.asdict(AppearanceConfig()).items() if k != "levels"}


def test_a_one_shot_session_checks_dark_footage_as_stretched(monkeypatch):
    """At an eighth of the brightness the red square and the blue background fall into the same colour bin: the
    check cannot tell that the object has gone. Seen stretched (the default), it can. Zero-shot sessions and a
    check without levels read the frames as they are; the model always does."""
    model = _model_that_keeps_the_square(monkeypatch)
    shows = [True, True, False, False, True]

    def dark(session: BatchSession) -> list:
        """Step row 0 through the frames of ``shows`` at an eighth of their brightness; its FrameResults."""
        return [session.step({0: (t, preprocess((_frame(s, seed=t) * 0.125).astype(np.uint8), SIZE), ORIG)})[0]
                for t, s in enumerate(shows)]

    runs = {}
    for name, config in (("stretched", PredictConfig()),
                         ("as is", PredictConfig(appearance=AppearanceConfig(levels=None)))):
        session = BatchSession(model, config, capacity=1)
        session.add(0, "dark", ORIG, {0: {7: _square()}})
        runs[name] = [r.object_ids.tolist() for r in dark(session)]
    assert runs["stretched"] == [[7], [7], [], [], [7]], "left out while it is gone, back when it is back"
    assert runs["as is"] == [[7]] * 5, "unstretched, its colours are the background's"
    zero = _model_that_keeps_the_square(monkeypatch, mode="zero-shot")
    masks = {}
    for name, seen in (("default", AppearanceConfig()), ("as is", AppearanceConfig(levels=None))):
        session = BatchSession(zero, PredictConfig(appearance=seen), capacity=1)
        session.add(0, "dark")
        masks[name] = dark(session)
    assert [r.object_ids.tolist() for r in masks["default"]] == [r.object_ids.tolist() for r in masks["as is"]]
    assert all((a.masks == b.masks).all() for a, b in zip(masks["default"], masks["as is"], strict=True))


def test_a_snapshot_restores_the_checks_state(monkeypatch):
    model = _model_that_keeps_the_square(monkeypatch)
    session = BatchSession(model, PredictConfig(), capacity=1)
    session.add(0, "v", ORIG, {0: {7: _square()}})
    _run(session, {0: [True]})
    snap = session.snapshot()
    assert snap.appearance is not None and bool(snap.appearance.known[0, 0])
    before = snap.appearance.models.clone()
    # re-anchored at frame 1 on a patch of background: the given mask sets a new histogram
    session.step({0: (1, preprocess(_frame(False, seed=1), session.input_size))}, prompts={0: {7: _square()}})
    assert session.appearance is not None and not torch.equal(session.appearance.models, before)
    session.restore(snap)
    assert session.appearance is not None and torch.equal(session.appearance.models, before)
    session.release(0)
    session.add(0, "next", ORIG, {0: {3: _square()}})
    assert session.appearance is not None and not session.appearance.known.any(), "a new video starts unknown"


def test_a_zero_shot_slot_is_checked_against_its_first_mask(monkeypatch):
    """Zero-shot: slot 0 (object id 1) always segments the square. Its first mask (the red square) sets its colours;
    once the square shows background it is left out, and it is back with the object. A DiscoverTrackSession's
    finder is not checked: its masks are hand-over candidates, not output."""
    model = _model_that_keeps_the_square(monkeypatch, mode="zero-shot")
    shows = [True, True, False, True]
    for config, want in ((PredictConfig(), [[1], [1], [], [1]]), (PredictConfig(appearance=None), [[1]] * 4)):
        session = BatchSession(model, config, capacity=1)
        session.add(0, "v", ORIG)
        assert _run(session, {0: shows})[0] == want

    from rvos_batch.discover import DiscoverTrackSession

    tracker = RVOS(RVOSConfig(backbone="mobilenet_v2", hidden=16, num_slots=2, mode="one-shot", recurrence="ST",
                              input_size=SIZE)).eval()
    both = DiscoverTrackSession(model, tracker, PredictConfig(), capacity=1)
    assert both.finder.appearance is None and both.tracker.appearance is not None
    tracked = both.tracker.config.appearance
    assert tracked is not None and tracked.filter == 0 and tracked.refine == AppearanceConfig().refine, "not filtered"
    assert tracked.levels is None, "and it checks the frames as they are"


@pytest.mark.parametrize(("checked", "radius"), [(True, 0), (True, 4), (False, 0)])
def test_training_with_the_check_feeds_back_what_labeling_feeds_back(monkeypatch, checked, radius):
    """`train --appearance-check [--appearance-filter R]` (stage 2) refines (and filters) the fed-back masks between
    frames as a labeling session with that filter radius does: the masks going into each frame are the session's.
    Without the flag they are the model's own."""
    from rvos_batch.train import _one_shot_logits

    left = (SQUARE[0], slice(24, 40))
    model = _model_that_keeps_the_square(monkeypatch, left)
    scripted, seen = model.step, []

    def recording(frames, state, given=None, valid=None, num_active_slots=None):
        seen.append(state.prev_masks[:, 0].clone())  # slot 0's mask going into this frame
        return scripted(frames, state, given, valid, num_active_slots=num_active_slots)

    monkeypatch.setattr(model, "step", recording)
    frames = [preprocess(_frame(True, seed=t), SIZE) for t in range(3)]
    sessions = {}
    for r in (0, 4):
        session = BatchSession(model, PredictConfig(appearance=AppearanceConfig(filter=r)), capacity=1)
        session.add(0, "v", ORIG, {0: {7: _square()}})
        for t, frame in enumerate(frames):
            session.step({0: (t, frame)})
        sessions[r], seen[:] = list(seen), []
    assert not torch.equal(sessions[0][2], sessions[4][2]), "the filter changes what goes into frame 2"
    labeling = sessions[radius]

    images = torch.stack(frames).float().div(255.0)[None]  # (1, T, 3, H, W)
    given = torch.zeros(1, 3, 1, *SIZE)
    given[0, 0, 0] = torch.from_numpy(_square()).float()
    valid = torch.zeros(1, 3, 1, dtype=torch.bool)
    valid[0, 0, 0] = True
    with torch.no_grad():
        _one_shot_logits(model, images, given, valid, AppearanceConfig(filter=radius) if checked else None)
    assert len(seen) == len(labeling) == 3
    assert torch.equal(seen[1], labeling[1]), "after the prompt frame both feed back the given mask"
    assert torch.equal(seen[2], labeling[2]) == checked, "the refined mask (grown to the square) goes into frame 2"


def test_the_check_never_sees_denormal_probabilities(monkeypatch):
    """A confident background (logits of -88: sigmoid 6e-39, a denormal float, many times slower on CPUs) reaches
    the check and the filter as exact zeros; probabilities that matter are untouched."""
    from rvos_batch import predictor

    model = _model_that_keeps_the_square(monkeypatch)
    step = model.step

    def confident(frames, state, given=None, valid=None, num_active_slots=None):
        logits, new = step(frames, state, given, valid, num_active_slots=num_active_slots)
        return torch.where(logits < 0, torch.full_like(logits, -88.0), logits), new

    monkeypatch.setattr(model, "step", confident)
    seen = []
    check = predictor.appearance_check

    def recording(batch, probs, *args, **kwargs):
        seen.append(probs.clone())
        return check(batch, probs, *args, **kwargs)

    monkeypatch.setattr(predictor, "appearance_check", recording)
    session = BatchSession(model, PredictConfig(), capacity=1)
    session.add(0, "v", ORIG, {0: {7: _square()}})
    ids = _run(session, {0: [True, True]})[0]
    assert ids == [[7], [7]]
    tiny = torch.finfo(torch.float32).tiny
    assert 0 < torch.sigmoid(torch.tensor(-88.0)).item() < tiny  # what the model's probability would be: denormal
    for probs in seen:
        assert not ((probs > 0) & (probs < tiny)).any()
        assert (probs == 0).any() and (probs > 0.99).any()
