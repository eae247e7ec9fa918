"""The labeling job with real Ray: shards, resume, exactly once, failures as data, S3, memory."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from jobkit import cli, frame_jpeg, make_corpus, tiny_model

from rvos_batch.appearance import AppearanceConfig
from rvos_batch.cli import build_parser
from rvos_batch.cli.label import config_from_args
from rvos_batch.cli.status import run_status
from rvos_batch.corpus import CorpusReader, CorpusWriter
from rvos_batch.discover import DiscoveryConfig
from rvos_batch.errors import MaskStoreError, RvosBatchError
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.plan import plan_shards
from rvos_batch.job.worker import ShardWorker
from rvos_batch.levels import LevelsConfig
from rvos_batch.maskstore import MaskStore, mask_table, write_mask_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """One local Ray for the in-process tests; started after the S3 environment so actors inherit it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _keys(out: str, storage_options=None) -> list[tuple]:
    t = MaskStore(out, storage_options).masks_dataset().to_table(columns=["video_id", "frame_index", "object_id"])
    return list(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))


def assert_exactly_once(out: str, video_ids: list[str], storage_options=None) -> pa.Table:
    store = MaskStore(out, storage_options)
    keys = _keys(out, storage_options)
    assert len(keys) == len(set(keys)), "a (video, frame, object) appears twice"
    videos = store.videos_dataset().to_table().column("video_id").to_pylist()
    assert sorted(videos) == sorted(video_ids), "every corpus video exactly once in videos/"
    return store.masks_dataset().to_table().sort_by([("video_id", "ascending"), ("frame_index", "ascending"),
                                                     ("object_id", "ascending")])


