"""Zero-shot finding with a one-shot tracker: the hand-over rule and the session that composes the two models (equal
to its parts, batched equal to one video at a time, failures undone)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_predictor import ORIG, assert_results_match, box, check_result, tiny, video

from rvos_batch.discover import DiscoverTrackSession, DiscoveryConfig, FinishedStep, new_objects, snap_masks
from rvos_batch.model import RVOS, ConfigError, RVOSConfig
from rvos_batch.model.rvos import with_slots
from rvos_batch.predictor import BatchSession, FrameResult, PredictConfig, preprocess
from rvos_batch.rle import decode

TRACK_SIZE = (80, 112)  # the tracker runs at another size than the finder (SIZE), as the shipped pair does


def tracker(slots: int = 3) -> RVOS:
    torch.manual_seed(1)
    model = RVOS(RVOSConfig(backbone="mobilenet_v2", hidden=16, num_slots=slots, mode="one-shot", recurrence="ST",
                            input_size=TRACK_SIZE)).eval()
    with torch.no_grad():
        model.decoder.head.bias.fill_(1.0)  # a prompted object keeps a mask
    return model


def found(*masks: tuple[int, np.ndarray]) -> FrameResult:
    ids = np.array([i for i, _ in masks], np.int32)
    stack = np.stack([m for _, m in masks]) if masks else np.zeros((0, *ORIG), bool)
    return FrameResult(0, ids, stack, np.ones(len(masks), np.float32))


# ---- the hand-over rule --------------------------------------------------------------------------------------


def test_new_objects_hands_over_large_enough_untracked_masks():
    a, b, c = box(ORIG, 0, 10, 0, 10), box(ORIG, 20, 30, 20, 40), box(ORIG, 40, 41, 0, 1)  # c: one pixel
    f = found((1, a), (2, b), (3, c))
    cfg = DiscoveryConfig(min_area_fraction=2 / (ORIG[0] * ORIG[1]), max_overlap=0.5)
    assert [i for i, _ in new_objects(f, None, 5, cfg)] == [1, 2]  # c is below the area floor
    assert [i for i, _ in new_objects(f, None, 5, DiscoveryConfig(min_area_fraction=0.0))] == [1, 2, 3]
    assert np.array_equal(new_objects(f, None, 5, cfg)[1][1], b)  # the finder's own mask is handed over
    assert [i for i, _ in new_objects(f, None, 1, cfg)] == [1]  # no more than the free slots
    assert new_objects(f, None, 0, cfg) == []
    half = box(ORIG, 0, 5, 0, 10)  # covers exactly half of a: not more than max_overlap, so a is still new
    assert [i for i, _ in new_objects(f, half, 5, cfg)] == [1, 2]
    more = box(ORIG, 0, 6, 0, 10)
    assert [i for i, _ in new_objects(f, more, 5, cfg)] == [2]
    assert [i for i, _ in new_objects(f, more, 5, DiscoveryConfig(0.0, 1.0))] == [1, 2, 3]
    assert [i for i, _ in new_objects(f, box(ORIG, 0, 1, 0, 10), 5, DiscoveryConfig(0.0, 0.1))] == [1, 2, 3]
    assert [i for i, _ in new_objects(f, box(ORIG, 0, 2, 0, 10), 5, DiscoveryConfig(0.0, 0.1))] == [2, 3]
    empty = found((1, np.zeros(ORIG, bool)), (2, b))
    assert [i for i, _ in new_objects(empty, None, 5, DiscoveryConfig(min_area_fraction=0.0))] == [2]
    assert new_objects(found(), None, 5, cfg) == []


def test_discovery_config_is_validated():
    with pytest.raises(ConfigError, match="min_area_fraction"):
        DiscoveryConfig(min_area_fraction=1.0)
    with pytest.raises(ConfigError, match="max_overlap"):
        DiscoveryConfig(max_overlap=-0.1)
    with pytest.raises(ConfigError, match="tracker_slots"):
        DiscoveryConfig(tracker_slots=0)
    with pytest.raises(ConfigError, match="snap_radius"):
        DiscoveryConfig(snap_radius=-1)
    with pytest.raises(ConfigError, match="snap_eps"):
        DiscoveryConfig(snap_eps=0.0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_snap_masks_moves_a_coarse_mask_onto_the_objects_edges():
    """A finder mask that spills onto the background on one side and misses the object on the other comes back on
    the object's own edges; the frame is read at the tracker's input size, the masks stay at the original size."""
    size, orig = (96, 160), (120, 200)
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal(150, 6, (*orig, 3)), 0, 255).astype(np.uint8)  # a grey, slightly noisy background
    obj = box(orig, 30, 90, 50, 130)
    rgb[obj] = (200, 40, 40)
    coarse = box(orig, 34, 94, 56, 136)  # the object moved 4 down and 6 right
    x = preprocess(rgb, size)
    other = box(orig, 0, 10, 0, 10)  # on the background only
    snapped = snap_masks(x, np.stack([coarse, other]), radius=8, eps=1e-3)
    assert snapped.shape == (2, *orig) and snapped.dtype == bool
    assert _iou(coarse, obj) < 0.77 and _iou(snapped[0], obj) > 0.88  # 0.76 -> 0.90
    assert snapped[1].sum() > 0 and _iou(snapped[1], obj) == 0.0  # a background mask stays on the background
    assert np.array_equal(snap_masks(x.float() / 255.0, coarse[None], 8, 1e-3), snapped[:1])  # float frames too
    assert np.array_equal(snap_masks(x, coarse[None], radius=0, eps=1e-3), coarse[None])  # 0: as it is


def test_snap_masks_never_drops_an_object():
    """A mask the filter would empty (one pixel on a flat frame) is handed over as it was."""
    orig = (60, 80)
    rgb = np.full((*orig, 3), 90, np.uint8)
    dot = box(orig, 30, 31, 40, 41)
    x = preprocess(rgb, (48, 64))
    assert np.array_equal(snap_masks(x, dot[None], 8, 1e-3), dot[None])
    assert snap_masks(x, np.zeros((0, *orig), bool), 8, 1e-3).shape == (0, *orig)


# ---- the session --------------------------------------------------------------------------------------------


def _run(session: DiscoverTrackSession, frames, row: int = 0) -> list[FrameResult]:
    return [session.step({row: (fi, preprocess(rgb, TRACK_SIZE))})[row] for fi, rgb in frames]


def test_discover_track_equals_the_finder_then_the_prompted_tracker():
    """The session's output is the tracker's (with more slots than it has), given at each frame the finder's new
    objects (by new_objects)."""
    finder, follow = tiny("zero-shot"), tracker()
    cfg = PredictConfig(threshold=0.5)
    discovery = DiscoveryConfig(min_area_fraction=0.01, max_overlap=0.5, tracker_slots=5)
    frames = video(5, seed=6)
    for _, rgb in frames:  # a dark left half, a light right one: edges for the hand-overs to snap to
        rgb //= 4
        rgb[:, ORIG[1] // 2:] += 150
    session = DiscoverTrackSession(finder, follow, cfg, capacity=1, discovery=discovery)
    session.add(0, "v", ORIG)
    got = _run(session, frames)

    alone = BatchSession(finder, cfg, capacity=1)
    alone.add(0, "v", ORIG)
    plain = BatchSession(with_slots(follow, 5), replace(cfg, given_is_output=False), capacity=1)  # hand-overs read
    plain.add(0, "v", ORIG)
    followed = snapped = 0
    tracked = None
    want = []
    for fi, rgb in frames:
        x = preprocess(rgb, TRACK_SIZE)
        f = alone.step({0: (fi, session._finder_frame(x))})[0]
        prompts = {}
        for _, mask in new_objects(f, tracked, 5 - followed, discovery):
            followed += 1
            prompts[followed] = snap_masks(x, mask[None], discovery.snap_radius, discovery.snap_eps, 0.5)[0]
            snapped += not np.array_equal(prompts[followed], mask)
        r = plain.step({0: (fi, x)}, {0: prompts} if prompts else None)[0]
        tracked = r.masks.any(axis=0) if len(r.masks) else None
        want.append(r)
    assert_results_match(got, want)
    assert followed, "the test finder should find something"
    assert snapped, "the hand-overs should be snapped onto the frames' edges"
    assert session.tracker.state.num_slots == 5 and follow.config.num_slots == 3
    for r in got:
        check_result(r, ORIG, set(range(1, followed + 1)))


def test_discover_track_batched_rows_equal_one_video_at_a_time():
    finder, follow = tiny("zero-shot"), tracker()
    cfg = PredictConfig(threshold=0.3)
    videos = {"a": video(4, seed=7), "b": video(2, seed=8), "c": video(3, seed=9)}
    alone = {}
    for vid, frames in videos.items():
        s = DiscoverTrackSession(finder, follow, cfg, capacity=1)
        s.add(0, vid, ORIG)
        alone[vid] = _run(s, frames)
    batched = {vid: [] for vid in videos}
    s = DiscoverTrackSession(finder, follow, cfg, capacity=2)
    queue, rows, pos = list(videos), {}, {}
    while queue or rows:
        for row in s.free_rows():
            if queue:
                vid = queue.pop(0)
                s.add(row, vid, ORIG)
                rows[row], pos[vid] = vid, 0
        step = {row: (pos[vid], preprocess(videos[vid][pos[vid]][1], TRACK_SIZE)) for row, vid in rows.items()}
        pending = s.step_async(step)
        assert isinstance(pending, FinishedStep) and pending.rows == sorted(step)
        for row, r in pending.result().items():
            batched[rows[row]].append(r)
        for row, vid in list(rows.items()):
            pos[vid] += 1
            if pos[vid] == len(videos[vid]):
                s.release(row)
                del rows[row]
    for vid in videos:
        assert_results_match(batched[vid], alone[vid])


def test_rles_are_the_results_encoded():
    s = DiscoverTrackSession(tiny("zero-shot"), tracker(), PredictConfig(threshold=0.3), capacity=1)
    s.add(0, "v", ORIG)
    for fi, rgb in video(3, seed=10):
        pending = s.step_async({0: (fi, preprocess(rgb, TRACK_SIZE))})
        r, e = pending.result()[0], pending.rles()[0]
        assert e.size == ORIG and e.object_ids.tolist() == r.object_ids.tolist()
        assert e.areas.tolist() == r.masks.sum(axis=(1, 2)).tolist() and e.boxes.shape == (len(r.masks), 4)
        for counts, mask in zip(e.counts, r.masks, strict=True):
            assert np.array_equal(decode({"size": list(ORIG), "counts": counts}), mask)


def test_a_failed_tracker_step_leaves_both_models_as_they_were(monkeypatch):
    finder, follow = tiny("zero-shot"), tracker()
    cfg = PredictConfig(threshold=0.3)
    frames = video(4, seed=11)
    ref = DiscoverTrackSession(finder, follow, cfg, capacity=1)
    ref.add(0, "v", ORIG)
    want = _run(ref, frames)

    s = DiscoverTrackSession(finder, follow, cfg, capacity=1)
    s.add(0, "v", ORIG)
    got = _run(s, frames[:2])
    follow = s.tracker.model  # the tracker with the session's slot count: the same weights
    real_step = follow.step
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        raise RuntimeError("tracker broke")

    monkeypatch.setattr(follow, "step", failing)
    fi, rgb = frames[2]
    with pytest.raises(RuntimeError, match="tracker broke"):
        s.step({0: (fi, preprocess(rgb, TRACK_SIZE))})
    assert calls["n"] == 1
    monkeypatch.setattr(follow, "step", real_step)
    got += _run(s, frames[2:])  # the same frame again: the finder was rolled back, no hand-over was kept
    assert_results_match(got, want)


def test_discover_track_session_refuses_wrong_models_and_prompts():
    zs, os_ = tiny("zero-shot"), tracker()
    with pytest.raises(ConfigError, match="the finder must be a zero-shot model"):
        DiscoverTrackSession(os_, os_, PredictConfig())
    with pytest.raises(ConfigError, match="the tracker must be a one-shot model"):
        DiscoverTrackSession(zs, zs, PredictConfig())
    s = DiscoverTrackSession(zs, os_, PredictConfig(), capacity=1)
    assert s.input_size == TRACK_SIZE and s.free_rows() == [0]
    with pytest.raises(ValueError, match="prompts given to zero-shot labeling with a tracker"):
        s.add(0, "v", ORIG, {0: {1: box(ORIG, 0, 5, 0, 5)}})
    assert s.free_rows() == [0]
    s.add(0, "v", ORIG)
    assert s.video_id(0) == "v" and s.step({}) == {}
    s.release(0)
    assert s.free_rows() == [0] and s.video_id(0) is None


def script_tracker(monkeypatch, s: DiscoverTrackSession) -> list[dict[int, np.ndarray]]:
    """Make the session's tracker follow each prompted object with its prompt mask, unmoved; returns the prompts
    it receives, one dict (tracker id -> mask) per frame."""
    seen: list[dict[int, np.ndarray]] = []
    held: dict[int, np.ndarray] = {}

    def scripted(frames, prompts=None):
        [(row, (fi, *_))] = frames.items()
        given = dict((prompts or {}).get(row, {}))
        seen.append(given)
        held.update(given)
        ids = sorted(held)
        masks = np.stack([held[i] for i in ids]) if ids else np.zeros((0, *ORIG), bool)
        return FinishedStep({row: FrameResult(fi, np.array(ids, np.int32), masks, np.ones(len(ids), np.float32))})

    monkeypatch.setattr(s.tracker, "step_async", scripted)
    return seen


def script_finder(monkeypatch, s: DiscoverTrackSession, script: dict[int, list[tuple[int, np.ndarray]]]) -> None:
    """Make the session's finder show ``script[frame_index]`` (object id, mask) on one row."""

    def scripted(frames):
        [(row, (fi, *_))] = frames.items()
        f = found(*script[fi])
        return {row: FrameResult(fi, f.object_ids, f.masks, f.scores)}

    monkeypatch.setattr(s.finder, "step", scripted)


