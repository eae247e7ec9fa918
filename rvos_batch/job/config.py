"""The labeling job's frozen configuration and the fingerprint of everything that changes its outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rvos_batch.errors import RvosBatchError
from rvos_batch.model.config import MIN_INPUT_SIDE, is_input_size, is_int_in
from rvos_batch.zoo import is_shipped_default

if TYPE_CHECKING:
    from rvos_batch.appearance import AppearanceConfig
    from rvos_batch.levels import LevelsConfig

MODES = ("zero-shot", "one-shot")
# --tracker auto (the default): the shipped one-shot model follows what the shipped zero-shot model finds, since that
# pair is the shipped zero-shot labeling (J&F 0.554 held-out against 0.398 alone; see the model card). A user's own
# zero-shot model runs alone unless a tracker is named. "none" turns the tracker off.
AUTO_TRACKER, NO_TRACKER = "auto", "none"


AMP_CHOICES = ("float32", "bfloat16", "float16")
COMPILE_CHOICES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_tracker(tracker: str | None, mode: str, model: str) -> str | None:
    """The tracker a run uses: ``auto`` is the shipped one-shot model for a zero-shot run of the shipped zero-shot
    model (``default`` or its name) and no tracker otherwise; ``none``, ``""`` and None are no tracker; any other
    value (a shipped name, a path or URL) is kept as given."""
    if tracker == AUTO_TRACKER:
        return "default" if mode == "zero-shot" and is_shipped_default(model, mode) else None
    if tracker in (None, "", NO_TRACKER):
        return None
    return tracker


@dataclass(frozen=True)
class LabelConfig:
    """Everything a labeling run needs. Paths are local paths or s3:// URLs.

    Fields in ``OUTPUT_FIELDS`` change what is written; a rerun into the same OUT must agree on them.
    """

    corpus: str
    out: str
    mode: str = "zero-shot"
    prompts: str | None = None  # one-shot masks; default CORPUS/prompts
    model: str = "default"  # a shipped model name or a checkpoint path
    input_size: tuple[int, int] | None = None  # (height, width) to run the model at; None: the size it was saved with
    videos_per_shard: int = 16
    num_actors: int | None = None  # default: one per GPU, else 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    batch_videos: int = 4  # videos stepped together through the model, each with its own state
    decode_threads: int = 2
    prefetch_frames: int = 4
    threshold: float = 0.5
    min_area: int = 16
    max_shard_attempts: int = 3
    address: str | None = None
    overwrite: bool = False
    compile: str | None = None  # a torch.compile mode for the model on CUDA, e.g. "reduce-overhead" (CUDA graphs)
    amp: str | None = None  # None: the device's default (bfloat16 on CUDA, float32 on CPU); or float32/bfloat16/float16
    gpu_decode: bool = False  # decode JPEGs with nvJPEG on the actor's GPU instead of PIL on threads
    tracker: str | None = AUTO_TRACKER  # zero-shot: a one-shot model that follows what the model finds (discover.py);
    # "auto" resolves to "default" for the shipped zero-shot model and to None otherwise; "none" (or None): no tracker
    appearance_check: bool = True  # leave a followed mask out while it looks like its surroundings (appearance.py)
    appearance_refine: float = 2.0  # the check's colour ratio for trimming and growing kept masks; 0: no refinement
    appearance_filter: int = 4  # one-shot: radius of the colour-guided filter on followed masks; 0: none
    appearance_levels: float = 0.6  # one-shot: the check and the filter see low-contrast videos stretched; 0: off
    auto_levels: float = 0.0  # > 0: a video whose levels span less of the range is stretched up to it (levels.py)
    model_sha256: str | None = None  # set by the driver: every actor must load exactly the model it digested
    tracker_sha256: str | None = None  # the same for the tracker
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)  # secrets

    OUTPUT_FIELDS = ("mode", "prompts", "videos_per_shard", "threshold", "min_area")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RvosBatchError(f"--mode must be one of {MODES}, got {self.mode!r}")
        for name in ("videos_per_shard", "batch_videos", "decode_threads", "max_shard_attempts"):
            if getattr(self, name) < 1:
                raise RvosBatchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_actors is not None and self.num_actors < 1:
            raise RvosBatchError(f"--num-actors must be >= 1, got {self.num_actors}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0:
            raise RvosBatchError("--gpus-per-actor and --cpus-per-actor must be >= 0")
        if not 0.0 < self.threshold < 1.0:
            raise RvosBatchError(f"threshold must be in (0, 1), got {self.threshold}")
        if not isinstance(self.appearance_refine, (int, float)) or not (
                self.appearance_refine == 0 or self.appearance_refine >= 1):
            raise RvosBatchError(
                f"--appearance-refine must be 0 (no refinement) or a ratio >= 1, got {self.appearance_refine!r}"
            )
        if not is_int_in(self.appearance_filter, 0, 64):
            raise RvosBatchError(
                f"--appearance-filter must be an integer radius in 0..64 (0: no filter), got {self.appearance_filter!r}"
            )
        for name in ("appearance_levels", "auto_levels"):  # spans of the value range, 0: off
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise RvosBatchError(f"--{name.replace('_', '-')} must be a span of the value range in (0, 1] "
                                     f"(0: off), got {value!r}")
        if self.amp is not None and self.amp not in AMP_CHOICES:
            raise RvosBatchError(f"--amp must be one of {list(AMP_CHOICES)}, got {self.amp!r}")
        if self.compile is not None and self.compile not in COMPILE_CHOICES:
            raise RvosBatchError(f"--compile must be one of {list(COMPILE_CHOICES)}, got {self.compile!r}")
        if self.input_size is not None:
            size = self.input_size
            if not is_input_size(size):
                raise RvosBatchError(
                    f"--input-size must be HEIGHTxWIDTH with both sides integers >= {MIN_INPUT_SIDE}, got {size!r}"
                )
            object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "tracker", resolve_tracker(self.tracker, self.mode, self.model))
        if self.prompts and self.mode != "one-shot":
            raise RvosBatchError("--prompts is only used with --mode one-shot")
        if self.tracker is not None and self.mode != "zero-shot":
            raise RvosBatchError(
                "--tracker (a one-shot model that follows the objects the zero-shot model finds) is for "
                "--mode zero-shot"
            )

    @property
    def prompts_url(self) -> str | None:
        if self.mode != "one-shot":
            return None
        from rvos_batch.storage import join

        return self.prompts or join(self.corpus, "prompts")

    def appearance_config(self) -> AppearanceConfig | None:
        """The actors' :class:`~rvos_batch.appearance.AppearanceConfig`, or None with ``--no-appearance-check``.
        The guided filter (``--appearance-filter``) and the check's levels (``--appearance-levels``) are for one-shot
        labeling: a zero-shot run, with or without a tracker, records ``filter`` 0 and no ``levels``, since they are
        not applied there."""
        if not self.appearance_check:
            return None
        from rvos_batch.appearance import AppearanceConfig  # torch: not needed to parse a command line

        one_shot = self.mode == "one-shot"
        return AppearanceConfig(refine=float(self.appearance_refine) if self.appearance_refine else None,
                                filter=self.appearance_filter if one_shot else 0,
                                levels=float(self.appearance_levels) if one_shot and self.appearance_levels else None)

    def levels_config(self) -> LevelsConfig | None:
        """The actors' :class:`~rvos_batch.levels.LevelsConfig`, or None with ``--auto-levels 0`` (the default)."""
        if not self.auto_levels:
            return None
        from rvos_batch.levels import LevelsConfig  # torch: not needed to parse a command line

        return LevelsConfig(range=float(self.auto_levels))

    def public_dict(self) -> dict[str, Any]:
        """The config as recorded in run.json: storage options are never recorded (they may hold keys)."""
        d = dataclasses.asdict(self)
        d.pop("storage_options", None)
        return d


