"""Train RVOS on a DAVIS or YouTube-VOS layout folder (soft IoU, clip BPTT, Hungarian matching, ST+ stages).

Writes OUT/best.pt (best validation soft IoU), OUT/last.pt (resumable) and OUT/log.csv. Rerunning the same
command resumes an interrupted training. One-shot ST+: train --stage 1, then --stage 2 --init OUT1/best.pt.
"""

from __future__ import annotations

import argparse
import json

from rvos_batch.cli import size_arg
from rvos_batch.model.config import BACKBONES, RECURRENCES


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="a DAVIS-2017 or YouTube-VOS split folder")
    p.add_argument("out", metavar="OUT", help="folder for checkpoints and log.csv")
    p.add_argument("--mode", choices=("zero-shot", "one-shot"), default="zero-shot")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1,
                   help="one-shot: 1 feeds ground-truth previous masks, 2 the model's own (ST+)")
    shape = " (default: the --init model's, else %s)"
    p.add_argument("--backbone", choices=BACKBONES, help="backbone" + shape % "mobilenet_v2")
    p.add_argument("--backbone-weights", default="auto", metavar="PATH",
                   help="torchvision ImageNet checkpoint for the backbone ('auto': the offline mobilenet_v2 "
                        "checkpoint when installed; 'none': from scratch)")
    p.add_argument("--init", default=None, metavar="CKPT", help="start from an rvos checkpoint (stage 2)")
    p.add_argument("--recurrence", choices=RECURRENCES, help="S, T or ST" + shape % "ST")
    p.add_argument("--refine", action="store_true",
                   help="add the stride-2 refinement head (not in the paper); with --init, on top of that model")
    p.add_argument("--match", action="store_true",
                   help="one-shot: add first-frame matching (not in the paper); with --init, on top of that model")
    p.add_argument("--hidden", type=int, help="decoder width" + shape % "128")
    p.add_argument("--slots", type=int, help="object slots" + shape % "10")
    p.add_argument("--input-size", type=size_arg, metavar="HxW",
                   help="training size" + shape % "256x448" + "; with --init, another size re-sizes that model")
    p.add_argument("--clip-len", type=int, default=5)
    p.add_argument("--color-aug", action="store_true",
                   help="also recolour each clip (channel order, saturation, contrast, inversion; not in the paper)")
    p.add_argument("--appearance-check", action="store_true",
                   help="one-shot --stage 2: refine the fed-back masks by the appearance check between frames, as "
                        "labeling does, with the frames as they are (labeling's --appearance-levels is not used: the "
                        "shipped model was trained without it; not in the paper; see rvos_batch.appearance)")
    p.add_argument("--appearance-filter", type=int, default=0, metavar="R",
                   help="with --appearance-check: also smooth the fed-back masks with the guided filter of radius R, "
                        "as one-shot labeling does (its default is 4; here the default 0 is how the shipped model "
                        "was trained)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--iters", type=int, default=10_000)
    p.add_argument("--lr", type=float, default=1e-3, help="decoder and projections")
    p.add_argument("--lr-encoder", type=float, default=1e-6, help="backbone")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant (the paper) or cosine decay to 0 at --iters")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-split", default="val")
    p.add_argument("--train-split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--workers", type=int, default=0,
                   help="clip-loading worker processes, so a GPU is not kept waiting on JPEG decoding and "
                        "augmentation; each keeps its own decoded copy of the videos it reads (0: load in the training "
                        "process; the clips are the same either way)")


def run(args: argparse.Namespace) -> int:
    from rvos_batch.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, mode=args.mode, stage=args.stage, backbone=args.backbone,
        backbone_weights=None if args.backbone_weights == "none" else args.backbone_weights, init=args.init,
        recurrence=args.recurrence, refine=args.refine, match=args.match, hidden=args.hidden, num_slots=args.slots,
        input_size=args.input_size,
        clip_len=args.clip_len, color_aug=args.color_aug, appearance_check=args.appearance_check,
        appearance_filter=args.appearance_filter,
        batch_size=args.batch_size, iters=args.iters, lr=args.lr,
        lr_encoder=args.lr_encoder, lr_schedule=args.lr_schedule, val_every=args.val_every, val_split=args.val_split,
        train_split=args.train_split, seed=args.seed, threads=args.threads, workers=args.workers,
    )
    print(json.dumps(train(cfg)))
    return 0
