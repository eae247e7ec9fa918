"""Tests for rvos_batch.rle: counts identical to pycocotools, exact round trips, area/bbox, malformed input.

pycocotools is the reference here (a dev dependency); rvos_batch.rle never imports it. The real-data test
reads every DAVIS 2017 val palette mask from shared/data (beside the repository, or $RVOS_SHARED_DATA) and
skips when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rvos_batch import rle
from rvos_batch.errors import RLEError

mask_util = pytest.importorskip("pycocotools.mask")


def _shared_data() -> Path:
    env = os.environ.get("RVOS_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


DAVIS = _shared_data() / "davis2017-val-osvos"


def ref_encode(mask: np.ndarray) -> dict:
    """pycocotools' RLE of a 2-D mask, counts as str."""
    r = mask_util.encode(np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def ref_rle(r: dict) -> dict:
    return {"size": list(r["size"]), "counts": r["counts"].encode("ascii")}


def check_against_reference(mask: np.ndarray) -> dict:
    """encode == pycocotools, exact round trip, area and bbox == pycocotools; returns our RLE."""
    mask = np.asarray(mask)
    got = rle.encode(mask)
    assert got == ref_encode(mask)
    assert isinstance(got["counts"], str)
    back = rle.decode(got)
    assert back.dtype == np.bool_ and back.shape == mask.shape
    np.testing.assert_array_equal(back, mask != 0)
    if mask.size:
        assert rle.area(got) == int(mask_util.area(ref_rle(got)))
        assert rle.bbox(got) == mask_util.toBbox(ref_rle(got)).tolist()
    assert rle.area(got) == int(np.count_nonzero(mask))
    return got


# ---------------------------------------------------------------------------------------------------------------
# real data: every object mask of every frame
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not DAVIS.is_dir(), reason=f"real DAVIS masks not found at {DAVIS}")
def test_every_real_davis_mask_matches_pycocotools() -> None:
    from PIL import Image

    videos = sorted(p for p in DAVIS.iterdir() if p.is_dir())
    assert videos
    n_masks = n_frames = 0
    for video in videos:
        ids = np.stack([np.array(Image.open(f)) for f in sorted(video.glob("*.png"))])  # (T, H, W) object ids
        objects = np.unique(ids)
        objects = objects[objects != 0]
        n_frames += len(ids)
        for t0 in range(0, len(ids), 16):
            # every object of the video in each of these frames, absent ones (empty masks) included
            masks = (ids[t0 : t0 + 16, None] == objects[None, :, None, None]).reshape(-1, *ids.shape[1:])
            ours = rle.encode_batch(masks)
            ref = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
            assert [r["counts"] for r in ours] == [r["counts"].decode("ascii") for r in ref], video.name
            assert all(r["size"] == list(masks.shape[1:]) for r in ours)
            np.testing.assert_array_equal(rle.decode_batch(ours), masks, err_msg=video.name)
            np.testing.assert_array_equal(rle.area_batch(ours), mask_util.area(ref))
            np.testing.assert_array_equal(rle.bbox_batch(ours), mask_util.toBbox(ref))
            with_stats, areas, boxes = rle.encode_batch_with_stats(masks)
            assert with_stats == ours
            np.testing.assert_array_equal(areas, mask_util.area(ref))
            np.testing.assert_array_equal(boxes, mask_util.toBbox(ref))
            # the single-mask path on some of them, in both memory layouts
            for k in range(0, len(masks), 7):
                assert rle.encode(masks[k]) == ours[k]
                assert rle.encode(np.asfortranarray(masks[k])) == ours[k]
                np.testing.assert_array_equal(rle.decode(ours[k]), masks[k])
                assert rle.area(ours[k]) == int(masks[k].sum())
                assert rle.bbox(ours[k]) == rle.bbox_batch([ours[k]])[0].tolist()
            n_masks += len(masks)
    assert n_frames == len(list(DAVIS.glob("*/*.png")))
    assert n_masks > 1999


# ---------------------------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------------------------

