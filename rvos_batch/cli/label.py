"""Label a corpus with RVOS on Ray: sharded, whole videos with recurrent state, resumable, exactly once.

With no arguments it labels the sample corpus shipped in the package with the shipped model on a local Ray
instance and writes ./rvos-output. Rerunning the same command after any interruption finishes only what
is missing. Exits 0 when every shard is committed, 1 when some shard failed every retry (rerun to retry).
"""

from __future__ import annotations

import argparse
import json
import sys

from rvos_batch.cli import size_arg
from rvos_batch.job.config import AMP_CHOICES, AUTO_TRACKER, COMPILE_CHOICES, MODES, LabelConfig
from rvos_batch.storage import parse_storage_options, redact
from rvos_batch.zoo import SAMPLE_CORPUS


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", nargs="?", default=None, metavar="CORPUS",
                   help="corpus folder or s3:// prefix holding frames/ (default: the shipped sample corpus)")
    p.add_argument("out", nargs="?", default="rvos-output", metavar="OUT",
                   help="output folder or s3:// prefix (default: ./rvos-output)")
    p.add_argument("--mode", choices=MODES, default="zero-shot",
                   help="zero-shot: the model finds the objects; one-shot: follow the given first-frame masks")
    p.add_argument("--prompts", default=None, metavar="URL",
                   help="one-shot masks (a mask dataset); default CORPUS/prompts")
    p.add_argument("--model", default="default", metavar="NAME_OR_PATH",
                   help="a shipped model name or a checkpoint path/URL (default: the shipped model)")
    p.add_argument("--input-size", type=size_arg, default=None, metavar="HxW",
                   help="run the model at this frame size instead of the one it was trained for (its weights do "
                        "not depend on it): larger is slower and can be more accurate; masks are still written at "
                        "each video's own resolution (default: the model's size)")
    p.add_argument("--tracker", default=AUTO_TRACKER, metavar="NAME_OR_PATH",
                   help="zero-shot: a one-shot model ('default': the shipped one) that follows each object the "
                        "zero-shot model finds, from the frame it is found on; its masks are the output. 'auto' "
                        "(default): the shipped one-shot model with the shipped zero-shot model, none with your own "
                        "model; 'none': the zero-shot model alone (about 5x faster on a CPU, poorer masks; see the "
                        "model card)")
    p.add_argument("--no-appearance-check", action="store_true",
                   help="report every mask the model makes; by default a followed object's mask is left out of a "
                        "frame while its colours match the object's surroundings better than the object (it has "
                        "left or is covered; see the model card)")
    p.add_argument("--appearance-refine", type=float, default=2.0, metavar="K",
                   help="the appearance check also trims a kept mask's pixels whose colour is K times likelier in "
                        "its surroundings than in its object, and adds the surroundings' pixels K times likelier in "
                        "the object (default 2; 0: no trimming or growing). Larger is more cautious: 3 or more suits "
                        "objects whose colours are close to their background's (see the model card)")
    p.add_argument("--appearance-filter", type=int, default=4, metavar="R",
                   help="one-shot: after the appearance check, smooth each followed mask with a colour-guided "
                        "filter of radius R pixels at the model's input size, so its edges follow the frame's "
                        "colour edges; the filtered mask is also fed back (default 4; 0: no filter). Not used in "
                        "zero-shot runs (see the model card)")
    p.add_argument("--appearance-levels", type=float, default=0.6, metavar="R",
                   help="one-shot: the appearance check and its filter (not the model) see a video whose levels "
                        "(0.5%% and 99.5%% quantiles) span less than R of the value range stretched up to R, so "
                        "dark or washed-out objects stand out from their surroundings again; videos that span R "
                        "are checked as they are (default 0.6; 0: off; see the model card)")
    p.add_argument("--auto-levels", type=float, default=0.0, metavar="R",
                   help="for dark, washed-out or low-contrast footage: stretch a video's frames about their middle "
                        "until their levels (0.5%% and 99.5%% quantiles) span R of the value range, as the training "
                        "frames' do; videos that already span R are left as they are. 0.6 suits the shipped models "
                        "(default 0: off; see the model card)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="join an existing Ray cluster ('auto' or ray://host:10001); default: start a local Ray")
    p.add_argument("--num-actors", type=int, default=None, metavar="N",
                   help="model actors (default: one per GPU; on CPU as many as the CPUs allow)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="G",
                   help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per actor (default 1)")
    p.add_argument("--videos-per-shard", type=int, default=16, metavar="N",
                   help="whole videos per shard, the unit of retry and commit (default 16)")
    p.add_argument("--batch-videos", type=int, default=4, metavar="B",
                   help="videos stepped together through the model, each with its own state (default 4)")
    p.add_argument("--decode-threads", type=int, default=2, metavar="T", help="JPEG/PNG decode threads per actor")
    p.add_argument("--max-shard-attempts", type=int, default=3, metavar="K",
                   help="attempts per shard before it is recorded failed (default 3)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an OUT written with another configuration or model and start again")
    p.add_argument("--storage-options", default=None, metavar="JSON|@FILE",
                   help="fsspec/s3fs options as JSON, e.g. '{\"endpoint_url\": \"http://127.0.0.1:9000\"}', or "
                        "@FILE naming a JSON file (keep keys there, not on the command line)")
    p.add_argument("--compile", default=None, choices=COMPILE_CHOICES, metavar="MODE",
                   help="torch.compile the model on GPU actors: " + ", ".join(COMPILE_CHOICES)
                   + " (reduce-overhead = CUDA graphs); ignored on CPU")
    p.add_argument("--amp", default=None, choices=AMP_CHOICES,
                   help="model precision (default: bfloat16 autocast on GPU, float32 on CPU)")
    p.add_argument("--gpu-decode", action="store_true",
                   help="decode JPEG frames with nvJPEG on the actor's GPU (default: PIL on --decode-threads)")
    p.add_argument("--no-preview", action="store_true", help="do not draw OUT/preview.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def config_from_args(args: argparse.Namespace) -> LabelConfig:
    corpus = args.corpus or str(SAMPLE_CORPUS)
    return LabelConfig(
        corpus=corpus, out=args.out, mode=args.mode, prompts=args.prompts, model=args.model,
        input_size=args.input_size, tracker=args.tracker, appearance_check=not args.no_appearance_check,
        appearance_refine=args.appearance_refine, appearance_filter=args.appearance_filter,
        appearance_levels=args.appearance_levels,
        auto_levels=args.auto_levels, videos_per_shard=args.videos_per_shard, num_actors=args.num_actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor, batch_videos=args.batch_videos, decode_threads=args.decode_threads,
        max_shard_attempts=args.max_shard_attempts, address=args.address, overwrite=args.overwrite,
        compile=args.compile, amp=args.amp, gpu_decode=args.gpu_decode,
        storage_options=parse_storage_options(args.storage_options),
    )


def run(args: argparse.Namespace) -> int:
    from rvos_batch.job.driver import run_job

    config = config_from_args(args)
    tracker = f", tracker {config.tracker}" if config.tracker else ""
    print(f"labeling {config.corpus} -> {config.out} ({config.mode}, model {config.model}{tracker})", file=sys.stderr)
    summary = run_job(config, progress=not args.no_progress)
    preview = None
    if not args.no_preview and summary.videos_ok:
        preview = _preview(config)
    if args.json:
        print(json.dumps({
            "shards_total": summary.shards_total, "shards_done": summary.shards_total - len(summary.shards_failed),
            "shards_failed": len(summary.shards_failed), "videos_ok": summary.videos_ok,
            "videos_failed": summary.videos_failed, "frames": summary.frames, "masks": summary.masks,
            "seconds": round(summary.seconds, 3), "preview": preview,
        }))
    else:
        _print_summary(config, summary, preview)
    return 0 if summary.ok else 1


def _preview(config: LabelConfig) -> str | None:
    try:
        from rvos_batch.maskstore import MaskStore
        from rvos_batch.show import contact_sheet
        from rvos_batch.storage import join

        store = MaskStore(config.out, storage_options=config.storage_options)
        videos = store.videos_dataset().to_table(columns=["video_id", "status", "num_objects"]).to_pylist()
        ok = [v["video_id"] for v in videos if v["status"] == "ok" and v["num_objects"] > 0]
        if not ok:
            return None
        dest = join(config.out, "preview.png")
        contact_sheet(config.out, sorted(ok)[0], dest, corpus=config.corpus, storage_options=config.storage_options)
        return dest
    except Exception as e:  # a preview is a convenience: never fail a finished run for it
        print(f"(no preview: {e})", file=sys.stderr)
        return None


def _print_summary(config: LabelConfig, s, preview: str | None) -> None:
    fps = s.frames / s.seconds if s.seconds else 0.0
    print(f"\nshards: {s.shards_total - len(s.shards_failed)}/{s.shards_total} committed "
          f"({s.shards_skipped} already done, {s.shards_done} this run, {len(s.shards_failed)} failed)")
    print(f"videos: {s.videos_ok} ok, {s.videos_failed} failed; frames: {s.frames}; masks: {s.masks}; "
          f"{s.seconds:.1f} s ({fps:.1f} frames/s over the whole run)")
    for vid, err in s.failed_videos[:10]:
        print(f"  failed video {vid!r}: {err}")
    for sid, err in sorted(s.shard_errors.items())[:10]:
        print(f"  failed shard {sid}: {err}")
    print(f"masks:   {config.out}/masks   (pyarrow.dataset.dataset(...); see README 'Querying the output')")
    print(f"videos:  {config.out}/videos  status: rvos-batch status {config.out}")
    if preview:
        print(f"preview: {preview}")
    if not s.ok:
        print(f"\n{len(s.shards_failed)} shard(s) failed every attempt; rerun the same command to retry them.")
    _ = redact  # storage options are never printed
