"""rvos_batch.evaluate: DAVIS-2017 J/F against figures of the official davis2017-evaluation package, plus edge cases.

Golden test: ground truth = four real mask videos of shared/data (one downscaled, one with void bands, one with
an object leaving for ten frames), predictions = seeded perturbations of them made by :func:`golden_case`
below (shifts, erosion, dilation, dropped frames, swapped ids, extra proposals). The official package was run
on exactly these masks (outside this repository) and its figures stored in tests/fixtures/davis_official/; we
regenerate the masks here and require every figure to agree to 1e-3. To regenerate the fixture, write the
masks with ``write_golden_layout`` and run the package on them (see tests/fixtures/davis_official/README.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from rvos_batch import imaging
from rvos_batch.evaluate import (
    EvalResult,
    EvaluationError,
    ObjectScore,
    boundary_measure,
    boundary_radius,
    evaluate,
    evaluate_video,
    load_seen,
    pairwise_scores,
    quarter_edges,
    region_similarity,
    statistics,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2017-val-osvos"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "davis_official"
GOLDEN_SEED = 2017
GOLDEN_VIDEOS = ("bike-packing", "gold-fish", "judo", "shooting")
TOL = 1e-3

# --------------------------------------------------------------------------------------------- golden case generator

_CROSS = np.zeros((3, 3, 3), dtype=bool)  # in-plane 4-connectivity: morphology per frame on (T, H, W) stacks
_CROSS[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def _read_video(video: str) -> np.ndarray:
    frames = sorted((SHARED / video).glob("*.png"))
    return np.stack([imaging.read_palette_png(p) for p in frames])


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift a (H, W) mask, filling with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def golden_ground_truth(video: str, ids: np.ndarray) -> np.ndarray:
    """The ground truth of the golden case for ``video`` from its shared-data masks."""
    ids = ids.copy()
    if video == "gold-fish":  # 240x427: another size and boundary radius (4 px)
        ids = np.ascontiguousarray(ids[:, ::2, ::2])
    elif video == "judo":  # void bands (255) around object 1 on every third frame
        obj = ids == 1
        band = ndimage.binary_dilation(obj, _CROSS, iterations=2) & ~ndimage.binary_erosion(obj, _CROSS, iterations=2)
        band[np.arange(len(ids)) % 3 != 0] = False
        ids[band] = 255
    elif video == "shooting":  # object 2 leaves for ten frames
        part = ids[10:20]
        part[part == 2] = 0
    return ids


def golden_prediction(ids: np.ndarray, protocol: str, rng: np.random.Generator) -> np.ndarray:
    """A seeded imperfect prediction of ground truth ``ids`` (void 255 treated as background)."""
    gt = np.where(ids == 255, 0, ids)
    t_n, h, w = gt.shape
    k_n = int(gt.max())
    out = np.zeros_like(gt)
    if protocol == "unsupervised":
        n_extra = int(rng.integers(1, 4))
        new_ids = rng.permutation(k_n + n_extra) + 1  # object k -> new_ids[k-1]; extra proposals get the rest
    else:
        n_extra = 0
        new_ids = np.arange(1, k_n + 1)
    for k in range(1, k_n + 1):
        m = gt == k
        kind = int(rng.integers(0, 6))
        if kind == 0:  # exact but missing on a few frames
            m[rng.choice(t_n, size=3, replace=False)] = False
        elif kind == 1:  # drifting shift
            dy, dx = (int(v) for v in rng.integers(-12, 13, size=2))
            m = np.stack([_shift(m[t], dy + t // 8, dx) for t in range(t_n)])
        elif kind == 2:
            m = ndimage.binary_dilation(m, _CROSS, iterations=int(rng.integers(1, 6)))
        elif kind == 3:
            m = ndimage.binary_erosion(m, _CROSS, iterations=int(rng.integers(1, 6)))
        elif kind == 4:  # lost for a stretch of frames, slightly shifted elsewhere
            a = int(rng.integers(0, t_n // 2))
            m = np.stack([_shift(m[t], 3, -2) for t in range(t_n)])
            m[a : a + int(rng.integers(5, 20))] = False
        elif protocol == "semi-supervised" and k == k_n:  # never predicted at all
            continue
        out[m] = new_ids[k - 1]
    for e in range(n_extra):  # extra proposals: a moving box, or another object's mask moved far away
        pid = new_ids[k_n + e]
        if e % 2 == 0:
            bh, bw = int(rng.integers(10, h // 3)), int(rng.integers(10, w // 3))
            y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            for t in range(t_n):
                x = min(w - bw, x0 + 2 * t)
                out[t, y0 : y0 + bh, x : x + bw] = pid
        else:
            src = gt == int(rng.integers(1, k_n + 1))
            dy, dx = int(rng.integers(-h // 3, h // 3)), int(rng.integers(-w // 3, w // 3))
            moved = np.stack([_shift(src[t], dy, dx) for t in range(t_n)])
            out[moved] = pid
    return out


def golden_case() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """video -> (ground truth, semi-supervised prediction, unsupervised prediction), all seeded."""
    rng = np.random.default_rng(GOLDEN_SEED)
    out = {}
    for video in GOLDEN_VIDEOS:
        gt = golden_ground_truth(video, _read_video(video))
        out[video] = (gt, golden_prediction(gt, "semi-supervised", rng), golden_prediction(gt, "unsupervised", rng))
    return out


def _write_pngs(folder: Path, ids: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(ids):
        (folder / f"{t:05d}.png").write_bytes(imaging.encode_palette_png(frame))


def write_golden_layout(root: Path) -> None:
    """DAVIS layout the official package reads (ground truth, dummy JPEGs, val.txt) and both predictions."""
    from PIL import Image

    case = golden_case()
    (root / "davis" / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "davis" / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{v}\n" for v in case))
    for video, (gt, semi, unsup) in case.items():
        _write_pngs(root / "davis" / "Annotations" / "480p" / video, gt)
        _write_pngs(root / "davis" / "Annotations_unsupervised" / "480p" / video, gt)
        jpg = root / "davis" / "JPEGImages" / "480p" / video
        jpg.mkdir(parents=True, exist_ok=True)
        for t in range(len(gt)):
            Image.new("RGB", (8, 8)).save(jpg / f"{t:05d}.jpg")
        _write_pngs(root / "pred-semi-supervised" / video, semi)
        _write_pngs(root / "pred-unsupervised" / video, unsup)


# --------------------------------------------------------------------------------------------- golden tests

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data/davis2017-val-osvos not present")


@pytest.fixture(scope="module")
def golden_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    write_golden_layout(root)
    return root


def _close(ours: float, theirs: float) -> bool:
    if theirs is None or (isinstance(theirs, float) and math.isnan(theirs)):
        return ours is None or math.isnan(ours)
    return abs(ours - theirs) <= TOL


@needs_shared
@pytest.mark.parametrize("protocol", ["semi-supervised", "unsupervised"])
def test_golden_against_official_package(golden_root: Path, protocol: str) -> None:
    fixture = json.loads((FIXTURES / f"{protocol}.json").read_text())
    result = evaluate(str(golden_root / f"pred-{protocol}"), str(golden_root / "davis"), protocol, workers=2)
    for key, value in fixture["global"].items():
        assert _close(result.summary()[key], value), (key, result.summary()[key], value)
    # The package names unsupervised objects in proposal order; ours are named by ground-truth id and record
    # the matched proposal, so sort by it to line them up.
    ours = {}
    for video in GOLDEN_VIDEOS:
        objs = [o for o in result.objects if o.video_id == video]
        if protocol == "unsupervised":
            objs.sort(key=lambda o: o.matched_id)
        for i, o in enumerate(objs, start=1):
            ours[f"{video}_{i}"] = o
    assert set(ours) == set(fixture["per_object"])
    checked = 0
    for name, theirs in fixture["per_object"].items():
        o = ours[name]
        mine = {
            "J-Mean": o.j_mean,
            "J-Recall": o.j_recall,
            "J-Decay": o.j_decay,
            "F-Mean": o.f_mean,
            "F-Recall": o.f_recall,
            "F-Decay": o.f_decay,
        }
        for key, value in theirs.items():
            assert _close(mine[key], value), (name, key, mine[key], value)
            checked += 1
    assert checked == 6 * len(fixture["per_object"])


@needs_shared
def test_golden_json_names_unsupervised_by_ground_truth_id(golden_root: Path) -> None:
    result = evaluate(str(golden_root / "pred-unsupervised"), str(golden_root / "davis"), "unsupervised")
    out = result.to_json()
    gt_counts = {"bike-packing": 2, "gold-fish": 5, "judo": 2, "shooting": 3}
    assert set(out["per_object"]) == {f"{v}_{k}" for v, n in gt_counts.items() for k in range(1, n + 1)}
    assert out["num_objects"] == 12 and out["num_videos"] == 4
    json.dumps(out, allow_nan=False)


# --------------------------------------------------------------------------------------------- reference definitions


def _ref_bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map written from the definition: differs from the E, S or SE neighbour (edges: E or S only)."""
    seg = seg.astype(bool)
    h, w = seg.shape
    b = np.zeros_like(seg)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                b[y, x] = seg[y, x] != seg[y, x + 1]
            elif x == w - 1:
                b[y, x] = seg[y, x] != seg[y + 1, x]
            else:
                b[y, x] = seg[y, x] != seg[y, x + 1] or seg[y, x] != seg[y + 1, x] or seg[y, x] != seg[y + 1, x + 1]
    return b


