"""Training RVOS as the paper does: soft IoU loss, clip BPTT, Hungarian matching (zero-shot), ST+ stages (one-shot).

``train(TrainConfig)`` reads a DAVIS or YouTube-VOS folder, trains with Adam (one learning rate for the decoder
and projections, a much smaller one for the backbone), validates every ``val_every`` steps and keeps
``OUT/best.pt`` (best validation soft IoU), ``OUT/last.pt`` (resumable: model, optimiser, step) and
``OUT/log.csv`` (one row per logged step: a person can plot it). Rerunning into the same OUT resumes.

Deliberate choice: zero-shot matching uses the soft IoU over the whole clip rather than the first frame only,
so an object entering mid-clip is matched to a slot too (the paper matches on the first frame).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from rvos_batch.appearance import AppearanceConfig, AppearanceState, apply_check
from rvos_batch.appearance import check as appearance_check
from rvos_batch.appearance import view as appearance_view
from rvos_batch.errors import RvosBatchError
from rvos_batch.model.checkpoint import load_checkpoint, save_checkpoint
from rvos_batch.model.config import RVOSConfig, is_int_in
from rvos_batch.model.encoder import load_backbone_weights, mobilenet_v2_weights_path
from rvos_batch.model.rvos import RVOS
from rvos_batch.predictor import PredictConfig, slot_probs
from rvos_batch.vosdata import ClipDataset, VOSVideo, list_videos, load_video

log = logging.getLogger(__name__)
MOBILENET_V2_SHA256_PREFIX = "b0353104"


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    mode: str = "zero-shot"
    stage: int = 1  # one-shot: 1 feeds the ground-truth previous mask, 2 the model's own prediction
    # The model's shape: None takes the --init (or resumed) model's value, else MODEL_DEFAULTS. A value given
    # with --init that differs from that model's is an error (see resolve_model_fields).
    backbone: str | None = None
    backbone_weights: str | None = "auto"  # a torchvision ImageNet checkpoint; "auto": the offline mobilenet_v2
    init: str | None = None  # start from this rvos checkpoint (stage 2 starts from stage 1)
    recurrence: str | None = None
    refine: bool = False  # the stride-2 refinement head (not in the paper); with --init, added to that model
    match: bool = False  # one-shot first-frame matching (not in the paper); with --init, added to that model
    hidden: int | None = None
    num_slots: int | None = None
    input_size: tuple[int, int] | None = None
    clip_len: int = 5
    color_aug: bool = False  # recolour each training clip (not in the paper; see vosdata._recolour)
    appearance_check: bool = False  # stage 2: feed back masks refined by the appearance check, as labeling does
    appearance_filter: int = 0  # with appearance_check: also the guided filter of this radius, as labeling does
    batch_size: int = 4
    iters: int = 10_000
    lr: float = 1e-3
    lr_encoder: float = 1e-6
    lr_schedule: str = "constant"  # "constant" (the paper) or "cosine" (decay to 0 at ``iters``)
    weight_decay: float = 1e-6
    train_split: str | None = "train"
    val_split: str | None = "val"
    val_every: int = 500
    val_frames: int = 30  # frames per validation video
    log_every: int = 10
    seed: int = 0
    threads: int = 0  # torch threads; 0 keeps torch's default
    workers: int = 0  # clip-loading worker processes; 0 loads clips in the training process (same clips either way)

    def __post_init__(self) -> None:
        if self.mode not in ("zero-shot", "one-shot"):
            raise RvosBatchError(f"--mode must be zero-shot or one-shot, got {self.mode!r}")
        if self.stage not in (1, 2):
            raise RvosBatchError(f"--stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and self.mode != "one-shot":
            raise RvosBatchError("--stage 2 (feeding the model's own masks) is for --mode one-shot")
        if self.appearance_check and self.stage != 2:
            raise RvosBatchError("--appearance-check (refining the fed-back masks) is for --mode one-shot --stage 2")
        if not is_int_in(self.appearance_filter, 0, 64):
            raise RvosBatchError(
                f"--appearance-filter must be an integer radius in 0..64, got {self.appearance_filter!r}"
            )
        if self.appearance_filter and not self.appearance_check:
            raise RvosBatchError("--appearance-filter (filtering the fed-back masks) needs --appearance-check")
        if self.match and self.mode != "one-shot":
            raise RvosBatchError("--match (matching against the given masks) is for --mode one-shot")
        if self.lr_schedule not in LR_SCHEDULES:
            raise RvosBatchError(f"--lr-schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise RvosBatchError(f"--workers must be an integer >= 0, got {self.workers!r}")


LR_SCHEDULES = ("constant", "cosine")
# The model shape of a run from scratch when not given: the paper's input size, hidden 128, 10 slots.
MODEL_DEFAULTS: dict[str, Any] = {
    "backbone": "mobilenet_v2", "recurrence": "ST", "hidden": 128, "num_slots": 10, "input_size": (256, 448)}


def resolve_model_fields(cfg: TrainConfig, model_config: RVOSConfig | None, source: str = "") -> TrainConfig:
    """``cfg`` with every model-shape field set: from ``model_config`` (the --init or resumed model, named by
    ``source``) where there is one, else from MODEL_DEFAULTS.

    Training data must be cut to the size and slot count of the model it trains: a model trained at one input
    size is run at that size by the labeling job. So a field given explicitly that contradicts the model is an
    error naming both values, never silently ignored. (An --init model is re-sized to an explicit --input-size
    by ``build_model`` before this runs: its weights do not depend on the size. A resumed run keeps its own.)
    """
    values = {}
    for name, default in MODEL_DEFAULTS.items():
        given = _plain_value(getattr(cfg, name))
        if model_config is None:
            values[name] = default if given is None else given
            continue
        have = _plain_value(getattr(model_config, name))
        if given is not None and given != have:
            flag = "--slots" if name == "num_slots" else "--" + name.replace("_", "-")
            raise RvosBatchError(f"{flag} {_show(given)} differs from {source}, which has {_show(have)}; "
                                 f"leave {flag} out to train that model as it is")
        values[name] = have
    return replace(cfg, **values)


def _plain_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _show(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def lr_factor(schedule: str, step: int, iters: int) -> float:
    """Multiplier of the base learning rates at ``step`` (0-based) of ``iters``; a function of the step alone,
    so a resumed training continues the same schedule."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, iters) / max(iters, 1)))
    return 1.0


