"""Deterministic shard planning: whole videos only, in corpus listing order, so every rerun plans the same shards."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from rvos_batch.corpus import VideoEntry
from rvos_batch.job.config import digest


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work and of commit: consecutive whole videos of the corpus listing."""

    shard_id: int
    videos: tuple[VideoEntry, ...]

    @property
    def num_frames(self) -> int:
        return sum(v.num_frames for v in self.videos)

    @property
    def name(self) -> str:
        return f"shard-{self.shard_id:05d}"


def corpus_fingerprint(entries: Sequence[VideoEntry]) -> str:
    """A digest of the corpus listing (file names, video ids, frame counts, in order)."""
    return digest([(posixpath.basename(e.file), e.video_id, e.num_frames) for e in entries])


def plan_shards(entries: Sequence[VideoEntry], videos_per_shard: int) -> list[ShardSpec]:
    """Split the listing into shards of at most ``videos_per_shard`` whole videos, never splitting a video.

    The listing order (files sorted by name, videos in file order) is the only input, so the same corpus
    and ``videos_per_shard`` always give the same shard ids.
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    return [
        ShardSpec(shard_id=i, videos=tuple(entries[start : start + videos_per_shard]))
        for i, start in enumerate(range(0, len(entries), videos_per_shard))
    ]


def plan_summary(shards: Sequence[ShardSpec]) -> list[dict]:
    """The plan as written to OUT/plan.json: per shard its id, video ids and frame count."""
    return [{"shard_id": s.shard_id, "videos": [v.video_id for v in s.videos], "frames": s.num_frames} for s in shards]