def _ref_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    bg, bp = _ref_bmap(gt), _ref_bmap(pred)
    dg = ndimage.binary_dilation(bg, disk)
    dp = ndimage.binary_dilation(bp, disk)
    ng, np_ = bg.sum(), bp.sum()
    if ng == 0 and np_ == 0:
        return 1.0
    if ng == 0 or np_ == 0:
        return 0.0
    precision = (bp & dg).sum() / np_
    recall = (bg & dp).sum() / ng
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _blobs(rng: np.random.Generator, t_n: int, h: int, w: int, n: int) -> np.ndarray:
    out = np.zeros((t_n, h, w), np.uint8)
    for t in range(t_n):
        for k in range(1, n + 1):
            noise = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(1, 3))
            out[t][noise > np.quantile(noise, rng.uniform(0.6, 0.97))] = k
    return out


def test_pairwise_scores_match_reference_definitions() -> None:
    rng = np.random.default_rng(3)
    for _ in range(4):
        h, w = int(rng.integers(8, 40)), int(rng.integers(8, 60))
        gt, pred = _blobs(rng, 2, h, w, 2), _blobs(rng, 2, h, w, 3)
        j, f = pairwise_scores(gt, pred, num_gt=2, num_pred=3)
        radius = boundary_radius(h, w)
        for p in range(1, 4):
            for k in range(1, 3):
                for t in range(2):
                    g, q = gt[t] == k, pred[t] == p
                    union = (g | q).sum()
                    assert j[p - 1, k - 1, t] == (1.0 if union == 0 else (g & q).sum() / union)
                    assert f[p - 1, k - 1, t] == pytest.approx(_ref_f(g, q, radius), abs=1e-12)