LOSS_LOGIT_CLAMP = 20.0  # the loss reads logits clamped to +-this (see soft_iou_loss)


def soft_iou_loss(logits: Tensor, target: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """1 - soft IoU per mask over the last two dims; ``weight`` (0 on void pixels) broadcasts.

    The logits are clamped to +-``LOSS_LOGIT_CLAMP`` first: beyond 20 the sigmoid's slope is under 2.1e-9 and its
    probability within 2.1e-9 of 0 or 1, so the loss moves by at most that per pixel and those pixels' gradient
    becomes an exact zero instead of a vanishing one. A trained model is that confident over most of a frame
    (logits reach -88), and its vanishing gradients are denormal floats, which the CPU processes many times
    slower: from the shipped one-shot model, backward took 4-6 s a step at 192x336 against 1.3-1.7 s clamped
    (``benchmarks/bench_train_loading.py``).
    """
    p = torch.sigmoid(logits.clamp(-LOSS_LOGIT_CLAMP, LOSS_LOGIT_CLAMP))
    inter = (p * target * weight).sum((-2, -1))
    union = ((p + target - p * target) * weight).sum((-2, -1))
    return 1.0 - inter / (union + eps)


def match_slots(logits: Tensor, masks: Tensor, weight: Tensor, present: Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Zero-shot: per clip, the slot -> object assignment minimising the clip's summed soft IoU loss.

    logits (B, T, S, H, W), masks (B, T, K, H, W), weight (B, T, 1, H, W), present (B, T, K).
    Returns per clip (slot indices, object indices).
    """
    with torch.no_grad():
        p = torch.sigmoid(logits).float()
        y = masks.float()
        w = weight.float()
        # (B, T, S, K): soft IoU of every slot against every object
        inter = torch.einsum("btshw,btkhw->btsk", p * w, y)
        union = (p * w).sum((-2, -1))[..., :, None] + (y * w).sum((-2, -1))[..., None, :] - inter
        cost = (1 - inter / (union + 1e-6)).sum(1)  # (B, S, K)
    out = []
    for b in range(cost.shape[0]):
        objects = torch.nonzero(present[b].any(0)).flatten().cpu().numpy()
        if len(objects) == 0:
            out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        rows, cols = linear_sum_assignment(cost[b][:, objects].cpu().numpy())
        out.append((rows, objects[cols]))
    return out


def one_shot_inputs(masks: Tensor, present: Tensor, stage: int) -> tuple[Tensor, Tensor, Tensor]:
    """Given masks and validity for RVOS.forward, and which (clip, frame, object) count in the loss.

    masks (B, T, K, H, W), present (B, T, K). Stage 1: every frame gets the previous frame's ground truth (its
    own on the object's first frame). Stage 2: only an object's first frame gets its ground truth; after that the
    model's own output is fed back. The loss counts frames from each object's first appearance on.
    """
    b, t, k = present.shape
    appeared = present.cumsum(1) > 0  # (B, T, K)
    first = appeared & ~torch.cat([torch.zeros_like(appeared[:, :1]), appeared[:, :-1]], 1)  # first appearance
    if stage == 1:
        prev = torch.cat([masks[:, :1], masks[:, :-1]], 1)  # (B, T, K, H, W): previous frame's ground truth
        given = torch.where(first[..., None, None], masks, prev)
        valid = appeared
    else:
        given = masks * first[..., None, None]
        valid = first
    return given, valid, appeared


def clip_loss(model: RVOS, batch: dict[str, Tensor], cfg: TrainConfig) -> Tensor:
    images, masks, present = batch["images"], batch["masks"], batch["present"]
    weight = (~batch["void"]).float()[:, :, None]  # (B, T, 1, H, W)
    if cfg.mode == "one-shot":
        k_used = int(present.any(1).any(0).nonzero().max().item()) + 1 if present.any() else 1
        masks, present = masks[:, :, :k_used], present[:, :, :k_used]
        given, valid, counted = one_shot_inputs(masks, present, cfg.stage)
        logits = _one_shot_logits(model, images, given, valid, _check(cfg))  # (B, T, K, H, W)
        per = soft_iou_loss(logits, masks, weight)  # (B, T, K)
        pairs = counted.any(1)  # (B, K): objects of each clip
        frames_loss = (per * counted).sum(1)  # summed over frames
        return frames_loss[pairs].mean() if pairs.any() else per.sum() * 0
    logits, _ = model(images)  # (B, T, S, H, W)
    assignment = match_slots(logits, masks, weight, present)
    losses = []
    for b, (slots, objects) in enumerate(assignment):
        if len(slots) == 0:
            continue
        s = torch.as_tensor(slots, device=logits.device)
        o = torch.as_tensor(objects, device=logits.device)
        per = soft_iou_loss(logits[b][:, s], masks[b][:, o], weight[b])  # (T, n)
        losses.append(per.sum(0))
    return torch.cat(losses).mean() if losses else logits.sum() * 0


def _check(cfg: TrainConfig) -> AppearanceConfig | None:
    """The appearance check training feeds back through: labeling's defaults with the training's filter radius
    (0 unless ``--appearance-filter``) and without the check's levels, as the shipped model was trained; or None."""
    return AppearanceConfig(filter=cfg.appearance_filter, levels=None) if cfg.appearance_check else None


def _one_shot_logits(model: RVOS, images: Tensor, given: Tensor, valid: Tensor,
                     check: AppearanceConfig | None) -> Tensor:
    """One-shot logits (B, T, K, H, W) of a clip. With ``check``: between frames, the fed-back masks are refined by
    the appearance check (:mod:`rvos_batch.appearance`) exactly as a one-shot ``BatchSession`` with that config
    refines them at labeling time (and, with ``check.filter``, filters them), each object's colours taken from its
    given mask. The refinement is not differentiated (stage 2 feeds back detached masks anyway)."""
    if check is None:
        return model(images, given_masks=given, given_valid=valid)[0]
    b, t, k = given.shape[:3]
    config, threshold = check, PredictConfig().threshold
    state = model.init_state(b, device=images.device, image_size=(images.shape[-2], images.shape[-1]), num_slots=k)
    seen_state = AppearanceState.empty(b, k, config, images.device)
    outputs = []
    for i in range(t):
        logits, state = model.step(images[:, i], state, given[:, i], valid[:, i])
        with torch.no_grad():
            probs = slot_probs(logits.detach())
            looks, seen_state = appearance_view(images[:, i], seen_state, config)
            seen = appearance_check(looks, probs, state.started, threshold, given[:, i], valid[:, i],
                                    seen_state, config)
            seen_state = seen.state
            _, fed = apply_check(looks, probs, state.prev_masks, seen, state.started[:, :k] & ~seen.hidden,
                                 valid[:, i], config, threshold, smooth=True)  # as a one-shot BatchSession
            if fed is not state.prev_masks:
                state = replace(state, prev_masks=fed)
        outputs.append(logits)
    return torch.stack(outputs, dim=1)


@torch.no_grad()
def validate(model: RVOS, videos: list[VOSVideo], cfg: TrainConfig, device: torch.device) -> float:
    """Mean soft IoU on whole validation videos, inferred as at labeling time (own masks fed back)."""
    model.eval()
    scores = []
    for video in videos:
        images, labels = load_video(video, model.config.input_size)
        images, labels = images[: cfg.val_frames], labels[: cfg.val_frames]
        ids = [int(i) for i in np.unique(labels) if i not in (0, 255)][: model.config.num_slots]
        if not ids:
            continue
        img = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)[None].to(device)  # (1, T, 3, H, W)
        lab = torch.from_numpy(labels.astype(np.int64)).to(device)
        masks = torch.stack([(lab == i).float() for i in ids], 1)[None]  # (1, T, K, H, W)
        present = masks.flatten(3).amax(-1) > 0
        weight = (lab != 255).float()[None, :, None]
        if cfg.mode == "one-shot":
            given, valid, counted = one_shot_inputs(masks, present, stage=2)
            logits = _one_shot_logits(model, img, given, valid, _check(cfg))
            per = 1 - soft_iou_loss(logits, masks, weight)
            scores.append(float((per * counted).sum() / counted.sum().clamp(min=1)))
        else:
            logits, _ = model(img)
            slots, objects = match_slots(logits, masks, weight, present)[0]
            per = 1 - soft_iou_loss(logits[0][:, slots], masks[0][:, objects], weight[0])
            scores.append(float(per.mean()))
    model.train()
    return float(np.mean(scores)) if scores else float("nan")


def build_model(cfg: TrainConfig, device: torch.device) -> RVOS:
    """The model a run starts from: the --init checkpoint, whose shape wins (``train`` then resolves ``cfg``
    against it and refuses a contradicting one: see resolve_model_fields), or a new one.

    Three changes to an --init model are allowed, each keeping every trained weight: ``--refine`` adds the
    refinement head, ``--match`` adds first-frame matching, and an explicit ``--input-size`` re-sizes it
    (fine-tuning at a larger size than a model was first trained at; the labeling job then runs it at the new
    size)."""
    if cfg.init:
        model, init_cfg, _ = load_checkpoint(cfg.init, map_location="cpu")
        if init_cfg.mode != cfg.mode:
            raise RvosBatchError(f"--init {cfg.init} is a {init_cfg.mode} model; this run is {cfg.mode}")
        if cfg.refine and not init_cfg.refine:
            model = add_refinement(model)
        if cfg.match and not model.config.match:
            model = add_matching(model)
        if cfg.input_size is not None:  # RVOSConfig normalises the size (a list from JSON, numpy ints)
            resized = replace(model.config, input_size=cfg.input_size)
            if resized != model.config:
                log.info("--init %s: re-sized from %s to %s", cfg.init, _show(model.config.input_size),
                         _show(resized.input_size))
                model.config = resized
        return model.to(device)
    cfg = resolve_model_fields(cfg, None)
    mcfg = RVOSConfig.from_dict({"backbone": cfg.backbone, "hidden": cfg.hidden, "num_slots": cfg.num_slots,
                                 "mode": cfg.mode, "recurrence": cfg.recurrence, "input_size": cfg.input_size,
                                 "refine": cfg.refine, "match": cfg.match})
    model = RVOS(mcfg)
    weights = cfg.backbone_weights
    if weights == "auto":
        found = mobilenet_v2_weights_path() if cfg.backbone == "mobilenet_v2" else None
        if found is None:
            log.warning("no ImageNet weights for %s here: the backbone trains from scratch", cfg.backbone)
        else:
            load_backbone_weights(model.encoder, found, sha256_prefix=MOBILENET_V2_SHA256_PREFIX)
    elif weights:
        load_backbone_weights(model.encoder, weights)
    return model.to(device)


REFINEMENT_KEYS = ("encoder.fine_projection.", "decoder.refine.")


def add_refinement(model: RVOS) -> RVOS:
    """The same model with the stride-2 refinement head added, every trained weight kept.

    The head's last convolution starts at zero, so the new model's logits equal the old one's until it trains.
    """
    new = RVOS(replace(model.config, refine=True))
    result = new.load_state_dict(model.state_dict(), strict=False)
    stray = [k for k in result.missing_keys if not k.startswith(REFINEMENT_KEYS)]
    assert not stray and not result.unexpected_keys, (stray, result.unexpected_keys)
    return new.to(next(model.parameters()).device).train(model.training)


def add_matching(model: RVOS) -> RVOS:
    """The same one-shot model with first-frame matching added, every trained weight kept.

    The convolutions that now also read the two matching maps keep their trained weights for their old inputs and
    start at zero for the maps (their last input channels), so the new model's logits equal the old one's until
    it trains. The embedding is new.
    """
    new = RVOS(replace(model.config, match=True))
    old = model.state_dict()
    state = new.state_dict()
    for key, value in state.items():
        if key.startswith("matcher."):
            continue
        have = old.pop(key)  # every old weight has a place in the new model
        if have.shape != value.shape:  # a convolution reading the maps too: (out, in + maps, k, k)
            assert have.shape[0] == value.shape[0] and have.shape[2:] == value.shape[2:], (key, have.shape)
            have = torch.cat([have, value[:, have.shape[1] :]], dim=1)  # the new model's own (zero) map weights
        state[key] = have
    assert not old, sorted(old)
    new.load_state_dict(state, strict=True)
    return new.to(next(model.parameters()).device).train(model.training)


def _param_groups(model: RVOS, cfg: TrainConfig) -> list[dict]:
    backbone = [p for n, p in model.named_parameters() if n.startswith(("encoder.stem", "encoder.stages"))]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr_encoder}]