SHAPES = [(1, 1), (1, 7), (7, 1), (2, 3), (5, 4), (13, 17), (480, 854), (31, 64), (64, 31), (8, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_empty_and_full(shape: tuple[int, int]) -> None:
    empty = check_against_reference(np.zeros(shape, dtype=bool))
    assert rle.bbox(empty) == [0.0, 0.0, 0.0, 0.0] and rle.area(empty) == 0
    full = check_against_reference(np.ones(shape, dtype=bool))
    assert rle.string_to_runs(full["counts"]).tolist() == [0, shape[0] * shape[1]]
    assert rle.bbox(full) == [0.0, 0.0, float(shape[1]), float(shape[0])]


@pytest.mark.parametrize("shape", SHAPES)
def test_single_pixels_corners_and_centre(shape: tuple[int, int]) -> None:
    h, w = shape
    for y, x in {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)}:
        m = np.zeros(shape, dtype=bool)
        m[y, x] = True
        r = check_against_reference(m)
        assert rle.bbox(r) == [float(x), float(y), 1.0, 1.0]


@pytest.mark.parametrize("shape", SHAPES)
def test_one_row_and_one_column(shape: tuple[int, int]) -> None:
    h, w = shape
    for y in {0, h // 2, h - 1}:
        m = np.zeros(shape, dtype=bool)
        m[y] = True
        check_against_reference(m)
    for x in {0, w // 2, w - 1}:
        m = np.zeros(shape, dtype=bool)
        m[:, x] = True
        check_against_reference(m)


def test_documented_examples() -> None:
    # column-major pixels 0 0 1 1 1 0 1 -> runs [2, 3, 1, 1]; 1 1 1 1 1 1 0 -> [0, 6, 1]
    def runs(column: list[int]) -> list[int]:
        return rle.string_to_runs(rle.encode(np.array(column)[:, None])["counts"]).tolist()

    assert runs([0, 0, 1, 1, 1, 0, 1]) == [2, 3, 1, 1]
    assert runs([1, 1, 1, 1, 1, 1, 0]) == [0, 6, 1]
    # the third run is written as is, later runs as the difference to the run two back
    m = np.zeros((10, 1), dtype=bool)
    m[3:5] = m[8:] = True
    assert rle.encode(m)["counts"] == "3230"


@pytest.mark.parametrize(
    ("size", "counts", "box"),
    [
        ([2, 2], "40", [2.0, 2.0, 2.0**32 - 1, 2.0**32 - 1]),  # only a zero-length foreground run
        ([0, 5], "00", [5.0, 0.0, 2.0**32 - 4, 1.0]),
        ([3, 3], "1106", [0.0, 0.0, 3.0, 3.0]),  # runs [1, 1, 0, 7]: zero-length background run
        ([3, 3], "213O0", [0.0, 2.0, 1.0, 1.0]),  # runs [2, 1, 3, 0, 3]: zero-length foreground run is skipped
    ],
)
def test_bbox_of_non_canonical_counts_matches_pycocotools(size: list[int], counts: str, box: list[float]) -> None:
    r = {"size": size, "counts": counts}
    assert rle.bbox(r) == box == mask_util.toBbox(ref_rle(r)).tolist()
    assert rle.bbox_batch([r]).tolist() == [box]


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_zero_size(shape: tuple[int, int]) -> None:
    m = np.zeros(shape, dtype=bool)
    r = rle.encode(m)
    assert r == ref_encode(m) == {"size": list(shape), "counts": "0"}
    assert rle.decode(r).shape == shape
    assert rle.area(r) == 0 and rle.bbox(r) == [0.0, 0.0, 0.0, 0.0]
    assert rle.encode_batch(np.zeros((3, *shape), dtype=bool)) == [r] * 3
    rles, areas, boxes = rle.encode_batch_with_stats(np.zeros((3, *shape), dtype=bool))
    assert rles == [r] * 3 and areas.tolist() == [0] * 3 and boxes.tolist() == [[0.0] * 4] * 3
    assert rle.decode_batch([r, r]).shape == (2, *shape)


def test_memory_layouts_and_dtypes() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, size=(37, 53)).astype(np.uint8)  # values > 1: nonzero is foreground
    base = ids != 0
    want = ref_encode(base)
    variants = {
        "uint8 C": ids,
        "uint8 F": np.asfortranarray(ids),
        "bool C": base,
        "bool F": np.asfortranarray(base),
        "int64": ids.astype(np.int64),
        "int8 negative": -ids.astype(np.int8),
        "float": ids * 0.5,
        "list": ids.tolist(),
    }
    for name, m in variants.items():
        assert rle.encode(m) == want, name
    # non-contiguous views
    big = rng.integers(0, 3, size=(80, 90)).astype(np.uint8)
    for view in (big[::2, ::3], big[5:40, 7:60], big.T, big[::-1], big[:, ::-2], np.asfortranarray(big)[3:50, 1:]):
        check_against_reference(view)
    # the same through the batch path: C stack, per-mask Fortran stack, non-contiguous stack
    stack = rng.integers(0, 3, size=(6, 41, 29)).astype(np.uint8)
    wants = [ref_encode(m) for m in stack]
    assert rle.encode_batch(stack) == wants
    assert rle.encode_batch(np.ascontiguousarray(stack.transpose(0, 2, 1)).transpose(0, 2, 1)) == wants
    assert rle.encode_batch(np.asfortranarray(stack)) == wants
    assert rle.encode_batch(np.concatenate([stack, stack], axis=2)[:, :, :29]) == wants
    assert rle.encode_batch(list(stack)) == wants


def test_decode_output_and_inputs() -> None:
    m = np.zeros((6, 9), dtype=bool)
    m[1:4, 2:7] = True
    r = rle.encode(m)
    out = rle.decode(r)
    assert out.shape == (6, 9) and out.dtype == np.bool_ and out.flags.f_contiguous
    np.testing.assert_array_equal(rle.decode({"size": r["size"], "counts": r["counts"].encode()}), m)
    np.testing.assert_array_equal(rle.decode({"size": (6, 9), "counts": bytearray(r["counts"], "ascii")}), m)
    np.testing.assert_array_equal(rle.decode({"size": np.array([6, 9]), "counts": r["counts"]}), m)
    np.testing.assert_array_equal(rle.decode({"size": [np.int32(6), np.int64(9)], "counts": r["counts"]}), m)
    runs = rle.string_to_runs(r["counts"])
    np.testing.assert_array_equal(rle.decode({"size": [6, 9], "counts": runs.tolist()}), m)  # uncompressed
    assert rle.runs_to_string(runs) == r["counts"]
    assert rle.area({"size": [6, 9], "counts": runs.tolist()}) == 15


def test_batch_matches_single() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((9, 23, 31)) < np.linspace(0, 1, 9)[:, None, None]
    masks[3] = False
    masks[4] = True
    rles = rle.encode_batch(masks)
    assert rles == [rle.encode(m) for m in masks]
    np.testing.assert_array_equal(rle.decode_batch(rles), masks)
    assert rle.area_batch(rles).tolist() == [rle.area(r) for r in rles]
    assert rle.bbox_batch(rles).tolist() == [rle.bbox(r) for r in rles]
    with_stats, areas, boxes = rle.encode_batch_with_stats(masks)
    assert with_stats == rles
    assert areas.tolist() == [rle.area(r) for r in rles] and boxes.tolist() == [rle.bbox(r) for r in rles]
    assert rle.encode_batch(np.zeros((0, 4, 5), dtype=bool)) == []
    assert [a.shape for a in rle.encode_batch_with_stats(np.zeros((0, 4, 5)))[1:]] == [(0,), (0, 4)]
    assert rle.decode_batch([]).shape == (0, 0, 0)
    assert rle.area_batch([]).shape == (0,) and rle.bbox_batch([]).shape == (0, 4)
    # mixed sizes are fine for area/bbox, not for decode_batch
    mixed = [rles[0], rle.encode(np.ones((2, 2)))]
    assert rle.area_batch(mixed).tolist() == [rle.area(r) for r in mixed]
    assert rle.bbox_batch(mixed).tolist() == [rle.bbox(r) for r in mixed]
    with pytest.raises(RLEError, match=r"rles\[1\]: size \[2, 2\] differs"):
        rle.decode_batch(mixed)


def test_encode_batch_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((7, 12, 10)) < 0.3
    want = rle.encode_batch(masks)
    stats = rle.encode_batch_with_stats(masks)
    monkeypatch.setattr(rle, "_BATCH_PIXELS", 250)  # two masks a chunk
    assert rle.encode_batch(masks) == want == [ref_encode(m) for m in masks]
    chunked = rle.encode_batch_with_stats(masks)
    assert chunked[0] == want
    np.testing.assert_array_equal(chunked[1], stats[1])
    np.testing.assert_array_equal(chunked[2], stats[2])


# ---------------------------------------------------------------------------------------------------------------
# malformed input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rle_dict", "message"),
    [
        ({"size": [2, 2], "counts": "0 4"}, r"invalid character ' ' at position 1"),
        ({"size": [2, 2], "counts": "4p"}, r"invalid character 'p'"),
        ({"size": [2, 2], "counts": "4/"}, r"invalid character '/'"),
        ({"size": [2, 2], "counts": "4é"}, r"non-ASCII character 'é'"),
        ({"size": [2, 2], "counts": b"4\xff"}, r"invalid character b.\\xff. at position 1"),
        ({"size": [40, 40], "counts": "0P"}, r"truncated"),
        ({"size": [2, 2], "counts": "3"}, r"sum to 3 but size 2x2 has 4 pixels"),
        ({"size": [2, 2], "counts": "5"}, r"sum to 5"),
        ({"size": [2, 2], "counts": ""}, r"sum to 0"),
        ({"size": [2, 2], "counts": "1O"}, r"negative run length -1 at run 1"),
        ({"size": [2, 2], "counts": "PPPPPPPPPPPP0"}, r"varint of 13 characters"),
        ({"size": [2, 2], "counts": "ooooooooooo?"}, r"out of range"),
        ({"size": [2, -2], "counts": "4"}, r"width must be non-negative"),
        ({"size": [2.0, 2], "counts": "4"}, r"height must be a non-negative int"),
        ({"size": [True, 2], "counts": "4"}, r"height must be a non-negative int"),
        ({"size": [2], "counts": "4"}, r"exactly two entries"),
        ({"size": "22", "counts": "4"}, r"'size' must be a list"),
        ({"size": None, "counts": "4"}, r"'size' must be a list"),
        ({"size": [70000, 70000], "counts": "4"}, r"at most 4294967295"),
        ({"size": [2, 2]}, r"missing key\(s\) \['counts'\]"),
        ({"counts": "4"}, r"missing key\(s\) \['size'\]"),
        ({"size": [2, 2], "counts": 4}, r"counts must be str or bytes"),
        ({"size": [2, 2], "counts": [1, -1, 4]}, r"run lengths must lie in"),
        ({"size": [2, 2], "counts": [1.5, 2.5]}, r"flat list of ints"),
        ({"size": [2, 2], "counts": [1, 1]}, r"sum to 2"),
    ],
)
def test_malformed_rle_raises(rle_dict: dict, message: str) -> None:
    single: list[Callable[[Any], Any]] = [rle.decode, rle.area, rle.bbox]
    for fn in single:
        with pytest.raises(RLEError, match=message):
            fn(rle_dict)
    batch: list[Callable[[Any], Any]] = [rle.decode_batch, rle.area_batch, rle.bbox_batch]
    for fn in batch:
        with pytest.raises(RLEError, match=r"rles\[1\]: .*" + message):
            fn([{"size": [2, 2], "counts": "04"}, rle_dict])


def test_malformed_misc() -> None:
    with pytest.raises(RLEError, match="expected a dict"):
        rle.decode("04")  # type: ignore[arg-type]
    with pytest.raises(RLEError, match="2-D array"):
        rle.encode(np.zeros((2, 2, 2)))
    with pytest.raises(RLEError, match="3-D array"):
        rle.encode_batch(np.zeros((2, 2)))
    with pytest.raises(RLEError, match="truncated"):
        rle.string_to_runs("0P")
    with pytest.raises(RLEError, match="run lengths must lie in"):
        rle.runs_to_string([3, -1])
    with pytest.raises(RLEError, match="1-D sequence of ints"):
        rle.runs_to_string([[1, 2]])  # type: ignore[list-item]
    assert issubclass(RLEError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    h = draw(st.integers(1, 40))
    w = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["noise", "blobs", "sparse"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        m = rng.random((h, w)) < draw(st.floats(0, 1))
    elif kind == "blobs":
        m = np.zeros((h, w), dtype=bool)
        for _ in range(draw(st.integers(0, 4))):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
    else:
        m = draw(hnp.arrays(np.uint8, (h, w), elements=st.sampled_from([0, 0, 0, 1, 255])))
    layout = draw(st.sampled_from(["C", "F", "view"]))
    if layout == "F":
        return np.asfortranarray(m)
    if layout == "view":
        return np.concatenate([m, m], axis=1)[:, ::2]
    return m


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks())
def test_property_matches_pycocotools_and_round_trips(m: np.ndarray) -> None:
    r = check_against_reference(m)
    assert rle.runs_to_string(rle.string_to_runs(r["counts"])) == r["counts"]


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(masks(), min_size=1, max_size=5), st.integers(1, 12), st.integers(1, 12))
def test_property_batch(ms: list[np.ndarray], h: int, w: int) -> None:
    stack = np.stack([np.resize(m, (h, w)) for m in ms])
    rles = rle.encode_batch(stack)
    assert rles == [ref_encode(m) for m in stack]
    np.testing.assert_array_equal(rle.decode_batch(rles), stack != 0)
    boxes = [mask_util.toBbox(ref_rle(r)).tolist() for r in rles]
    assert rle.bbox_batch(rles).tolist() == boxes
    with_stats, areas, stat_boxes = rle.encode_batch_with_stats(stack)
    assert with_stats == rles and stat_boxes.tolist() == boxes
    assert areas.tolist() == [int(np.count_nonzero(m)) for m in stack]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.integers(0, 5000), max_size=12))