def test_boundary_radius() -> None:
    assert boundary_radius(480, 854) == 8
    assert boundary_radius(480, 910) == 9
    assert boundary_radius(240, 427) == 4
    assert boundary_radius(10, 10, bound_th=3) == 3
    with pytest.raises(ValueError):
        boundary_radius(10, 10, bound_th=2.5)


# --------------------------------------------------------------------------------------------- edge cases


def test_empty_prediction_and_empty_truth() -> None:
    empty = np.zeros((20, 30), bool)
    blob = empty.copy()
    blob[5:12, 8:20] = True
    assert region_similarity(empty, empty) == 1.0
    assert boundary_measure(empty, empty) == 1.0
    assert region_similarity(blob, empty) == 0.0
    assert boundary_measure(blob, empty) == 0.0  # empty prediction, non-empty truth
    assert boundary_measure(empty, blob) == 0.0
    assert region_similarity(blob, blob) == 1.0 and boundary_measure(blob, blob) == 1.0


def test_void_pixels_are_excluded_in_unsupervised() -> None:
    gt = np.zeros((3, 40, 60), np.uint8)
    gt[:, 10:30, 10:30] = 1
    void_gt = gt.copy()
    void_gt[:, 10:30, 30:40] = 255  # prediction spills into void: no penalty
    pred = np.zeros_like(gt)
    pred[:, 10:30, 10:40] = 1
    (scored,) = evaluate_video("v", void_gt, pred, "unsupervised")
    assert scored.j_mean == pytest.approx(1.0)
    (plain,) = evaluate_video("v", gt, pred, "unsupervised")
    assert plain.j_mean == pytest.approx(400 / 600)
    # semi-supervised: the package passes no void mask, void counts as background
    (semi,) = evaluate_video("v", void_gt, pred, "semi-supervised")
    assert semi.j_mean == pytest.approx(400 / 600)
    # void alone never counts as an object
    assert evaluate_video("v", np.where(gt > 0, 255, 0).astype(np.uint8), pred, "unsupervised") == []


