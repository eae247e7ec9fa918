"""Training: a few steps of each mode on a tiny DAVIS-layout folder; checkpoints, log, resume, matching, losses."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rvos_batch.errors import RvosBatchError
from rvos_batch.imaging import encode_palette_png
from rvos_batch.model.checkpoint import load_checkpoint
from rvos_batch.train import (
    TrainConfig,
    clip_batches,
    lr_factor,
    match_slots,
    one_shot_inputs,
    resolve_model_fields,
    soft_iou_loss,
    train,
)


def _make_davis(root, videos=3, frames=6, size=(48, 80)):
    h, w = size
    rng = np.random.default_rng(0)
    names = []
    for v in range(videos):
        name = f"vid{v}"
        names.append(name)
        (root / "JPEGImages/480p" / name).mkdir(parents=True)
        (root / "Annotations/480p" / name).mkdir(parents=True)
        for t in range(frames):
            ids = np.zeros((h, w), np.uint8)
            ids[5 + t : 20 + t, 10 + 2 * t : 30 + 2 * t] = 1
            if t >= 2:  # a second object enters at frame 2
                ids[25:40, 50 - t : 70 - t] = 2
            rgb = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            rgb[ids == 1] = (200, 40, 40)
            rgb[ids == 2] = (40, 200, 40)
            Image.fromarray(rgb).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg")
            (root / "Annotations/480p" / name / f"{t:05d}.png").write_bytes(encode_palette_png(ids))
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/train.txt").write_text("\n".join(names[:-1]) + "\n")
    (root / "ImageSets/2017/val.txt").write_text(names[-1] + "\n")
    return root


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), backbone="mobilenet_v2", backbone_weights=None, hidden=16, num_slots=3,
                input_size=(48, 80), clip_len=3, batch_size=2, iters=4, val_every=2, log_every=1, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _make_youtube_vos(root, videos=3, frames=16, size=(48, 80)):
    """A YouTube-VOS ``train_all_frames``-style split folder: every frame's JPEG, an annotation every 5th frame
    (00000, 00005, ...), meta.json with categories. Objects move 1 pixel a frame."""
    h, w = size
    rng = np.random.default_rng(1)
    meta = {"videos": {}}
    for v in range(videos):
        name = f"yt{v:03d}"
        (root / "JPEGImages" / name).mkdir(parents=True)
        (root / "Annotations" / name).mkdir(parents=True)
        for t in range(frames):
            ids = np.zeros((h, w), np.uint8)
            ids[5 + t // 2 : 20 + t // 2, 10 + t : 30 + t] = 1
            ids[28:42, 60 - t : 75 - t] = 3  # YouTube-VOS ids need not be consecutive
            rgb = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            rgb[ids == 1] = (200, 40, 40)
            rgb[ids == 3] = (40, 40, 200)
            Image.fromarray(rgb).save(root / "JPEGImages" / name / f"{t:05d}.jpg")
            if t % 5 == 0:
                (root / "Annotations" / name / f"{t:05d}.png").write_bytes(encode_palette_png(ids))
        annotated = [f"{t:05d}" for t in range(0, frames, 5)]
        meta["videos"][name] = {"objects": {"1": {"category": "cat", "frames": annotated},
                                            "3": {"category": "dog", "frames": annotated}}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("mode", ["zero-shot", "one-shot"])
def test_train_reads_a_youtube_vos_split_folder(tmp_path, mode):
    """DATA may be a YouTube-VOS split folder as downloaded: it trains on the annotated frames (every 5th) only."""
    from rvos_batch.vosdata import ClipDataset, detect_layout, list_videos, load_video

    data = _make_youtube_vos(tmp_path / "train_all_frames")
    assert detect_layout(data) == "youtube-vos"
    videos = list_videos(data)
    assert [v.name for v in videos] == ["yt000", "yt001", "yt002"]
    assert [a is not None for a in videos[0].annotations] == [t % 5 == 0 for t in range(16)]
    images, labels = load_video(videos[0], (48, 80))
    assert images.shape == (4, 48, 80, 3) and set(np.unique(labels)) == {0, 1, 3}
    item = ClipDataset(videos, (48, 80), clip_len=3, max_objects=3, augment=False)[0]
    assert item["present"][:, :2].all() and not item["present"][:, 2].any()  # ids 1 and 3 -> the first two slots
    out = tmp_path / "run"
    metrics = train(_cfg(data, out, mode=mode, iters=2, val_every=1), progress=False)
    assert np.isfinite(metrics["best_val_soft_iou"])
    _, config, extra = load_checkpoint(out / "best.pt")
    assert config.mode == mode and extra["step"] in (1, 2)


@pytest.mark.parametrize("mode,stage", [("zero-shot", 1), ("one-shot", 1), ("one-shot", 2)])
def test_train_writes_checkpoints_and_log(tmp_path, mode, stage):
    data = _make_davis(tmp_path / "davis")
    init = None
    if stage == 2:
        train(_cfg(data, tmp_path / "s1", mode="one-shot", iters=2), progress=False)
        init = str(tmp_path / "s1" / "best.pt")
    out = tmp_path / "run"
    metrics = train(_cfg(data, out, mode=mode, stage=stage, init=init), progress=False)
    assert np.isfinite(metrics["best_val_soft_iou"])
    model, config, extra = load_checkpoint(out / "best.pt")
    assert config.mode == mode and extra["step"] in (2, 4)
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[1]["val_soft_iou"] != ""


def test_resume_continues_from_last_step(tmp_path):
    data = _make_davis(tmp_path / "davis")
    out = tmp_path / "run"
    train(_cfg(data, out, iters=2), progress=False)
    _, _, extra = load_checkpoint(out / "last.pt")
    assert extra["step"] == 2
    train(_cfg(data, out, iters=4), progress=False)  # "interrupted" at 2, rerun to 4
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # no step trained twice
    _, _, extra = load_checkpoint(out / "last.pt")
    assert extra["step"] == 4


def test_worker_processes_load_the_same_clips_and_train_the_same_model(tmp_path):
    data = _make_davis(tmp_path / "davis")
    from rvos_batch.train import _split
    from rvos_batch.vosdata import ClipDataset

    videos, _ = _split(_cfg(data, tmp_path / "x"))
    clips = ClipDataset(videos, (48, 80), 3, 3, augment=True, length=20, seed=5, colour=True)
    inline = list(clip_batches(clips, 2, 1, 5))
    loaded = list(clip_batches(clips, 2, 1, 5, workers=2))
    assert len(inline) == len(loaded) == 4
    for a, b in zip(inline, loaded, strict=True):
        assert a.keys() == b.keys()
        for k in ("masks", "void", "present"):
            assert torch.equal(a[k], b[k]), k
        # a worker computes with one thread, so a float may round differently in its last bit
        torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=1e-6)
    assert not torch.equal(inline[0]["images"], inline[1]["images"])  # steps differ: the test can tell them apart

    logs, weights = [], []
    for workers in (0, 2):
        out = tmp_path / f"run{workers}"
        train(_cfg(data, out, mode="one-shot", iters=3, val_every=3, color_aug=True, workers=workers), progress=False)
        logs.append([float(r["loss"]) for r in csv.DictReader(open(out / "log.csv"))])
        weights.append(load_checkpoint(out / "last.pt")[0].state_dict())
    assert len(logs[0]) == 3
    np.testing.assert_allclose(logs[0], logs[1], rtol=1e-4)
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-3, atol=1e-5)
    with pytest.raises(RvosBatchError, match="--workers"):
        _cfg(data, tmp_path / "y", workers=-1)


def test_init_and_resume_train_the_model_at_its_own_shape(tmp_path):
    """--init (and a resumed run) takes the model's input size and slots: data cut to another size would train a
    model at one size that labels at another. A contradicting explicit value is an error naming both, except
    --input-size with --init, which re-sizes that model (fine-tuning at a new size)."""
    data = _make_davis(tmp_path / "davis")
    train(_cfg(data, tmp_path / "s1", mode="one-shot", iters=2), progress=False)  # 48x80, 3 slots
    init = str(tmp_path / "s1" / "best.pt")
    shape = dict(backbone=None, hidden=None, num_slots=None, input_size=None)
    out = tmp_path / "s2"
    train(_cfg(data, out, mode="one-shot", stage=2, init=init, iters=2, **shape), progress=False)
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["input_size"] == [48, 80] and recorded["num_slots"] == 3 and recorded["hidden"] == 16
    _, _, extra = load_checkpoint(out / "last.pt")
    assert extra["train_config"]["input_size"] == [48, 80]
    with pytest.raises(RvosBatchError, match=r"--slots 5 differs from --init .* 3"):
        train(_cfg(data, tmp_path / "bad", mode="one-shot", stage=2, init=init, iters=2,
                   **{**shape, "num_slots": 5}), progress=False)
    with pytest.raises(RvosBatchError, match=r"--slots 5 differs from the run being resumed .* 3"):
        train(_cfg(data, out, mode="one-shot", stage=2, init=init, iters=4, **{**shape, "num_slots": 5}),
              progress=False)
    # an explicit --input-size re-sizes the --init model (its weights do not depend on the size), every weight kept
    bigger = tmp_path / "s2-bigger"
    train(_cfg(data, bigger, mode="one-shot", stage=2, init=init, iters=1, lr=0.0, lr_encoder=0.0,
               **{**shape, "input_size": (64, 96)}), progress=False)
    model, config, extra = load_checkpoint(bigger / "last.pt")
    assert config.input_size == (64, 96) and extra["train_config"]["input_size"] == [64, 96]
    before, _, _ = load_checkpoint(init)
    weights = dict(model.named_parameters())  # (not BatchNorm's running statistics, which a training step moves)
    assert all(torch.equal(v, weights[k]) for k, v in before.named_parameters())
    # ... but a resumed run keeps the size it was trained at
    with pytest.raises(RvosBatchError, match=r"--input-size 64x96 differs from the run being resumed .*48x80"):
        train(_cfg(data, out, mode="one-shot", stage=2, init=init, iters=4, **{**shape, "input_size": (64, 96)}),
              progress=False)
    # a run from scratch with nothing given gets the paper's shape
    fresh = resolve_model_fields(TrainConfig(data="d", out="o"), None)
    assert (fresh.input_size, fresh.num_slots, fresh.hidden, fresh.backbone) == ((256, 448), 10, 128, "mobilenet_v2")


@pytest.mark.parametrize("mode", ["zero-shot", "one-shot"])
def test_clip_loss_overfits_a_fixed_batch(tmp_path, mode):
    from rvos_batch.train import _param_groups, build_model, clip_loss
    from rvos_batch.vosdata import ClipDataset, list_videos

    torch.manual_seed(0)
    data = _make_davis(tmp_path / "davis")
    cfg = _cfg(data, tmp_path / "run", mode=mode, lr=1e-2)
    ds = ClipDataset(list_videos(data), cfg.input_size, cfg.clip_len, cfg.num_slots, augment=False, length=2)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0]}
    model = build_model(cfg, torch.device("cpu")).train()
    opt = torch.optim.Adam(_param_groups(model, cfg))
    losses = []
    for _ in range(25):
        loss = clip_loss(model, batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_soft_iou_loss_gives_confident_pixels_a_zero_gradient_not_a_denormal_one():
    """A trained model's logits reach -88, where the sigmoid's slope is a denormal float; those gradients made a
    CPU training step's backward 3-5x slower. Past +-20 the loss's gradient is exactly zero; inside, unchanged."""
    target = torch.zeros(1, 4, 8)
    target[:, :, :4] = 1.0
    logits = torch.full((1, 4, 8), -88.0)  # confident background...
    logits[:, :, :4] = torch.linspace(-6.0, 6.0, 16).view(4, 4)  # ...and an uncertain object
    logits.requires_grad_(True)
    soft_iou_loss(logits, target, torch.ones(1, 4, 8)).sum().backward()
    g = logits.grad
    assert g is not None
    tiny = torch.finfo(torch.float32).tiny  # the smallest normal float32
    assert not ((g != 0) & (g.abs() < tiny)).any()  # no denormal anywhere
    assert (g[:, :, 4:] == 0).all()
    free = logits.detach().clone().requires_grad_(True)  # the loss written out without the clamp
    p = torch.sigmoid(free)
    (1 - (p * target).sum((-2, -1)) / ((p + target - p * target).sum((-2, -1)) + 1e-6)).sum().backward()
    assert free.grad is not None
    torch.testing.assert_close(g[:, :, :4], free.grad[:, :, :4])
    assert (free.grad[:, :, 4:].abs() < tiny).all() and (free.grad[:, :, 4:] != 0).any()  # what the clamp removes


def test_soft_iou_loss_values():
    logits = torch.full((1, 4, 4), 20.0)
    target = torch.ones(1, 4, 4)
    assert float(soft_iou_loss(logits, target, torch.ones(1, 4, 4))) < 1e-3
    assert float(soft_iou_loss(-logits, target, torch.ones(1, 4, 4))) > 0.99
    # void pixels do not count
    weight = torch.zeros(1, 4, 4)
    weight[:, :2] = 1
    target2 = target.clone()
    target2[:, 2:] = 0
    assert float(soft_iou_loss(logits, target2, weight)) < 1e-3


def test_match_slots_finds_the_permutation():
    b, t, k, h, w = 1, 2, 3, 8, 8
    masks = torch.zeros(b, t, k, h, w)
    masks[:, :, 0, :4, :4] = 1
    masks[:, :, 1, 4:, 4:] = 1
    masks[:, :, 2, :4, 4:] = 1
    perm = [2, 0, 1]  # slot s predicts object perm[s]
    logits = torch.full((b, t, 4, h, w), -10.0)
    for s, o in enumerate(perm):
        logits[:, :, s] = masks[:, :, o] * 20 - 10
    present = masks.flatten(3).amax(-1) > 0
    slots, objects = match_slots(logits, masks, torch.ones(b, t, 1, h, w), present)[0]
    assert dict(zip(slots.tolist(), objects.tolist(), strict=True)) == {0: 2, 1: 0, 2: 1}


def test_one_shot_inputs_stages():
    masks = torch.zeros(1, 3, 2, 2, 2)
    masks[0, :, 0] = 1  # object 0 present from frame 0
    masks[0, 1:, 1] = 1  # object 1 appears at frame 1
    masks[0, 1, 0, 0, 0] = 0  # frame 1 differs from frame 0 for object 0
    present = masks.flatten(3).amax(-1) > 0
    given, valid, counted = one_shot_inputs(masks, present, stage=1)
    assert torch.equal(given[0, 1, 0], masks[0, 0, 0])  # previous frame's truth
    assert torch.equal(given[0, 1, 1], masks[0, 1, 1])  # first appearance: its own truth
    assert valid[0].tolist() == [[True, False], [True, True], [True, True]]
    given, valid, counted = one_shot_inputs(masks, present, stage=2)
    assert valid[0].tolist() == [[True, False], [False, True], [False, False]]
    assert counted[0].tolist() == [[True, False], [True, True], [True, True]]


def test_cosine_schedule_decays_to_zero_and_resumes_on_the_same_curve(tmp_path):
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    data = _make_davis(tmp_path / "davis")
    out = tmp_path / "run"
    cfg = _cfg(data, out, iters=4, lr=1e-3, lr_encoder=1e-4, lr_schedule="cosine")
    train(cfg, progress=False)
    _, _, extra = load_checkpoint(out / "last.pt")
    lrs = sorted(g["lr"] for g in extra["optimizer"]["param_groups"])
    # the last step (index 3 of 4) ran at factor lr_factor(3, 4)
    assert lrs == pytest.approx([1e-4 * lr_factor("cosine", 3, 4), 1e-3 * lr_factor("cosine", 3, 4)])
    with pytest.raises(RvosBatchError, match="--lr-schedule must be one of"):
        _cfg(data, out, lr_schedule="step")


def test_colour_augmentation_recolours_images_only(tmp_path):
    from rvos_batch.vosdata import ClipDataset, list_videos

    data = _make_davis(tmp_path / "davis")
    videos = list_videos(data, "train")
    plain = ClipDataset(videos, (48, 80), clip_len=3, max_objects=3, length=8, seed=1)
    colour = ClipDataset(videos, (48, 80), clip_len=3, max_objects=3, length=8, seed=1, colour=True)
    changed = 0
    for i in range(8):
        a, b = plain[i], colour[i]
        for key in ("masks", "void", "present"):
            assert torch.equal(a[key], b[key]), key  # the labels and the geometry are untouched
        assert b["images"].shape == a["images"].shape and 0.0 <= b["images"].min() <= b["images"].max() <= 1.0
        changed += not torch.allclose(a["images"], b["images"], atol=1e-3)
    assert changed >= 6
    cfg = _cfg(data, tmp_path / "run", iters=2, color_aug=True)
    assert np.isfinite(train(cfg, progress=False)["best_val_soft_iou"])


@pytest.mark.parametrize("addition", ["refine", "match"])
def test_an_addition_is_put_on_top_of_a_trained_model(tmp_path, addition):
    """--refine / --match with --init: every trained weight is kept, the logits start equal, and training moves
    the new weights. Matching goes on a model with the head, so that the head's inputs grow too."""
    from rvos_batch.train import add_matching, add_refinement

    data = _make_davis(tmp_path / "davis")
    train(_cfg(data, tmp_path / "base", mode="one-shot", iters=2, refine=addition == "match"), progress=False)
    base, base_cfg, _ = load_checkpoint(tmp_path / "base" / "best.pt")
    assert not getattr(base_cfg, addition)
    added = {"refine": add_refinement, "match": add_matching}[addition](base).eval()
    assert getattr(added.config, addition)
    if addition == "match":
        assert added.matcher is not None
        assert added.decoder.cells[0].gates.in_channels == base.decoder.cells[0].gates.in_channels + 2
    clip = torch.rand(1, 3, 3, 48, 80)
    given = (torch.rand(1, 3, 3, 48, 80) > 0.5).float()
    with torch.no_grad():
        torch.testing.assert_close(added(clip, None, given)[0], base(clip, None, given)[0])
    out = tmp_path / "added"
    train(_cfg(data, out, mode="one-shot", stage=2, init=str(tmp_path / "base" / "best.pt"), lr=1e-2,
               **{addition: True}), progress=False)
    model, config, _ = load_checkpoint(out / "last.pt")
    assert config.refine and getattr(config, addition)
    assert model.decoder.refine is not None
    if addition == "refine":
        new = [model.decoder.refine[-1].weight]
    else:  # the weights that read the maps, in every layer and in the head
        new = [cell.gates.weight[:, -2:] for cell in model.decoder.cells] + [model.decoder.refine[0].weight[:, -2:]]
    assert all(w.abs().sum() > 0 for w in new)