def _split(cfg: TrainConfig) -> tuple[list[VOSVideo], list[VOSVideo]]:
    root = Path(cfg.data)
    has_sets = (root / "ImageSets" / "2017").is_dir()
    train = list_videos(root, cfg.train_split if has_sets and cfg.train_split else None)
    if has_sets and cfg.val_split and (root / "ImageSets" / "2017" / f"{cfg.val_split}.txt").is_file():
        val = list_videos(root, cfg.val_split)
    else:  # hold out every 8th video
        val = train[::8]
        train = [v for i, v in enumerate(train) if i % 8] or train
    return train, val[:8]


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) into ``cfg.out``; returns the final metrics."""
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_videos, val_videos = _split(cfg)
    last = out / "last.pt"
    start, best = 0, -1.0
    if last.exists():  # resume an interrupted training
        model, _, extra = load_checkpoint(last, map_location=device)
        if extra.get("train_config", {}).get("mode") != cfg.mode:
            raise RvosBatchError(f"{last} is a {extra.get('train_config', {}).get('mode')} run; use another OUT")
        cfg = resolve_model_fields(cfg, model.config, f"the run being resumed ({last})")
        model.train()
        opt = torch.optim.Adam(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
        opt.load_state_dict(extra["optimizer"])
        start, best = int(extra["step"]), float(extra["best"])
        log.info("resuming %s at step %d (best val %.4f)", out, start, best)
    else:
        model = build_model(cfg, device)
        cfg = resolve_model_fields(cfg, model.config, f"--init {cfg.init}" if cfg.init else "the new model")
        model.train()
        opt = torch.optim.Adam(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    # the model's own size and slots (cfg's are resolved to the same values above)
    data = ClipDataset(train_videos, model.config.input_size, cfg.clip_len, model.config.num_slots, augment=True,
                       length=cfg.iters * cfg.batch_size, seed=cfg.seed, colour=cfg.color_aug)
    log_path = out / "log.csv"
    new_log = not log_path.exists()
    t0 = time.perf_counter()
    val = float("nan")
    with open(log_path, "a", newline="") as f:
        writer = csv.writer(f)
        if new_log:
            writer.writerow(["step", "loss", "val_soft_iou", "seconds"])
        bar = tqdm(range(start, cfg.iters), initial=start, total=cfg.iters, desc=f"train {cfg.mode}",
                   disable=not progress, dynamic_ncols=True)
        running = None
        base_lrs = [g["lr"] for g in _param_groups(model, cfg)]
        batches = iter(clip_batches(data, cfg.batch_size, start, cfg.iters, cfg.workers, pin=device.type == "cuda"))
        for step in bar:
            for group, base in zip(opt.param_groups, base_lrs, strict=True):
                group["lr"] = base * lr_factor(cfg.lr_schedule, step, cfg.iters)
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            loss = clip_loss(model, batch, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RvosBatchError(f"loss became {value} at step {step}; lower --lr")
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.4f}", val=f"{val:.3f}")
            done = step + 1
            is_val = done % cfg.val_every == 0 or done == cfg.iters
            if done % cfg.log_every == 0 or is_val:
                if is_val:
                    val = validate(model, val_videos, cfg, device)
                    if val > best:
                        best = val
                        save_checkpoint(out / "best.pt", model, model.config,
                                        {"step": done, "val_soft_iou": val, "train_config": _plain(cfg)})
                    save_checkpoint(last, model, model.config, {
                        "step": done, "best": best, "optimizer": opt.state_dict(), "train_config": _plain(cfg)})
                writer.writerow([done, f"{running:.5f}", f"{val:.5f}" if is_val else "",
                                 f"{time.perf_counter() - t0:.1f}"])
                f.flush()
    return {"step": cfg.iters, "best_val_soft_iou": best, "seconds": time.perf_counter() - t0}


def clip_batches(data: ClipDataset, batch_size: int, start: int, stop: int, workers: int = 0,
                 pin: bool = False) -> Iterable[dict[str, Tensor]]:
    """The batches of steps ``start``..``stop - 1``: step s stacks clips ``s * batch_size`` .. ``+ batch_size - 1``.

    A clip is a function of its index (``ClipDataset`` seeds each one), so the batches are the same for any number
    of ``workers`` (worker processes that decode and augment ahead of the training step, as a GPU needs), up to
    float rounding (a worker computes with one thread), and a resumed run continues on the same batches. Each
    worker keeps its own decoded copy of the videos it reads. ``pin``: page-locked memory, for copies to a GPU.
    """
    if workers == 0:
        def steps() -> Iterator[dict[str, Tensor]]:
            for step in range(start, stop):
                items = [data[step * batch_size + i] for i in range(batch_size)]
                yield {k: torch.stack([it[k] for it in items]) for k in items[0]}
        return steps()
    indices = list(range(start * batch_size, stop * batch_size))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=indices, num_workers=workers,
                                       pin_memory=pin, prefetch_factor=4)


def _plain(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["input_size"] = list(cfg.input_size) if cfg.input_size is not None else None
    return d