# What a one-shot run reports at a frame where an object's mask is given: since this rule, the given mask itself
# (PredictConfig.given_is_output); before it, the model's reading. A tracker's hand-overs are still read.
GIVEN_MASKS = "output"


def output_fingerprint(
    config: LabelConfig, model_sha256: str, corpus_fingerprint: str, model_input_size: tuple[int, int],
    tracker_sha256: str | None = None, discovery: dict[str, Any] | None = None,
    appearance: dict[str, Any] | None = None, levels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What must match between runs writing into one OUT: output-affecting config, model, corpus.

    ``model_input_size`` is the size the model was saved with. A run at another ``--input-size`` labels differently,
    so that size joins the fingerprint; a run at the model's own size (given or not) keeps the plain fingerprint,
    the one runs made before ``--input-size`` existed. Likewise the tracker's digest, and the hand-over rule's
    settings (``discovery``, a DiscoveryConfig as a dict), join it only for a run with a ``--tracker``, and the
    appearance check's settings (``appearance``, an AppearanceConfig as a dict) only for a run with the check on
    (:meth:`LabelConfig.appearance_config`), so a run with ``--no-appearance-check`` keeps the plain fingerprint.
    Auto-levels' settings (``levels``, a LevelsConfig as a dict) join it only for a run with ``--auto-levels``
    (:meth:`LabelConfig.levels_config`), so runs without them keep the fingerprint they had before.
    One-shot runs record ``given_masks``: an OUT labeled before a given mask became its frame's output is refused
    rather than finished under the new rule.
    """
    fp: dict[str, Any] = {k: getattr(config, k) for k in LabelConfig.OUTPUT_FIELDS}
    fp["prompts"] = config.prompts_url
    fp["model_sha256"] = model_sha256
    fp["corpus_fingerprint"] = corpus_fingerprint
    if config.input_size not in (None, model_input_size):  # both normalised to (int, int) by their configs
        fp["input_size"] = list(config.input_size)
    if tracker_sha256 is not None:
        fp["tracker_sha256"] = tracker_sha256
        fp["discovery"] = discovery
    if appearance is not None:
        fp["appearance"] = appearance
    if levels is not None:
        fp["levels"] = levels
    if config.mode == "one-shot":
        fp["given_masks"] = GIVEN_MASKS
    return fp


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