def test_a_found_object_on_a_tracked_one_is_not_handed_over(monkeypatch):
    """The finder is scripted: object 1 at frame 0, then object 2 lying on what the tracker follows."""
    s = DiscoverTrackSession(tiny("zero-shot"), tracker(), PredictConfig(threshold=0.3), capacity=1,
                             discovery=DiscoveryConfig(min_area_fraction=0.0, max_overlap=0.5, tracker_slots=3))
    script_finder(monkeypatch, s, {0: [(1, box(ORIG, 5, 25, 5, 25))],
                                   1: [(1, box(ORIG, 5, 25, 5, 25)), (2, box(ORIG, 10, 20, 10, 20))]})
    s.add(0, "v", ORIG)
    first, second = _run(s, video(2, seed=12))
    assert first.object_ids.tolist() == [1] and second.object_ids.tolist() == [1]
    assert second.masks[0][10:20, 10:20].all(), "the tracker should cover the second found object"
    assert s.tracker.state.started[0].tolist() == [True, False, False]  # object 2 was never handed over


def test_a_finder_slot_hands_over_again_once_its_mask_lies_off_the_followed_objects(monkeypatch):
    """Finder object 1 is handed over at frame 0; at frame 1 the same finder slot shows a mask away from it, which
    becomes tracker object 2; at frame 2 it is back on object 1 and is not handed over again, while finder object
    2 becomes tracker object 3."""
    s = DiscoverTrackSession(tiny("zero-shot"), tracker(), PredictConfig(threshold=0.3), capacity=1,
                             discovery=DiscoveryConfig(min_area_fraction=0.0, max_overlap=0.1, tracker_slots=4,
                                                       snap_radius=0))  # the finder's masks as they are
    here, there, third = box(ORIG, 5, 25, 5, 25), box(ORIG, 30, 45, 40, 70), box(ORIG, 40, 48, 0, 8)
    script_finder(monkeypatch, s, {0: [(1, here)], 1: [(1, there)], 2: [(1, here), (2, third)]})
    prompts = script_tracker(monkeypatch, s)
    s.add(0, "v", ORIG)
    results = _run(s, video(3, seed=14))
    assert [sorted(p) for p in prompts] == [[1], [2], [3]]  # tracker ids count on: 1, 2, then 3
    assert np.array_equal(prompts[1][2], there) and np.array_equal(prompts[2][3], third)
    assert results[2].object_ids.tolist() == [1, 2, 3]
    assert s.tracker.state.num_slots == 4  # the tracker was built with 3 slots