def test_decay_past_256_frames_is_finite_and_correct() -> None:
    values = np.r_[np.ones(150), np.zeros(150)]
    mean, recall, decay = statistics(values)
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)
    t_n = 300
    gt = np.zeros((t_n, 12, 16), np.uint8)
    gt[:, 3:9, 4:12] = 1
    pred = gt.copy()
    pred[t_n // 2 :] = 0
    (o,) = evaluate_video("long", gt, pred, "semi-supervised")
    assert math.isfinite(o.j_decay) and o.j_decay == pytest.approx(1.0)


def test_quarter_edges_match_package_below_257_frames() -> None:
    for n in range(1, 257):
        theirs = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.uint8).tolist()
        assert quarter_edges(n) == theirs, n


def test_semi_supervised_rejects_unknown_ids_and_scores_missing_objects() -> None:
    gt = np.zeros((5, 10, 10), np.uint8)
    gt[:, 2:5, 2:5] = 1
    gt[:, 6:9, 6:9] = 2
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)
    o1, o2 = evaluate_video("v", gt, pred, "semi-supervised")
    assert (o1.j_mean, o2.j_mean, o2.f_mean) == (1.0, 0.0, 0.0)
    assert len(o1.j) == 3  # first and last frames are not scored
    pred[2, 0, 0] = 3
    with pytest.raises(EvaluationError, match="prediction id 3"):
        evaluate_video("v", gt, pred, "semi-supervised")


def test_unsupervised_assignment_and_proposal_limit() -> None:
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 12:18, 12:18] = 2
    pred = np.zeros_like(gt)
    pred[:, 12:18, 12:18] = 5  # object 2 found by proposal 5
    pred[:, 0:2, 0:2] = 3
    o1, o2 = evaluate_video("v", gt, pred, "unsupervised")
    assert (o2.object_id, o2.matched_id, o2.j_mean) == (2, 5, 1.0)
    assert o1.j_mean == 0.0  # scored against an empty or wrong proposal
    pred[0, 19, 19] = 21
    with pytest.raises(EvaluationError, match="proposal id 21"):
        evaluate_video("v", gt, pred, "unsupervised")