def test_matching_is_for_one_shot_runs(tmp_path):
    with pytest.raises(RvosBatchError, match="--match .* is for --mode one-shot"):
        _cfg(tmp_path, tmp_path / "out", mode="zero-shot", match=True)


def test_the_appearance_check_is_for_one_shot_stage_2(tmp_path):
    for kw in (dict(mode="zero-shot"), dict(mode="one-shot", stage=1)):
        with pytest.raises(RvosBatchError, match="--appearance-check .* is for --mode one-shot --stage 2"):
            _cfg(tmp_path, tmp_path / "out", appearance_check=True, **kw)
    assert _cfg(tmp_path, tmp_path / "out", mode="one-shot", stage=2, appearance_check=True).appearance_check
    with pytest.raises(RvosBatchError, match="--appearance-filter .* needs --appearance-check"):
        _cfg(tmp_path, tmp_path / "out", mode="one-shot", stage=2, appearance_filter=4)
    with pytest.raises(RvosBatchError, match="--appearance-filter must be an integer radius"):
        _cfg(tmp_path, tmp_path / "out", mode="one-shot", stage=2, appearance_check=True, appearance_filter=-2)
    from rvos_batch.cli import build_parser

    args = build_parser().parse_args(["train", str(tmp_path), str(tmp_path / "o"), "--mode", "one-shot", "--stage",
                                      "2", "--appearance-check", "--appearance-filter", "4"])
    assert args.appearance_filter == 4 and build_parser().parse_args(["train", "d", "o"]).appearance_filter == 0