def test_hand_overs_are_snapped_onto_the_frame(monkeypatch):
    """The tracker is prompted with the finder's mask snapped onto the frame (at the tracker's input size), not
    with the finder's own mask."""
    s = DiscoverTrackSession(tiny("zero-shot"), tracker(), PredictConfig(), capacity=1)
    rgb = np.full((*ORIG, 3), 140, np.uint8)
    obj = box(ORIG, 10, 40, 15, 55)
    rgb[obj] = (30, 60, 220)
    coarse = box(ORIG, 13, 43, 18, 58)
    script_finder(monkeypatch, s, {0: [(1, coarse)]})
    prompts = script_tracker(monkeypatch, s)
    s.add(0, "v", ORIG)
    s.step({0: (0, preprocess(rgb, TRACK_SIZE))})
    d = DiscoveryConfig()
    want = snap_masks(preprocess(rgb, TRACK_SIZE), coarse[None], d.snap_radius, d.snap_eps)[0]
    assert np.array_equal(prompts[0][1], want)
    assert _iou(want, obj) > _iou(coarse, obj) + 0.1


def test_frames_of_a_video_may_change_size(monkeypatch):
    """The followed masks of the previous frame are compared with found masks at this frame's size."""
    s = DiscoverTrackSession(tiny("zero-shot"), tracker(), PredictConfig(threshold=0.3), capacity=1,
                             discovery=DiscoveryConfig(min_area_fraction=0.0, max_overlap=0.5, tracker_slots=3))
    other = (40, 100)
    script_finder(monkeypatch, s, {0: [(1, box(ORIG, 5, 25, 5, 25))], 1: [(2, box(other, 10, 20, 10, 20))],
                                   2: [(3, box(ORIG, 30, 40, 50, 60))]})
    s.add(0, "v")
    for fi, ((_, rgb), size) in enumerate(zip(video(3, seed=13), [ORIG, other, ORIG], strict=True)):
        r = s.step({0: (fi, preprocess(rgb, TRACK_SIZE), size)})[0]
        check_result(r, size, {1})
    assert s.tracker.state.started[0].tolist() == [True, False, False]  # found objects 2 and 3 lie on object 1


def test_resize_nearest_keeps_a_box_in_place():
    from rvos_batch.discover import _resize_nearest

    m = box((10, 20), 2, 6, 4, 10)
    assert np.array_equal(_resize_nearest(m, (20, 40)), box((20, 40), 4, 12, 8, 20))
    assert np.array_equal(_resize_nearest(_resize_nearest(m, (20, 40)), (10, 20)), m)
    assert _resize_nearest(m, (3, 7)).shape == (3, 7)