def test_folder_layouts_missing_frames_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = np.zeros((4, 24, 32), np.uint8)
    gt[:, 4:12, 4:12] = 1
    _write_pngs(tmp_path / "gt" / "Annotations" / "480p" / "a", gt)
    _write_pngs(tmp_path / "pred" / "a", gt)
    (tmp_path / "pred" / "a" / "00002.png").unlink()
    with pytest.raises(EvaluationError, match="00002.png"):
        evaluate(str(tmp_path / "pred"), str(tmp_path / "gt"))
    result = evaluate(str(tmp_path / "pred"), str(tmp_path / "gt"), missing="empty")
    assert result.objects[0].j.tolist() == [1.0, 0.0] and result.summary()["J-Mean"] == 0.5
    from rvos_batch.cli import main

    capsys.readouterr()
    assert main(["eval", str(tmp_path / "gt"), str(tmp_path / "gt"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["J&F-Mean"] == 1.0 and data["per_object"] == {"a_1": {"J-Mean": 1.0, "F-Mean": 1.0}}
    for key in ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"):
        assert key in data


def test_youtube_vos_seen_unseen(tmp_path: Path) -> None:
    gt = np.zeros((3, 16, 16), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 9:14, 9:14] = 2
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)
    _write_pngs(tmp_path / "valid" / "Annotations" / "v1", gt)
    _write_pngs(tmp_path / "pred" / "v1", pred)
    meta = {"videos": {"v1": {"objects": {"1": {"category": "cat"}, "2": {"category": "okapi"}}}}}
    (tmp_path / "valid" / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "seen.txt").write_text("# training categories\ncat\ndog\n")
    result = evaluate(str(tmp_path / "pred"), str(tmp_path / "valid"), "unsupervised", seen=str(tmp_path / "seen.txt"))
    yt = result.youtube_vos
    assert yt is not None
    assert (yt["J-seen"], yt["J-unseen"], yt["F-seen"], yt["F-unseen"]) == (1.0, 0.0, 1.0, 0.0)
    assert yt["overall"] == 0.5 and yt["objects_seen"] == 1 and yt["objects_unseen"] == 1
    assert load_seen(["a", "b"]) == {"a", "b"}


def test_unsupervised_pads_missing_proposals_with_empty_masks() -> None:
    gt = np.zeros((3, 20, 20), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 12:18, 12:18] = 2
    pred = np.where(gt == 2, 1, 0).astype(np.uint8)  # one proposal for two objects
    o1, o2 = evaluate_video("v", gt, pred, "unsupervised")
    assert (o2.matched_id, o2.j_mean, o2.f_mean) == (1, 1.0, 1.0)
    assert (o1.matched_id, o1.j_mean, o1.f_mean) == (2, 0.0, 0.0)  # id 2 has no pixels: an empty proposal


def test_mask_dataset_inputs_score_like_png_folders(tmp_path: Path) -> None:
    from rvos_batch.maskstore import concat_masks, mask_table, write_mask_dataset

    rng = np.random.default_rng(5)
    gt = _blobs(rng, 5, 30, 40, 2)
    pred = _blobs(rng, 5, 30, 40, 3)
    _write_pngs(tmp_path / "gt" / "vid", gt)
    _write_pngs(tmp_path / "pred_png" / "vid", pred)

    def table(ids: np.ndarray) -> object:
        parts = []
        for t, frame in enumerate(ids):
            objs = [k for k in range(1, int(frame.max()) + 1) if (frame == k).any()]
            parts.append(
                mask_table(
                    "vid", t, objs, np.stack([frame == k for k in objs]) if objs else np.zeros((0, 30, 40), bool)
                )
            )
        return concat_masks(parts)

    write_mask_dataset(str(tmp_path / "pred_ds"), table(pred))
    write_mask_dataset(str(tmp_path / "gt_ds"), table(gt))
    for protocol in ("semi-supervised", "unsupervised"):
        if protocol == "semi-supervised":
            pred_png = np.where(pred > 2, 0, pred).astype(np.uint8)
            _write_pngs(tmp_path / "pred_png" / "vid", pred_png)
            write_mask_dataset(str(tmp_path / "pred_ds"), table(pred_png))
        want = evaluate(str(tmp_path / "pred_png"), str(tmp_path / "gt"), protocol).summary()
        assert evaluate(str(tmp_path / "pred_ds"), str(tmp_path / "gt"), protocol).summary() == want
        assert evaluate(str(tmp_path / "pred_ds"), str(tmp_path / "gt_ds"), protocol).summary() == want


def _video_result(scores: dict[str, list[float]]) -> EvalResult:
    """An EvalResult with, per video, objects of these J-Mean values (F-Mean the same, recall and decay 0)."""
    objects = []
    for video, values in scores.items():
        for k, v in enumerate(values, start=1):
            frames = np.full(3, v)
            objects.append(ObjectScore(video, k, k, v, 0.0, 0.0, v, 0.0, 0.0, frames, frames))
    return EvalResult("semi-supervised", tuple(objects))


def test_bootstrap_draws_videos_with_replacement() -> None:
    # two videos of one object each, J = F = 0 and 1: a replicate draws both (0.5, chance 1/2) or one twice (0 or 1,
    # 1/4 each), so the replicates' standard deviation is sqrt(1/8) and the 95% interval is [0, 1]
    boot = _video_result({"a": [0.0], "b": [1.0]}).bootstrap(20000, seed=1)
    assert boot["std"]["J&F-Mean"] == pytest.approx(math.sqrt(1 / 8), abs=0.01)
    assert boot["interval"]["J&F-Mean"] == [0.0, 1.0]
    assert boot["interval"]["J-Decay"] == [0.0, 0.0] and boot["std"]["J-Decay"] == 0.0
    assert boot == _video_result({"a": [0.0], "b": [1.0]}).bootstrap(20000, seed=1), "deterministic for a seed"
    # videos, not objects, are drawn: a video of three objects at 1 and one of an object at 0 give replicate means
    # 1 (chance 1/4), 0 (1/4) and 3/4 (1/2), a standard deviation of 0.375; drawing 4 of the 4 objects would give
    # sqrt(3/16 / 4) = 0.217
    boot = _video_result({"a": [1.0, 1.0, 1.0], "b": [0.0]}).bootstrap(20000, seed=2, level=0.9)
    assert boot["std"]["J-Mean"] == pytest.approx(0.375, abs=0.01)
    assert boot["interval"]["J-Mean"] == [0.0, 1.0]
    assert {"samples": 20000, "seed": 2, "level": 0.9, "unit": "video"}.items() <= boot.items()
    # identical videos: no spread
    boot = _video_result({"a": [0.6, 0.8], "b": [0.6, 0.8], "c": [0.6, 0.8]}).bootstrap(100)
    assert boot["interval"]["J&F-Mean"] == pytest.approx([0.7, 0.7]) and boot["std"]["J&F-Mean"] == pytest.approx(0)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(EvaluationError, match="bootstrap samples"):
            _video_result({"a": [1.0]}).bootstrap(bad)  # type: ignore[arg-type]
    with pytest.raises(EvaluationError, match="bootstrap level"):
        _video_result({"a": [1.0]}).bootstrap(10, level=1.0)


def test_cli_bootstrap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rvos_batch.cli import main

    for v, shift in (("a", 0), ("b", 6)):  # one perfect video, one whose prediction is shifted
        gt = np.zeros((5, 24, 32), np.uint8)
        gt[:, 4:12, 4:12] = 1
        _write_pngs(tmp_path / "gt" / "Annotations" / "480p" / v, gt)
        _write_pngs(tmp_path / "pred" / v, np.roll(gt, shift, axis=2))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json"]) == 0
    assert "bootstrap" not in json.loads(capsys.readouterr().out), "the default JSON is the package's names only"
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", "--bootstrap", "500"]) == 0
    data = json.loads(capsys.readouterr().out)
    boot = data["bootstrap"]
    assert set(boot["interval"]) == set(boot["std"]) == {
        "J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}
    low, high = boot["interval"]["J-Mean"]
    worse = data["per_object"]["b_1"]["J-Mean"]
    assert low == pytest.approx(worse) and high == 1.0 and low < data["J-Mean"] < high
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--bootstrap", "500"]) == 0
    assert "95% interval, 500 bootstrap replicates over videos" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--bootstrap", "1"])
    assert exit_info.value.code == 2 and "integer >= 2" in capsys.readouterr().err