def test_worker_failures_are_data(tmp_path, model_path):
    """A truncated frame fails its video only; frames of mixed sizes get masks at their own size."""
    corpus = str(tmp_path / "corpus")
    good = [frame_jpeg(t) for t in range(4)]
    with CorpusWriter(corpus, videos_per_file=8) as w:
        w.add_video("good", ((t, b, 90, 60, None) for t, b in enumerate(good)))
        broken = list(good)
        broken[2] = broken[2][: len(broken[2]) // 2]  # truncated JPEG
        w.add_video("truncated", ((t, b, None, None, None) for t, b in enumerate(broken)))
        mixed = [frame_jpeg(0), frame_jpeg(1, size=(80, 120)), frame_jpeg(2, size=(45, 70))]
        w.add_video("mixed", ((t, b, None, None, None) for t, b in enumerate(mixed)))
    cfg = LabelConfig(corpus=corpus, out=str(tmp_path / "out"), model=model_path, batch_videos=2, min_area=1)
    worker = ShardWorker(cfg)
    [shard] = plan_shards(CorpusReader(corpus).list_videos(), 16)
    result = worker.process_shard(shard)
    assert (result.videos_ok, result.videos_failed) == (2, 1)
    [(vid, error)] = result.failed
    assert vid == "truncated" and "frame 2" in error
    store = MaskStore(cfg.out)
    videos = {r["video_id"]: r for r in store.videos_dataset().to_table().to_pylist()}
    assert videos["truncated"]["status"] == "failed" and "frame 2" in videos["truncated"]["error"]
    assert videos["good"]["status"] == "ok" and videos["good"]["num_frames"] == 4
    masks = store.masks_dataset().to_table()
    assert "truncated" not in set(masks.column("video_id").to_pylist())
    mixed_rows = masks.filter(pc.equal(masks["video_id"], "mixed")).to_pylist()
    sizes = {r["frame_index"]: (r["height"], r["width"]) for r in mixed_rows}
    assert sizes.get(1, (80, 120)) == (80, 120) and sizes.get(2, (45, 70)) == (45, 70)
    assert mixed_rows, "the untrained test model still emits masks at threshold 0.5"


def test_input_size_runs_the_model_at_that_size(tmp_path, model_path):
    """--input-size: the worker runs the same weights at the given size; masks stay at each frame's own size."""
    corpus = str(tmp_path / "corpus")
    ids = make_corpus(corpus, [4, 3], size=(60, 90))
    [shard] = plan_shards(CorpusReader(corpus).list_videos(), 16)
    tables = {}
    for size in (None, (96, 160)):
        cfg = LabelConfig(corpus=corpus, out=str(tmp_path / f"out-{size}"), model=model_path, min_area=1,
                          input_size=size)
        worker = ShardWorker(cfg)
        assert worker.model_config.input_size == (size or (64, 96)) == worker.model.config.input_size
        assert worker.process_shard(shard).videos_ok == 2
        tables[size] = assert_exactly_once(cfg.out, ids)
        t = tables[size]
        assert set(zip(t["height"].to_pylist(), t["width"].to_pylist(), strict=True)) == {(60, 90)}
    assert not tables[None].equals(tables[(96, 160)])  # another size is another computation
    with pytest.raises(RvosBatchError, match="--input-size must be HEIGHTxWIDTH"):
        LabelConfig(corpus=corpus, out="o", input_size=(16, 96))
    args = build_parser().parse_args(["label", corpus, "o", "--input-size", "240x424"])
    assert config_from_args(args).input_size == (240, 424)


def test_label_sharded_resume_and_refusal(tmp_path, model_path, ray_local):
    from rvos_batch.job.driver import run_job

    corpus = str(tmp_path / "corpus")
    ids = make_corpus(corpus, [5, 3, 7, 4, 6, 2, 5], videos_per_file=3)
    out = str(tmp_path / "out")
    cfg = LabelConfig(corpus=corpus, out=out, model=model_path, videos_per_shard=2, num_actors=2, batch_videos=2)
    summary = run_job(cfg, progress=False)
    assert summary.ok and summary.shards_total == 4 and summary.shards_done == 4
    assert summary.frames == 32 and summary.videos_ok == 7
    first = assert_exactly_once(out, ids)
    # a rerun has nothing to do and changes nothing
    again = run_job(cfg, progress=False)
    assert again.shards_skipped == 4 and again.shards_done == 0
    assert assert_exactly_once(out, ids).equals(first)
    # another configuration into the same OUT is refused, naming what differs
    with pytest.raises(MaskStoreError, match="threshold"):
        run_job(dataclasses.replace(cfg, threshold=0.7), progress=False)
    # --input-size at the model's own size is the same run; another size is another configuration
    assert run_job(dataclasses.replace(cfg, input_size=(64, 96)), progress=False).shards_skipped == 4
    with pytest.raises(MaskStoreError, match="input_size"):
        run_job(dataclasses.replace(cfg, input_size=(96, 128)), progress=False)
    # ... unless --overwrite
    redone = run_job(dataclasses.replace(cfg, threshold=0.7, overwrite=True), progress=False)
    assert redone.shards_done == 4
    run = json.loads(Path(out, "run.json").read_text())
    assert run["config"]["threshold"] == 0.7 and run["model"]["sha256"]
    assert "given_masks" not in run["fingerprint"]  # zero-shot without a tracker: nothing is given
    assert len(run["runs"]) == 1  # overwrite starts the history again


def test_one_shot_with_prompts_for_a_missing_video(tmp_path, ray_local):
    from rvos_batch.job.driver import run_job

    corpus = str(tmp_path / "corpus")
    ids = make_corpus(corpus, [4, 5])
    mask = np.zeros((60, 90), bool)
    mask[10:30, 20:40] = True
    prompts = [mask_table(vid, 0, [1, 2], np.stack([mask, ~mask])) for vid in ids]
    prompts.append(mask_table("ghost", 0, [1], mask[None]))  # a video that is not in the corpus
    write_mask_dataset(str(tmp_path / "corpus" / "prompts"), pa.concat_tables(prompts))
    model = tiny_model(tmp_path / "oneshot.pt", mode="one-shot")
    cfg = LabelConfig(corpus=corpus, out=str(tmp_path / "out"), mode="one-shot", model=model, min_area=1)
    summary = run_job(cfg, progress=False)
    assert summary.ok and summary.videos_ok == 2
    run = json.loads(Path(cfg.out, "run.json").read_text())
    assert run["prompts_without_frames"] == ["ghost"]
    masks = assert_exactly_once(cfg.out, ids)
    assert set(masks.column("object_id").to_pylist()) <= {1, 2}
    # the appearance check is on by default; its settings join the fingerprint, so a run without it is refused
    assert run["model"]["appearance"] == run["fingerprint"]["appearance"] == dataclasses.asdict(AppearanceConfig())
    assert run["fingerprint"]["appearance"]["levels"] == 0.6, "one-shot: the check sees low-contrast videos stretched"
    # a given mask is its frame's output: an OUT labeled before that rule (no such key) is refused
    assert run["fingerprint"]["given_masks"] == "output"
    assert run_job(cfg, progress=False).shards_done == 0  # the same rule: nothing left to do
    run_path = Path(cfg.out, "run.json")
    older = json.loads(run_path.read_text())
    del older["fingerprint"]["given_masks"]
    run_path.write_text(json.dumps(older))
    with pytest.raises(MaskStoreError, match="given_masks"):
        run_job(cfg, progress=False)
    run_path.write_text(json.dumps(run))
    with pytest.raises(MaskStoreError, match="appearance"):
        run_job(dataclasses.replace(cfg, appearance_check=False), progress=False)
    plain = run_job(dataclasses.replace(cfg, appearance_check=False, out=str(tmp_path / "plain")), progress=False)
    assert plain.ok and "appearance" not in json.loads(Path(tmp_path, "plain", "run.json").read_text())["fingerprint"]
    args = build_parser().parse_args(["label", corpus, "o", "--mode", "one-shot", "--no-appearance-check"])
    assert config_from_args(args).appearance_check is False
    # the refinement ratio is part of the check's settings: another ratio into the same OUT is refused
    with pytest.raises(MaskStoreError, match="appearance"):
        run_job(dataclasses.replace(cfg, appearance_refine=3.0), progress=False)
    args = build_parser().parse_args(["label", corpus, "o", "--mode", "one-shot", "--appearance-refine", "0"])
    assert config_from_args(args).appearance_config() == AppearanceConfig(refine=None)
    assert dataclasses.replace(cfg, appearance_refine=3).appearance_config() == AppearanceConfig(refine=3.0)
    with pytest.raises(RvosBatchError, match="--appearance-refine must be 0 .* or a ratio >= 1"):
        dataclasses.replace(cfg, appearance_refine=0.5)
    # so is the guided filter's radius (one-shot only: a zero-shot run records 0 whatever it is given)
    with pytest.raises(MaskStoreError, match="appearance"):
        run_job(dataclasses.replace(cfg, appearance_filter=0), progress=False)
    args = build_parser().parse_args(["label", corpus, "o", "--mode", "one-shot", "--appearance-filter", "2"])
    assert config_from_args(args).appearance_config() == AppearanceConfig(filter=2)
    zero = dataclasses.replace(cfg, mode="zero-shot", prompts=None)
    assert zero.appearance_config() == AppearanceConfig(filter=0, levels=None)
    with pytest.raises(RvosBatchError, match="--appearance-filter must be an integer radius in 0..64"):
        dataclasses.replace(cfg, appearance_filter=-1)
    # and the check's levels (one-shot only, like the filter)
    with pytest.raises(MaskStoreError, match="appearance"):
        run_job(dataclasses.replace(cfg, appearance_levels=0.8), progress=False)
    args = build_parser().parse_args(["label", corpus, "o", "--mode", "one-shot", "--appearance-levels", "0"])
    assert config_from_args(args).appearance_config() == AppearanceConfig(levels=None)
    with pytest.raises(RvosBatchError, match="--appearance-levels must be a span of the value range"):
        dataclasses.replace(cfg, appearance_levels=1.5)
    # auto-levels are off by default and then not in the fingerprint; with them, their settings join it
    assert run["model"]["levels"] is None and "levels" not in run["fingerprint"]
    with pytest.raises(MaskStoreError, match="levels"):
        run_job(dataclasses.replace(cfg, auto_levels=0.6), progress=False)
    args = build_parser().parse_args(["label", corpus, "o", "--mode", "one-shot"])
    assert config_from_args(args).levels_config() is None
    args = build_parser().parse_args(["label", corpus, "o", "--mode", "one-shot", "--auto-levels", "0.6"])
    assert config_from_args(args).levels_config() == LevelsConfig(range=0.6)
    leveled = run_job(dataclasses.replace(cfg, auto_levels=0.6, out=str(tmp_path / "leveled")), progress=False)
    assert leveled.ok
    run = json.loads(Path(tmp_path, "leveled", "run.json").read_text())
    assert run["model"]["levels"] == run["fingerprint"]["levels"] == dataclasses.asdict(LevelsConfig())
    assert run_status(str(tmp_path / "leveled"))["auto_levels"] == 0.6
    with pytest.raises(RvosBatchError, match=r"--auto-levels must be a span of the value range in \(0, 1\]"):
        dataclasses.replace(cfg, auto_levels=1.5)


def test_zero_shot_with_a_tracker(tmp_path, model_path, ray_local):
    """--tracker: the one-shot model follows what the zero-shot model finds; its digest joins the fingerprint."""
    from rvos_batch.job.driver import run_job

    corpus = str(tmp_path / "corpus")
    ids = make_corpus(corpus, [4, 3, 5])
    follow = tiny_model(tmp_path / "tracker.pt", mode="one-shot", input_size=(80, 112), seed=1)
    cfg = LabelConfig(corpus=corpus, out=str(tmp_path / "out"), model=model_path, tracker=follow, min_area=1,
                      batch_videos=2)
    worker = ShardWorker(cfg)
    assert worker.frame_size == (80, 112) and worker.model_config.input_size == (64, 96)
    summary = run_job(cfg, progress=False)
    assert summary.ok and summary.videos_ok == 3 and summary.frames == 12
    masks = assert_exactly_once(cfg.out, ids)
    slots = DiscoveryConfig().tracker_slots  # more than the tiny tracker's 3: the session widens it
    assert masks.num_rows > 0 and set(masks.column("object_id").to_pylist()) <= set(range(1, slots + 1))
    assert set(zip(masks["height"].to_pylist(), masks["width"].to_pylist(), strict=True)) == {(60, 90)}
    run = json.loads(Path(cfg.out, "run.json").read_text())
    assert run["config"]["tracker"] == follow and run["model"]["tracker"]["sha256"]
    assert run["model"]["tracker"]["discovery"] == run["fingerprint"]["discovery"] == dataclasses.asdict(
        DiscoveryConfig())
    # the tracker is checked, but its masks are not filtered: the run records filter 0
    # nor do its checks see stretched frames: zero-shot runs record no levels, as before the levels existed
    older = {k: v for k, v in dataclasses.asdict(AppearanceConfig(filter=0)).items() if k != "levels"}
    assert run["fingerprint"]["appearance"] == older
    assert "given_masks" not in run["fingerprint"]  # a hand-over is the finder's guess: the tracker's mask is output
    assert run_job(cfg, progress=False).shards_skipped == 1
    with pytest.raises(MaskStoreError, match="tracker_sha256") as refused:  # the same OUT without the tracker
        run_job(dataclasses.replace(cfg, tracker=None), progress=False)
    assert "--tracker none" not in str(refused.value)  # the hint is for the other way round only
    alone = dataclasses.replace(cfg, tracker=None, out=str(tmp_path / "alone"))
    assert run_job(alone, progress=False).ok
    with pytest.raises(MaskStoreError, match="labeled without a tracker .* rerun with --tracker none"):
        run_job(dataclasses.replace(alone, tracker=follow), progress=False)  # as after --tracker auto came in
    with pytest.raises(MaskStoreError, match="threshold") as refused:  # not when more than the tracker differs
        run_job(dataclasses.replace(alone, tracker=follow, threshold=0.6), progress=False)
    assert "--tracker none" not in str(refused.value)
    with pytest.raises(RvosBatchError, match="is a zero-shot model; a tracker is one-shot"):
        run_job(dataclasses.replace(cfg, tracker=model_path, out=str(tmp_path / "o2")), progress=False)
    with pytest.raises(RvosBatchError, match="--tracker .* is for --mode zero-shot"):
        LabelConfig(corpus=corpus, out="o", mode="one-shot", tracker=follow)
    args = build_parser().parse_args(["label", corpus, "o", "--tracker", "default"])
    assert config_from_args(args).tracker == "default"


@pytest.mark.parametrize(("argv", "tracker"), [
    ([], "default"),  # the shipped zero-shot labeling is the shipped pair
    (["--model", "rvos-mnv2-synth-zs"], "default"),
    (["--tracker", "none"], None),
    (["--model", "mine.pt"], None),  # a user's own zero-shot model runs alone unless a tracker is named
    (["--model", "mine.pt", "--tracker", "default"], "default"),
    (["--mode", "one-shot"], None),
    (["--mode", "one-shot", "--tracker", "none"], None),
])
def test_tracker_auto_resolves_per_model_and_mode(argv, tracker):
    args = build_parser().parse_args(["label", "corpus", "o", *argv])
    assert config_from_args(args).tracker == tracker
    kwargs = {a.lstrip("-"): v for a, v in zip(argv[::2], argv[1::2], strict=True)}
    assert LabelConfig(corpus="corpus", out="o", **kwargs).tracker == tracker  # the library's default is the CLI's


def test_tracker_auto_is_none_in_one_shot_but_a_named_tracker_is_refused():
    assert LabelConfig(corpus="c", out="o", mode="one-shot", tracker="auto").tracker is None
    with pytest.raises(RvosBatchError, match="--tracker .* is for --mode zero-shot"):
        LabelConfig(corpus="c", out="o", mode="one-shot", tracker="default")


@pytest.mark.s3
def test_corpus_and_output_on_s3(s3_bucket, model_path, ray_local):
    from rvos_batch.job.driver import run_job

    corpus, out = f"{s3_bucket}/corpus", f"{s3_bucket}/out"
    ids = make_corpus(corpus, [4, 3, 5], videos_per_file=2)
    cfg = LabelConfig(corpus=corpus, out=out, model=model_path, videos_per_shard=2, num_actors=1)
    summary = run_job(cfg, progress=False)
    assert summary.ok and summary.frames == 12
    assert_exactly_once(out, ids)
    from rvos_batch import query

    assert query.video_masks(out, ids[0]).num_rows > 0


def _wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _markers(out: str) -> int:
    d = Path(out, "_commits")
    return len(list(d.glob("shard-*.json"))) if d.is_dir() else 0


def _label_proc(corpus: str, out: str, model: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rvos_batch", "label", corpus, out, "--model", model, "--videos-per-shard", "1",
         "--num-actors", "1", "--no-preview", "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, model_path):
    """A corpus of 5 one-video shards and its uninterrupted output, to compare interrupted runs against."""
    root = tmp_path_factory.mktemp("ref")
    corpus = str(root / "corpus")
    ids = make_corpus(corpus, [30, 30, 30, 30, 30], videos_per_file=2)
    out = str(root / "out")
    r = cli("label", corpus, out, "--model", model_path, "--videos-per-shard", "1", "--num-actors", "1",
            "--no-preview", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    return corpus, ids, assert_exactly_once(out, ids)


def test_driver_killed_mid_run_then_rerun(tmp_path, model_path, reference_run):
    corpus, ids, reference = reference_run
    out = str(tmp_path / "out")
    proc = _label_proc(corpus, out, model_path)
    _wait_for(lambda: _markers(out) >= 1, 300, "the first commit", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, as a machine restart would
    proc.wait()
    assert _markers(out) < 5, "killed before the end"
    r = cli("label", corpus, out, "--model", model_path, "--videos-per-shard", "1", "--num-actors", "1",
            "--no-preview", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already done" in r.stdout
    assert assert_exactly_once(out, ids).equals(reference)


def _actor_pids(session: int) -> list[int]:
    """Label actors of one run: processes of the driver's session (never another run's on this machine)."""
    r = subprocess.run(["pgrep", "-s", str(session), "-f", "ray::LabelActor"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def test_actor_killed_mid_shard(tmp_path, model_path, reference_run):
    corpus, ids, reference = reference_run
    out = str(tmp_path / "out")
    proc = _label_proc(corpus, out, model_path)
    try:
        _wait_for(lambda: _markers(out) >= 1 and _actor_pids(proc.pid), 300, "a committed shard and a live actor",
                  proc)
        for pid in _actor_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert assert_exactly_once(out, ids).equals(reference)


MEMORY_PROBE = r"""
import resource, sys
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.plan import plan_shards
from rvos_batch.job.worker import ShardWorker
from rvos_batch.corpus import CorpusReader
corpus, out, model = sys.argv[1:4]
cfg = LabelConfig(corpus=corpus, out=out, model=model, batch_videos=1)
[shard] = plan_shards(CorpusReader(corpus).list_videos(), 16)
ShardWorker(cfg).process_shard(shard)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_actor_memory_is_flat_in_video_length(tmp_path, model_path):
    """Peak memory for a 2,000-frame video within 1.3x that of a 100-frame video (frames 240x427)."""
    peaks = {}
    for n in (100, 2000):
        corpus = str(tmp_path / f"c{n}")
        frame = frame_jpeg(0, size=(240, 427))
        with CorpusWriter(corpus, videos_per_file=1) as w:
            w.add_video("long", ((t, frame, 427, 240, None) for t in range(n)))
        r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, corpus, str(tmp_path / f"o{n}"), model_path],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        peaks[n] = int(r.stdout.split()[-1])
    assert peaks[2000] <= 1.3 * peaks[100], peaks
