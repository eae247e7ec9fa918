"""Ray at the edge: plan shards, skip committed ones, run the rest on a pool of model actors, summarise.

Why Ray Core actors and not Ray Data: the unit of work, of retry and of commit is a shard of whole videos
whose frames must go through one model in order with recurrent state. An actor per model, a generator method
per shard that commits its own output and streams progress, and a driver loop with bounded per-shard retries
give exactly-once output with a few dozen lines; Ray Data would need a blocking shuffle to rebuild videos,
writes files under per-run UUIDs, and its checkpointing is at-least-once and beta.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from rvos_batch import __version__
from rvos_batch.corpus import CorpusReader
from rvos_batch.discover import DiscoveryConfig
from rvos_batch.errors import MaskStoreError, RvosBatchError
from rvos_batch.job.config import LabelConfig, output_fingerprint
from rvos_batch.job.plan import ShardSpec, corpus_fingerprint, plan_shards, plan_summary
from rvos_batch.maskstore import MaskStore
from rvos_batch.model.checkpoint import file_sha256, load_checkpoint
from rvos_batch.storage import redact
from rvos_batch.zoo import resolve_model

log = logging.getLogger(__name__)

ACTOR_START_TIMEOUT_S = float(os.environ.get("RVOS_ACTOR_START_TIMEOUT_S", "600"))


@dataclass
class JobSummary:
    shards_total: int
    shards_skipped: int  # already committed before this run
    shards_done: int  # committed by this run
    shards_failed: list[int] = field(default_factory=list)
    videos_ok: int = 0
    videos_failed: int = 0
    frames: int = 0
    masks: int = 0
    seconds: float = 0.0
    failed_videos: list[tuple[str, str]] = field(default_factory=list)
    shard_errors: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.shards_failed


class LabelActor:
    """A Ray actor holding one model; ``process`` streams progress for one shard, then its result."""

    def __init__(self, config: LabelConfig) -> None:
        import threading

        import torch

        from rvos_batch.job.worker import ShardWorker

        torch.set_num_threads(max(1, int(config.cpus_per_actor)))
        self._threading = threading
        self.worker = ShardWorker(config)

    def ready(self) -> int:
        return os.getpid()

    def process(self, spec: ShardSpec):  # a streaming generator: {"frames": n} ..., then {"result": ShardResult}
        import queue

        q: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = self.worker.process_shard(spec, progress=q.put)
            except BaseException as e:
                outcome["error"] = e
            finally:
                q.put(None)

        thread = self._threading.Thread(target=work, daemon=True)
        thread.start()
        pending = 0
        last = time.monotonic()
        while True:
            try:
                n = q.get(timeout=0.5)
            except queue.Empty:
                n = 0
            if n is None:
                break
            pending += n
            if pending and time.monotonic() - last > 0.5:
                yield {"frames": pending}
                pending, last = 0, time.monotonic()
        thread.join()
        if pending:
            yield {"frames": pending}
        if "error" in outcome:
            raise outcome["error"]
        yield {"result": outcome["result"]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _code_version() -> str:
    try:
        import subprocess

        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(__file__)).stdout.strip()
    except Exception:
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def prepare_output(store: MaskStore, config: LabelConfig, fingerprint: dict, shards: list[ShardSpec],
                   model_info: dict) -> dict:
    """Check OUT against this run's fingerprint (refuse a mix unless overwrite), then record run.json."""
    run = store.read_run()
    if run is not None and run.get("fingerprint") != fingerprint:
        if not config.overwrite:
            old = run.get("fingerprint", {})
            changed = [k for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
            diffs = [f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed]
            hint = ""
            if (old.get("tracker_sha256") is None and fingerprint.get("tracker_sha256") is not None
                    and set(changed) <= {"tracker_sha256", "discovery"}):  # the tracker is all that differs
                hint = (" It was labeled without a tracker (zero-shot runs of the shipped model take one by default "
                        "since --tracker auto): rerun with --tracker none to finish it.")
            raise MaskStoreError(
                f"{config.out} holds the output of a different configuration or model ({'; '.join(diffs)}). "
                f"Use another OUT, or rerun with --overwrite to delete it and start again.{hint}"
            )
        log.warning("--overwrite: deleting the earlier run in %s", config.out)
        store.clear()
        run = None
    elif run is not None and config.overwrite:
        store.clear()
        run = None
    runs = list(run.get("runs", [])) if run else []
    runs.append({"started": _now(), "finished": None, "code_version": _code_version()})
    record = {
        "corpus": config.corpus,
        "out": config.out,
        "config": config.public_dict(),
        "storage_options": redact(config.storage_options),
        "model": model_info,
        "fingerprint": fingerprint,
        "code_version": _code_version(),
        "shards_total": len(shards),
        "videos_total": sum(len(s.videos) for s in shards),
        "frames_total": sum(s.num_frames for s in shards),
        "created": run.get("created") if run else _now(),
        "runs": runs,
    }
    store.write_plan(plan_summary(shards))
    store.write_run(record)
    return record


def check_prompts(config: LabelConfig, video_ids: list[str]) -> dict[str, list[str]]:
    """One-shot: which prompted videos are not in the corpus, and which corpus videos have no prompt (warned)."""
    if config.prompts_url is None:
        return {}
    import pyarrow.compute as pc

    from rvos_batch.maskstore import mask_dataset

    prompted = set(pc.unique(mask_dataset(config.prompts_url, config.storage_options)
                             .to_table(columns=["video_id"]).column("video_id")).to_pylist())
    corpus = set(video_ids)
    missing = sorted(prompted - corpus)
    unprompted = sorted(corpus - prompted)
    if missing:
        log.warning("prompts name %d video(s) that are not in the corpus (ignored): %s", len(missing), missing[:10])
    if unprompted:
        log.warning("%d corpus video(s) have no prompt and will get no masks in one-shot mode: %s",
                    len(unprompted), unprompted[:10])
    return {"prompts_without_frames": missing, "videos_without_prompts": unprompted}


def _init_ray(config: LabelConfig) -> None:
    if ray.is_initialized():
        return
    if config.address:
        ray.init(address=config.address, log_to_driver=True)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)  # inside `ray job submit`: join that cluster
    else:
        ray.init(include_dashboard=False, log_to_driver=True)


