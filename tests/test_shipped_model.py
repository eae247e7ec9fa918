"""The shipped models really segment: labeled through the product's own path (ingest -> the job's worker ->
DAVIS export -> eval) on a few held-out synthetic videos (a seed and textures never used in training), each
mode stays above a floor well under its model-card figure; a broken or swapped model falls far below it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rvos_batch.evaluate import evaluate
from rvos_batch.export import export_davis
from rvos_batch.ingest import IngestConfig, ingest
from rvos_batch.job.config import LabelConfig
from rvos_batch.job.worker import run_in_process
from rvos_batch.synth import SynthConfig, write_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "davis2017-val-osvos").is_dir(), reason="shared/data not present")

# model card (12 videos x 24 frames), with the appearance check (on by default): one-shot J&F 0.749, zero-shot
# 0.398, zero-shot with the one-shot model as tracker 0.554. These 3 short videos score 0.752, 0.467 and 0.553;
# before the guided filter and the snapped hand-overs 0.729, 0.467 and 0.550, and without the check 0.646, 0.45
# and 0.491. So the one-shot and tracked floors also fail when the check stops working, and the tracked floor is
# above zero-shot alone.
FLOORS = {"one-shot": 0.68, "zero-shot": 0.35, "zero-shot-tracked": 0.51}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("shipped")
    data = root / "heldout"
    write_dataset(data, SynthConfig(videos=3, frames=12, seed=4242, textures="heldout"), source=str(SHARED))
    corpus = root / "corpus"
    ingest(IngestConfig(src=str(data), out=str(corpus), format="davis", progress=False))
    return data, str(corpus)


@pytest.mark.parametrize(("mode", "tracker"), [("one-shot", None), ("zero-shot", None), ("zero-shot", "default")],
                         ids=["one-shot", "zero-shot", "zero-shot-tracked"])
def test_shipped_model_segments_held_out_videos(heldout, tmp_path, mode, tracker):
    data, corpus = heldout
    cfg = LabelConfig(corpus=corpus, out=str(tmp_path / "out"), mode=mode, model="default", tracker=tracker)
    results = run_in_process(cfg)
    assert sum(r.frames for r in results) == 36 and not any(r.failed for r in results)
    export_davis(str(tmp_path / "out"), tmp_path / "png")
    protocol = "semi-supervised" if mode == "one-shot" else "unsupervised"
    score = evaluate(str(tmp_path / "png"), str(data / "Annotations" / "480p"), protocol=protocol,
                     missing="empty").summary()
    print(mode, tracker, {k: round(v, 3) for k, v in score.items() if isinstance(v, float)})
    assert score["J&F-Mean"] >= FLOORS[mode if tracker is None else "zero-shot-tracked"], score
