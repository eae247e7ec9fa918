"""Fast paths give the same answers as the plain ones: torch RLE equals rvos_batch.rle byte for byte, batched mask
resolution equals per-frame postprocess, RLE results equal the encoded masks, fixed batches / channels_last /
compiled models equal the plain session, the worker's overlapped post thread and its row tables equal the
serial path and maskstore.mask_table, and JPEG decoding through torchvision matches PIL. CUDA variants are
marked ``gpu`` and skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from jobkit import frame_jpeg, make_corpus, tiny_model

from rvos_batch import maskstore, rle, rle_torch
from rvos_batch.corpus import CorpusReader, CorpusWriter
from rvos_batch.errors import RvosBatchError
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.plan import plan_shards
from rvos_batch.job.worker import GPU_DECODE_ENV, ShardWorker, _MaskRows
from rvos_batch.model import RVOS, RVOSConfig
from rvos_batch.model.config import Mode
from rvos_batch.predictor import BatchSession, FrameResult, PredictConfig, postprocess, preprocess

SIZE = (64, 96)
CUDA = torch.cuda.is_available()
DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2017-val-osvos"


def tiny(mode: Mode, slots: int = 3, seed: int = 0) -> RVOS:
    torch.manual_seed(seed)
    cfg = RVOSConfig(backbone="mobilenet_v2", hidden=16, num_slots=slots, mode=mode, input_size=SIZE)
    model = RVOS(cfg).eval()
    with torch.no_grad():  # spread the untrained head so several slots win pixels
        model.decoder.head.weight.mul_(20.0)
    return model


def frames(n: int, seed: int, size: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def box(size: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ---- torch RLE ---------------------------------------------------------------------------------------------------


def assert_same_rle(masks: np.ndarray, device: str = "cpu") -> None:
    want, want_area, want_box = rle.encode_batch_with_stats(masks)
    got, area, boxes = rle_torch.encode_batch_with_stats(torch.from_numpy(masks).to(device))
    assert [r["counts"] for r in got] == [r["counts"] for r in want]
    assert [r["size"] for r in got] == [r["size"] for r in want]
    assert [r["counts"] for r in rle_torch.encode_batch(torch.from_numpy(masks).to(device))] == [
        r["counts"] for r in want
    ]
    np.testing.assert_array_equal(area, want_area)
    np.testing.assert_array_equal(boxes, want_box)


@pytest.mark.parametrize("shape", [(6, 7, 9), (3, 1, 13), (3, 13, 1), (4, 1, 1), (5, 31, 40), (0, 5, 5)])
def test_torch_rle_equals_rle_on_random_masks(shape):
    rng = np.random.default_rng(sum(shape))
    for p in (0.0, 0.03, 0.5, 0.97, 1.0):
        masks = rng.random(shape) < p
        if shape[0]:
            masks[0, 0, 0] = True  # a mask starting with foreground (leading zero-length run)
        assert_same_rle(masks)


def test_torch_rle_blobs_wrapping_columns_and_dtypes():
    size = (20, 30)
    masks = np.stack([
        box(size, 0, 20, 3, 9),  # full columns: runs wrap from one column into the next
        box(size, 15, 20, 10, 11) | box(size, 0, 4, 11, 12),  # a run crossing one column boundary only
        box(size, 5, 9, 0, 30),
        np.zeros(size, bool),
        np.ones(size, bool),
    ])
    assert_same_rle(masks)
    as_float = rle_torch.encode_batch(torch.from_numpy(masks.astype(np.float32)))
    assert [r["counts"] for r in as_float] == [r["counts"] for r in rle.encode_batch(masks)]


def test_torch_varint_coding_of_large_and_negative_deltas():
    runs = np.array([0, 2**32 - 1, 0, 5, 2**31, 1, 70_000, 3, 16, 15, 17, 2**29, 2**24 - 1])
    got = rle_torch.runs_to_strings(torch.from_numpy(runs), torch.tensor([len(runs)]), (1, 1))[0]["counts"]
    assert got == rle.runs_to_string(runs)
    rng = np.random.default_rng(1)
    for _ in range(20):
        r = rng.integers(0, 2 ** rng.integers(1, 32), size=rng.integers(1, 30))
        assert rle_torch.runs_to_strings(torch.from_numpy(r), torch.tensor([len(r)]), (1, 1))[0][
            "counts"
        ] == rle.runs_to_string(r)


def test_torch_rle_refuses_bad_input():
    with pytest.raises(rle.RLEError, match=r"\(N, H, W\)"):
        rle_torch.encode_batch(torch.zeros(3, 4))
    with pytest.raises(rle.RLEError, match="torch.Tensor"):
        rle_torch.encode_batch(np.zeros((1, 3, 4), bool))  # type: ignore[arg-type]


def test_torch_rle_on_real_davis_masks():
    if not DAVIS.is_dir():
        pytest.skip(f"real masks not found at {DAVIS}")
    from PIL import Image

    masks = []
    for video in sorted(p for p in DAVIS.iterdir() if p.is_dir())[:6]:
        ids = np.array(Image.open(sorted(video.glob("*.png"))[0]))
        masks.extend(ids == k for k in np.unique(ids) if k)
    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    for m in masks:
        by_size.setdefault(m.shape, []).append(m)
    for group in by_size.values():
        assert_same_rle(np.stack(group))


# ---- batched postprocessing and RLE results ---------------------------------------------------------------------


def run_session(model: RVOS, cfg: PredictConfig, videos: dict[int, list[np.ndarray]], prompts=None,
                rles: bool = False, capacity: int = 3, steps: int = 2):
    """Step ``videos`` (row -> frames) in one session; row 1 idles at step 1. Returns per step {row: result}."""
    session = BatchSession(model, cfg, capacity=capacity)
    for row, fr in videos.items():
        session.add(row, f"v{row}", fr[0].shape[:2], (prompts or {}).get(row))
    out = []
    for t in range(steps):
        todo = {row: (t, preprocess(fr[t], SIZE)) for row, fr in videos.items() if not (t == 1 and row == 1)}
        pending = session.step_async(todo)
        out.append((pending.result(), pending.rles() if rles else None, pending))
    return session, out


@pytest.mark.parametrize("mode", ["zero-shot", "one-shot"])
def test_batched_resolution_equals_postprocess_and_rles_equal_masks(mode):
    model = tiny(mode)
    sizes = {0: (50, 70), 1: (40, 60), 2: (50, 70)}  # two sizes: two groups in one step
    videos = {row: frames(2, row, s) for row, s in sizes.items()}
    prompts = None
    if mode == "one-shot":
        prompts = {0: {0: {3: box((50, 70), 0, 25, 0, 35), 1: box((50, 70), 25, 50, 35, 70)}},
                   1: {0: {7: box((40, 60), 5, 30, 5, 50)}}}  # row 2 has no objects
    _, out = run_session(model, PredictConfig(min_area=3), videos, prompts, rles=True)
    some = 0
    for results, rles, pending in out:
        assert set(results) == set(rles) == set(pending.rows)
        for row, res in results.items():
            assert isinstance(res, FrameResult)
            enc = rles[row]
            assert enc.size == sizes[row] and enc.frame_index == res.frame_index
            np.testing.assert_array_equal(enc.object_ids, res.object_ids)
            np.testing.assert_array_equal(enc.scores, res.scores)
            if len(res.object_ids):
                want, areas, boxes = rle.encode_batch_with_stats(res.masks)
                assert enc.counts == [r["counts"] for r in want]
                np.testing.assert_array_equal(enc.areas, areas)
                np.testing.assert_array_equal(enc.boxes, boxes)
                some += 1
            else:
                assert enc.counts == [] and enc.areas.shape == (0,) and enc.boxes.shape == (0, 4)
        # the batched core equals the one-frame postprocess on each row's probabilities
        probs, reportable = pending._probs, pending._reportable
        for it in pending._items:
            n = len(it.object_ids)
            single = postprocess(probs[it.position, :n], reportable[it.position, :n], it.object_ids, it.size,
                                 it.frame_index, threshold=0.5, min_area=3)
            res = results[it.row]
            np.testing.assert_array_equal(single.object_ids, res.object_ids)
            np.testing.assert_array_equal(single.masks, res.masks)
            np.testing.assert_allclose(single.scores, res.scores, rtol=1e-6)
    assert some, "the test model should emit masks"


def assert_same_steps(a, b) -> None:
    for (ra, _, _), (rb, _, _) in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for row in ra:
            np.testing.assert_array_equal(ra[row].object_ids, rb[row].object_ids)
            assert ra[row].masks.shape == rb[row].masks.shape
            assert (ra[row].masks != rb[row].masks).sum() <= 1e-3 * ra[row].masks.size
            np.testing.assert_allclose(ra[row].scores, rb[row].scores, atol=1e-3)


@pytest.mark.parametrize("mode", ["zero-shot", "one-shot"])
def test_fixed_batch_equals_plain_and_idle_rows_keep_state(mode):
    model = tiny(mode)
    videos = {0: frames(2, 0, (50, 70)), 1: frames(2, 1, (50, 70))}  # capacity 3: row 2 is free throughout
    prompts = {0: {0: {1: box((50, 70), 0, 25, 0, 35)}}, 1: {0: {2: box((50, 70), 10, 40, 10, 40)}}}
    prompts = prompts if mode == "one-shot" else None
    plain_session, plain = run_session(model, PredictConfig(), videos, prompts)
    fixed_session, fixed = run_session(model, PredictConfig(fixed_batch=True), videos, prompts)
    assert_same_steps(plain, fixed)
    for x, y in zip(plain_session.state.index_rows([0, 1]).tensors(),
                    fixed_session.state.index_rows([0, 1]).tensors(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    # the free row was stepped with blank frames but never committed: still the zero state
    fresh = model.init_state(1)
    for x, y in zip(fixed_session.state.index_rows([2]).tensors(), fresh.tensors(), strict=True):
        assert torch.equal(x, y.to(x.dtype))


def test_channels_last_and_compiled_model_equal_plain():
    videos = {0: frames(2, 5, (50, 70)), 1: frames(2, 6, (40, 60))}
    _, plain = run_session(tiny("zero-shot"), PredictConfig(), videos)
    _, cl = run_session(tiny("zero-shot"), PredictConfig(channels_last=True), videos)
    assert_same_steps(plain, cl)
    compiled = tiny("zero-shot")
    cfg = PredictConfig.for_device("cpu", compile="eager")  # dynamo traces the model; no C++ toolchain needed
    assert cfg.fixed_batch and cfg.compile == "eager" and cfg.amp_dtype is None
    _, comp = run_session(compiled, cfg, videos)
    assert_same_steps(plain, comp)
    assert compiled._rvos_compiled == "eager"
    BatchSession(compiled, cfg, capacity=3)  # a second session reuses the compiled model
    with pytest.raises(ValueError, match="already compiled"):
        BatchSession(compiled, PredictConfig(compile="aot_eager"), capacity=3)


@pytest.mark.parametrize("refine", [False, True])
def test_compile_covers_the_encoder_and_the_decoder(refine):
    """One step of a compiled model runs two compiled graphs: the encoder's and the per-slot decoder's."""
    from torch._dynamo.utils import counters

    from rvos_batch.predictor import compile_model

    torch.manual_seed(0)
    model = RVOS(RVOSConfig(hidden=16, num_slots=2, mode="one-shot", input_size=(32, 64), refine=refine)).eval()
    compile_model(model, "eager")
    counters.clear()
    with torch.no_grad():
        model.step(torch.rand(1, 3, 32, 64), model.init_state(1), torch.rand(1, 2, 32, 64))
    assert counters["frames"]["ok"] == 2, dict(counters["frames"])


def test_predict_config_fast_fields_are_validated():
    with pytest.raises(ValueError, match="compile"):
        PredictConfig(compile="fastest")
    cuda = PredictConfig.for_device("cuda:0")
    assert cuda.amp_dtype == "bfloat16" and cuda.channels_last and cuda.compile is None and not cuda.fixed_batch
    assert PredictConfig.for_device("cpu") == PredictConfig(device="cpu")


# ---- worker ------------------------------------------------------------------------------------------------------


def test_mask_rows_table_equals_mask_table():
    rng = np.random.default_rng(0)
    rows = _MaskRows()
    expected = []
    from rvos_batch.predictor import FrameRLE

    for t in range(4):
        k = t % 3
        masks = rng.random((k, 12, 17)) < 0.4
        ids = np.array([5, 2, 9][:k], dtype=np.int32)
        scores = rng.random(k).astype(np.float32)
        enc, areas, boxes = rle.encode_batch_with_stats(masks) if k else ([], np.zeros(0), np.zeros((0, 4)))
        rows.add(FrameRLE(t, (12, 17), ids, [r["counts"] for r in enc], np.asarray(areas, np.int64),
                          np.asarray(boxes), scores))
        expected.append(maskstore.mask_table("vid", t, ids, masks, scores))
    got = rows.table("vid")
    want = maskstore.concat_masks(expected)
    assert got.schema == want.schema
    assert maskstore.sort_masks(got).equals(want)


def committed(out: str) -> pa.Table:
    return maskstore.sort_masks(maskstore.MaskStore(out).masks_dataset().to_table())


@pytest.fixture(scope="module")
def worker_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("perf")
    corpus = str(root / "corpus")
    make_corpus(corpus, [4, 2, 3], videos_per_file=2, size=(60, 90))
    return root, corpus, tiny_model(root / "tiny.pt")


def test_overlapped_post_thread_equals_serial_worker(worker_setup):
    root, corpus, model = worker_setup
    [spec] = plan_shards(CorpusReader(corpus).list_videos(), 16)
    outs = {}
    for depth in (0, 2):
        cfg = LabelConfig(corpus=corpus, out=str(root / f"out{depth}"), model=model, batch_videos=2, min_area=1)
        worker = ShardWorker(cfg, device="cpu")
        worker.post_queue_steps = depth
        got: list[int] = []
        result = worker.process_shard(spec, progress=got.append)
        worker.close()
        assert result.frames == sum(got) == 9 and result.videos_ok == 3
        assert set(worker.last_timings) >= {"model", "wait_frames", "post_busy", "commit", "total"}
        outs[depth] = committed(cfg.out)
    assert outs[0].num_rows > 0
    assert outs[0].equals(outs[2])


def test_torchvision_jpeg_decode_path_matches_pil(worker_setup, tmp_path, monkeypatch):
    root, _, model = worker_setup
    corpus = str(tmp_path / "corpus")
    good = [frame_jpeg(t, (60, 90)) for t in range(4)]
    with CorpusWriter(corpus, videos_per_file=4) as w:
        w.add_video("good", ((t, b, 90, 60, None) for t, b in enumerate(good)))
        broken = list(good)
        broken[1] = broken[1][: len(broken[1]) // 2]  # truncated: must still fail the video, named by frame
        w.add_video("truncated", ((t, b, None, None, None) for t, b in enumerate(broken)))
    [spec] = plan_shards(CorpusReader(corpus).list_videos(), 16)
    tables = {}
    for flag in ("0", "1", "config"):  # off; on from the environment; on from LabelConfig (label --gpu-decode)
        monkeypatch.setenv(GPU_DECODE_ENV, "1" if flag == "1" else "0")
        cfg = LabelConfig(corpus=corpus, out=str(tmp_path / f"out{flag}"), model=model, min_area=1,
                          gpu_decode=flag == "config")
        worker = ShardWorker(cfg, device="cpu")
        calls: list[int] = []
        on_device = worker._decode_on_device

        def counted(data: bytes, calls=calls, on_device=on_device) -> torch.Tensor:
            calls.append(1)
            return on_device(data)

        worker._decode_on_device = counted  # type: ignore[method-assign]
        result = worker.process_shard(spec)
        worker.close()
        # 4 good frames + the intact frames of the truncated video (frame 1 and what follows it go to PIL)
        assert (len(calls) >= 5) == (flag != "0") and (len(calls) == 0) == (flag == "0")
        assert result.videos_ok == 1 and result.failed[0][0] == "truncated" and "frame 1" in result.failed[0][1]
        tables[flag] = committed(cfg.out)
    a, b = tables["0"], tables["1"]
    assert a.num_rows and a.column("object_id").to_pylist() == b.column("object_id").to_pylist()
    da = rle.decode_batch([{"size": [60, 90], "counts": c} for c in a.column("rle_counts").to_pylist()])
    db = rle.decode_batch([{"size": [60, 90], "counts": c} for c in b.column("rle_counts").to_pylist()])
    assert (da != db).mean() < 0.02  # libjpeg-turbo vs PIL's libjpeg: IDCT rounding, same masks but a few pixels


# ---- CUDA --------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_torch_rle_on_cuda_equals_rle():
    rng = np.random.default_rng(3)
    for shape in [(7, 31, 40), (2, 480, 854)]:
        assert_same_rle(rng.random(shape) < 0.5, device="cuda")
        masks = np.zeros(shape, bool)
        masks[:, 5:20, 3:30] = True
        assert_same_rle(masks, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
def test_cuda_session_fast_paths(compile_mode):
    videos = {0: frames(4, 0, (50, 70)), 1: frames(4, 1, (40, 60))}
    _, ref = run_session(tiny("zero-shot"), PredictConfig(), videos, steps=4)
    cfg = PredictConfig.for_device("cuda", compile=compile_mode)
    _, out = run_session(tiny("zero-shot"), cfg, videos, rles=True, steps=4)
    for (res, enc, _), (want, _, _) in zip(out, ref, strict=True):
        for row, r in res.items():
            assert (r.masks.shape[1:] == want[row].masks.shape[1:])
            if len(r.object_ids):
                assert enc[row].counts == [x["counts"] for x in rle.encode_batch(r.masks)]
            # bfloat16 against float32: the same objects, masks differ only along edges
            common = np.intersect1d(r.object_ids, want[row].object_ids)
            for obj in common:
                a = r.masks[list(r.object_ids).index(obj)]
                b = want[row].masks[list(want[row].object_ids).index(obj)]
                assert (a != b).mean() < 0.05


def test_speed_flags_reach_the_worker_and_are_validated(worker_setup, monkeypatch):
    from rvos_batch.cli import build_parser
    from rvos_batch.cli.label import config_from_args
    from rvos_batch.job.config import COMPILE_CHOICES
    from rvos_batch.job.worker import AMP_ENV, speed_settings
    from rvos_batch.predictor import COMPILE_MODES

    assert COMPILE_CHOICES == COMPILE_MODES
    root, corpus, model = worker_setup
    args = build_parser().parse_args(["label", corpus, str(root / "o"), "--compile", "reduce-overhead",
                                      "--amp", "bfloat16", "--gpu-decode"])
    cfg = config_from_args(args)
    assert (cfg.compile, cfg.amp, cfg.gpu_decode) == ("reduce-overhead", "bfloat16", True)
    base = PredictConfig(device="cpu")
    assert speed_settings(base, cfg).amp_dtype == "bfloat16"
    assert speed_settings(base, cfg).compile is None  # compiling is for CUDA workers only
    monkeypatch.setenv(AMP_ENV, "float16")
    assert speed_settings(base, LabelConfig(corpus=corpus, out="o")).amp_dtype == "float16"  # env: the fallback
    assert speed_settings(base, cfg).amp_dtype == "bfloat16"  # the run's own choice wins
    with pytest.raises(RvosBatchError, match="--amp must be one of"):
        LabelConfig(corpus=corpus, out="o", amp="fp8")
    with pytest.raises(RvosBatchError, match="--compile must be one of"):
        LabelConfig(corpus=corpus, out="o", compile="fast")


def test_worker_refuses_a_model_other_than_the_one_the_driver_digested(worker_setup):
    from rvos_batch.errors import CheckpointError
    from rvos_batch.model.checkpoint import file_sha256

    root, corpus, model = worker_setup
    good = LabelConfig(corpus=corpus, out=str(root / "pin"), model=model, model_sha256=file_sha256(model))
    ShardWorker(good, device="cpu").close()
    bad = LabelConfig(corpus=corpus, out=str(root / "pin"), model=model, model_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        ShardWorker(bad, device="cpu")