def _actor_count(config: LabelConfig, gpus_per_actor: float, n_shards: int) -> int:
    if config.num_actors:
        return min(config.num_actors, max(1, n_shards))
    res = ray.cluster_resources()
    if gpus_per_actor > 0:
        n = int(res.get("GPU", 0) // gpus_per_actor)
    else:
        # leave nothing idle, but never ask for more CPUs than exist (actors would wait forever)
        n = int(res.get("CPU", 1) // max(config.cpus_per_actor, 1e-3))
    return max(1, min(n, n_shards))


def run_job(config: LabelConfig, progress: bool = True) -> JobSummary:
    """Label ``config.corpus`` into ``config.out``; returns the summary (``ok`` False if any shard failed)."""
    t0 = time.perf_counter()
    store = MaskStore(config.out, storage_options=config.storage_options)
    reader = CorpusReader(config.corpus, storage_options=config.storage_options)
    entries = reader.list_videos()
    shards = plan_shards(entries, config.videos_per_shard)
    model_path = resolve_model(config.model, config.mode)
    model_sha = file_sha256(model_path)
    _, model_config, _ = load_checkpoint(model_path)  # fail here, not in every actor, on a bad or wrong model
    if model_config.mode != config.mode:
        raise RvosBatchError(f"model {config.model!r} is a {model_config.mode} model; this run is --mode {config.mode}")
    tracker_sha, tracker_info, discovery = None, None, None
    if config.tracker is not None:
        tracker_path = resolve_model(config.tracker, "one-shot")
        tracker_sha = file_sha256(tracker_path)
        _, tracker_config, _ = load_checkpoint(tracker_path)
        if tracker_config.mode != "one-shot":
            raise RvosBatchError(
                f"--tracker {config.tracker!r} is a {tracker_config.mode} model; a tracker is one-shot"
            )
        discovery = dataclasses.asdict(DiscoveryConfig())  # the rule the actors' sessions use
        tracker_info = {"name": config.tracker, "path": tracker_path, "sha256": tracker_sha,
                        "config": tracker_config.to_dict(), "discovery": discovery}
    check = config.appearance_config()  # the actors' appearance check, None when off
    appearance = check.record() if check is not None else None
    stretch = config.levels_config()  # the actors' auto-levels, None when off
    levels = dataclasses.asdict(stretch) if stretch is not None else None
    fingerprint = output_fingerprint(config, model_sha, corpus_fingerprint(entries), model_config.input_size,
                                     tracker_sha, discovery, appearance, levels)
    if config.input_size is not None:
        model_config = dataclasses.replace(model_config, input_size=config.input_size)  # the size it labels at
    model_info: dict[str, Any] = {"name": config.model, "path": model_path, "sha256": model_sha,
                                  "config": model_config.to_dict()}
    if tracker_info is not None:
        model_info["tracker"] = tracker_info
    model_info["appearance"] = appearance  # None: every mask the model makes is written
    model_info["levels"] = levels  # None: frames as decoded (--auto-levels 0, the default)
    prompt_check = check_prompts(config, [e.video_id for e in entries])
    with store.lock():
        record = prepare_output(store, config, fingerprint, shards, model_info)
        record.update(prompt_check)
        store.write_run(record)
        store.cleanup_tmp()
        committed = store.committed_shard_ids()  # names only: a rerun of a huge job lists, it does not GET
        todo = [s for s in shards if s.shard_id not in committed]
        summary = JobSummary(len(shards), len(shards) - len(todo), 0)
        if todo:
            # actors load the model themselves, maybe on other nodes: pin the bytes this driver digested
            pinned = dataclasses.replace(config, model_sha256=model_sha, tracker_sha256=tracker_sha)
            _run_shards(pinned, todo, summary, progress)
        _totals(store, summary)
        record["runs"][-1]["finished"] = _now()
        record["runs"][-1]["shards_done"] = summary.shards_done
        record["runs"][-1]["shards_failed"] = summary.shards_failed
        store.write_run(record)
    summary.seconds = time.perf_counter() - t0
    return summary


def _totals(store: MaskStore, summary: JobSummary) -> None:
    for marker in store.committed_shards().values():
        stats = marker.get("stats", {})
        summary.videos_ok += int(stats.get("videos_ok", 0))
        summary.videos_failed += int(stats.get("videos_failed", 0))
        summary.frames += int(stats.get("frames", 0))
        summary.masks += int(stats.get("masks", 0))


def _run_shards(config: LabelConfig, todo: list[ShardSpec], summary: JobSummary, progress: bool) -> None:
    from tqdm import tqdm

    _init_ray(config)
    gpus = config.gpus_per_actor
    if gpus == 0 and ray.cluster_resources().get("GPU", 0) > 0 and config.num_actors is None:
        gpus = 1.0  # a GPU cluster and no explicit request: one GPU per actor
    n_actors = _actor_count(config, gpus, len(todo))
    actor_cls: Any = ray.remote(LabelActor).options(  # Ray's handle types are too dynamic for mypy
        num_cpus=config.cpus_per_actor, num_gpus=gpus, max_restarts=-1, max_task_retries=0
    )
    actors: list[Any] = [actor_cls.remote(config) for _ in range(n_actors)]
    starting = {a.ready.remote(): a for a in actors}
    idle: deque = deque()
    queue_: deque[ShardSpec] = deque(todo)
    attempts: dict[int, int] = {}
    in_flight: dict[Any, tuple[Any, ShardSpec]] = {}
    store = MaskStore(config.out, storage_options=config.storage_options)
    total_frames = sum(s.num_frames for s in todo)
    tty = sys.stderr.isatty()
    bar = tqdm(total=total_frames, unit="frame", desc="labeling", disable=not progress, dynamic_ncols=True,
               mininterval=0.5 if tty else 10.0, file=sys.stderr)
    start_deadline = time.monotonic() + ACTOR_START_TIMEOUT_S
    frames_by_shard: dict[int, int] = {}

    def fail_or_retry(actor: Any, spec: ShardSpec, error: str, actor_dead: bool) -> None:
        bar.update(-frames_by_shard.pop(spec.shard_id, 0))
        attempts[spec.shard_id] = attempts.get(spec.shard_id, 0) + 1
        if attempts[spec.shard_id] >= config.max_shard_attempts:
            log.error("shard %d failed %d times, giving up: %s", spec.shard_id, attempts[spec.shard_id], error)
            summary.shards_failed.append(spec.shard_id)
            summary.shard_errors[spec.shard_id] = error
            try:
                store.record_failed_shard(spec.shard_id, error, attempts[spec.shard_id])
            except Exception as e:  # storage down: the summary still reports the shard; a rerun retries it
                log.error("shard %d: could not record its failure in OUT/_failed: %s: %s", spec.shard_id,
                          type(e).__name__, e)
        else:
            log.warning("shard %d attempt %d failed (%s); retrying", spec.shard_id, attempts[spec.shard_id], error)
            queue_.appendleft(spec)
        if actor_dead:
            starting[actor.ready.remote()] = actor  # restarts itself (max_restarts=-1); use it once it is back
        else:
            idle.append(actor)

    try:
        while queue_ or in_flight:
            # actors that finished starting become idle
            if starting:
                ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
                for ref in ready:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except RayActorError as e:
                        if _is_constructor_error(e):
                            raise RvosBatchError(f"a labeling actor failed to start: {_cause(e)}") from None
                        starting[actor.ready.remote()] = actor
                if not idle and not in_flight and time.monotonic() > start_deadline:
                    raise RvosBatchError(
                        f"no labeling actor started within {ACTOR_START_TIMEOUT_S:.0f} s: each asks for "
                        f"{config.cpus_per_actor} CPU and {gpus} GPU; the cluster has {ray.cluster_resources()}"
                    )
            while queue_ and idle:
                actor = idle.popleft()
                spec = queue_.popleft()
                gen = actor.process.options(num_returns="streaming").remote(spec)
                in_flight[gen] = (actor, spec)
            if not in_flight:
                time.sleep(0.1)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for gen in ready:
                actor, spec = in_flight[gen]
                try:
                    item: Any = ray.get(next(gen))  # type: ignore[call-overload, arg-type]
                except StopIteration:
                    del in_flight[gen]
                    fail_or_retry(actor, spec, "worker ended without a result", actor_dead=False)
                    continue
                except RayTaskError as e:  # the shard raised (storage, corpus file): the actor is fine
                    del in_flight[gen]
                    fail_or_retry(actor, spec, _cause(e), actor_dead=False)
                    continue
                except RayActorError as e:  # the actor process died mid-shard
                    del in_flight[gen]
                    fail_or_retry(actor, spec, f"actor died: {_cause(e)}", actor_dead=True)
                    continue
                if "frames" in item:
                    frames_by_shard[spec.shard_id] = frames_by_shard.get(spec.shard_id, 0) + item["frames"]
                    bar.update(item["frames"])
                else:
                    result = item["result"]
                    del in_flight[gen]
                    frames_by_shard.pop(spec.shard_id, None)
                    summary.shards_done += 1
                    summary.failed_videos.extend(result.failed)
                    idle.append(actor)
                    bar.set_postfix(shards=f"{summary.shards_done}/{len(todo)}", refresh=False)
    except GetTimeoutError:  # pragma: no cover - ray.wait has no timeout error, kept for clarity
        raise
    finally:
        bar.close()
        for a in actors:
            ray.kill(a, no_restart=True)


def _is_constructor_error(e: RayActorError) -> bool:
    text = str(e)
    return "__init__" in text and ("error raised in the constructor" in text.lower() or "ActorDiedError" in text)


def _cause(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, RayTaskError):
        return f"{type(cause).__name__}: {cause}"
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(e).__name__