def test_property_runs_string_round_trip(runs: list[int]) -> None:
    s = rle.runs_to_string(runs)
    assert rle.string_to_runs(s).tolist() == runs
    if runs:
        assert s == mask_util.frPyObjects({"size": [1, sum(runs)], "counts": runs}, 1, sum(runs))["counts"].decode()


COUNT_CHARS = "".join(chr(c) for c in range(48, 112))


@settings(max_examples=500, deadline=None, database=None)
@given(
    st.one_of(
        st.text(alphabet=COUNT_CHARS, max_size=12),
        st.binary(max_size=12),
        st.text(max_size=8),
    ),
    st.integers(0, 12),
    st.integers(0, 12),
)
def test_fuzz_decode_arbitrary_counts(counts: str | bytes, h: int, w: int) -> None:
    r: dict[str, Any] = {"size": [h, w], "counts": counts}
    try:
        m = rle.decode(r)
    except RLEError:
        with pytest.raises(RLEError):
            rle.area(r)
        with pytest.raises(RLEError):
            rle.bbox(r)
        with pytest.raises(RLEError):
            rle.decode_batch([r])
        return
    assert m.shape == (h, w) and m.dtype == np.bool_
    # whatever decodes is a valid RLE: it re-encodes canonically and agrees with pycocotools
    assert rle.area(r) == int(m.sum())
    np.testing.assert_array_equal(rle.decode(rle.encode(m)), m)
    ref = {"size": [h, w], "counts": counts if isinstance(counts, bytes) else counts.encode()}
    if h * w:
        np.testing.assert_array_equal(mask_util.decode(ref), m)
    assert rle.bbox(r) == mask_util.toBbox(ref).tolist() == rle.bbox_batch([r, r])[1].tolist()
    assert rle.area(r) == int(mask_util.area(ref)) == rle.area_batch([r, r])[1]


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(-(2**40), 2**40), max_size=6), st.integers(0, 9), st.integers(0, 9))
def test_fuzz_decode_uncompressed_counts(runs: list[int], h: int, w: int) -> None:
    try:
        m = rle.decode({"size": [h, w], "counts": runs})
    except RLEError:
        return
    assert m.shape == (h, w)
    assert sum(runs) == h * w and min(runs, default=0) >= 0


def test_runtime_needs_neither_pycocotools_nor_ray() -> None:
    import subprocess
    import sys

    code = "import sys, rvos_batch.rle; assert not {'pycocotools', 'ray'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
