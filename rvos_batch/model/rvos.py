"""RVOS (Ventura et al., CVPR 2019): encoder once per frame, ConvLSTM decoder once per object slot.

The model owns its components and a per-frame ``step`` over an explicit, typed recurrent state
(:class:`RVOSState`); it never loops over videos. ``forward`` over a clip is a loop of ``step``, used for
training. Callers (the predictor, the trainer) create state with ``init_state``, carry it across frames and
chunks, and ``reset_rows`` when a batch row starts a new video. State size is fixed: it never grows with the
length of a video.

Dimension names: B batch rows (videos), T frames, S slots, H x W model input size, C_k / h_k x w_k channels and
size of decoder layer k (coarse to fine, strides 32, 16, 8, 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_batch.model.config import RVOSConfig
from rvos_batch.model.decoder import RVOSDecoder
from rvos_batch.model.encoder import Encoder
from rvos_batch.model.matching import MATCH_CHANNELS, MATCH_LEVEL, FirstFrameMatcher, match_dim

RowIndex = Tensor | Sequence[int]


@dataclass(frozen=True)
class RVOSState:
    """Recurrent state of a batch of videos between two frames.

    hidden: per decoder layer (coarse to fine) the h of every slot after the last frame, (B, S, C_k, h_k, w_k);
        empty without temporal recurrence. The spatial (h, c) lives only within a frame and is not stored.
    prev_masks: (B, S, H, W) soft mask of every slot fed into the next frame; one-shot only, else None.
    started: (B, S) bool. One-shot: the slot has received its given mask (a slot that has not holds zero state).
        Zero-shot: all True.
    frame_index: (B,) int64, frames stepped so far in each row.
    image_size: (H, W) the model input size this state was built for.
    ref_embed: with matching only, else None: (B, S, E, h_8, w_8) the embedded frame where each slot started.
    ref_cells: with matching only, else None: (B, S, 2, h_8, w_8) that frame's object and background cells.
    """

    hidden: tuple[Tensor, ...]
    prev_masks: Tensor | None
    started: Tensor
    frame_index: Tensor
    image_size: tuple[int, int]
    ref_embed: Tensor | None = None
    ref_cells: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.started.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.started.shape[1])

    @property
    def device(self) -> torch.device:
        return self.started.device

    def _optional(self) -> list[Tensor | None]:
        return [self.prev_masks, self.ref_embed, self.ref_cells]

    def tensors(self) -> list[Tensor]:
        """Every tensor of the state in a fixed order (see ``with_tensors``): batch rows are dimension 0."""
        return [*self.hidden, *(t for t in self._optional() if t is not None), self.started, self.frame_index]

    def with_tensors(self, tensors: Sequence[Tensor]) -> RVOSState:
        """A state of this one's layout holding ``tensors``, given in the order of ``tensors()``."""
        assert len(tensors) == len(self.tensors()), f"{len(tensors)} tensors for a state of {len(self.tensors())}"
        rest = iter(tensors[len(self.hidden) : -2])
        prev, ref_embed, ref_cells = (None if t is None else next(rest) for t in self._optional())
        return RVOSState(
            hidden=tuple(tensors[: len(self.hidden)]),
            prev_masks=prev,
            started=tensors[-2],
            frame_index=tensors[-1],
            image_size=self.image_size,
            ref_embed=ref_embed,
            ref_cells=ref_cells,
        )

    def nbytes(self) -> int:
        """Memory held by the state; depends on B, S and the input size, never on video length."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def _map(self, fn: Callable[[Tensor], Tensor]) -> RVOSState:
        return self.with_tensors([fn(t) for t in self.tensors()])

    def detach(self) -> RVOSState:
        """Cut the autograd graph (truncated backpropagation between training chunks)."""
        return self._map(Tensor.detach)

    def to(self, device: torch.device | str) -> RVOSState:
        return self._map(lambda t: t.to(device))

    def index_rows(self, rows: RowIndex) -> RVOSState:
        """The sub-state of some batch rows, in the given order."""
        idx = _row_index(rows, self.device)
        return self._map(lambda t: t.index_select(0, idx))

    def scatter_rows(self, rows: RowIndex, sub: RVOSState) -> RVOSState:
        """A new state equal to this one with ``rows`` replaced by the rows of ``sub`` (same order)."""
        idx = _row_index(rows, self.device)
        assert sub.batch_size == idx.numel(), f"{sub.batch_size} sub-state rows for {idx.numel()} row indices"
        assert sub.num_slots == self.num_slots and sub.image_size == self.image_size
        assert len(sub.hidden) == len(self.hidden)
        assert [t is None for t in sub._optional()] == [t is None for t in self._optional()]
        mine, theirs = self.tensors(), sub.tensors()
        return self.with_tensors([t.index_copy(0, idx, s.to(t.dtype)) for t, s in zip(mine, theirs, strict=True)])


def _row_index(rows: RowIndex, device: torch.device) -> Tensor:
    return torch.as_tensor(rows, dtype=torch.long, device=device).reshape(-1)


def given_claims(given: Tensor, valid: Tensor) -> Tensor:
    """(B, 1, H, W): the pixels the masks given at a frame, (B, S, H, W) where ``valid`` (B, S), assign to their
    objects: ground truth there, so no other object's."""
    return (given * valid[:, :, None, None]).amax(1, keepdim=True)


def overlay_given(masks: Tensor, given: Tensor, valid: Tensor, claimed: Tensor) -> Tensor:
    """Slot masks (B, n, H, W), n <= S, with the masks given at this frame: a given slot takes its mask, every other
    slot gives up the ``claimed`` pixels (:func:`given_claims`)."""
    n = masks.shape[1]
    return torch.where(valid[:, :n, None, None], given[:, :n], masks * (1 - claimed))


class RVOS(nn.Module):
    """RVOS / RVOS-Mask with S, T or ST recurrence, as set by ``config``."""

    def __init__(self, config: RVOSConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.backbone, config.hidden, refine=config.refine)
        self.decoder = RVOSDecoder(
            self.encoder.channels,
            self.encoder.strides,
            config.hidden,
            config.recurrence,
            config.one_shot,
            refine_channels=self.encoder.fine_channels,
            match_channels=MATCH_CHANNELS if config.match else 0,
        )
        self.matcher = (
            FirstFrameMatcher(self.encoder.channels[MATCH_LEVEL], match_dim(config.hidden)) if config.match else None
        )

    # ---- state -------------------------------------------------------------------------------------------------

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        image_size: tuple[int, int] | None = None,
        num_slots: int | None = None,
    ) -> RVOSState:
        """Zero state for ``batch_size`` new videos.

        device / dtype default to the model's parameters; image_size to ``config.input_size``; num_slots to
        ``config.num_slots`` (a smaller number decodes fewer slots; slot s depends only on slots < s).
        """
        cfg = self.config
        param = next(self.parameters())
        device = param.device if device is None else torch.device(device)
        dtype = param.dtype if dtype is None else dtype
        h_img, w_img = cfg.input_size if image_size is None else (int(image_size[0]), int(image_size[1]))
        n_slots = cfg.num_slots if num_slots is None else int(num_slots)
        if not 1 <= n_slots <= cfg.num_slots:
            raise ValueError(f"num_slots={n_slots}: allowed is 1..{cfg.num_slots} (config.num_slots)")
        if batch_size < 0:
            raise ValueError(f"batch_size={batch_size}: allowed is >= 0")
        levels = Encoder.feature_sizes((h_img, w_img))  # the skips' sizes, fine to coarse
        sizes = list(reversed(levels))  # layer order, coarse to fine
        hidden: tuple[Tensor, ...] = ()
        if cfg.temporal:
            hidden = tuple(
                torch.zeros(batch_size, n_slots, c, h, w, device=device, dtype=dtype)  # (B, S, C_k, h_k, w_k)
                for c, (h, w) in zip(self.decoder.hidden_sizes, sizes, strict=True)
            )
        prev = torch.zeros(batch_size, n_slots, h_img, w_img, device=device, dtype=dtype) if cfg.one_shot else None
        ref_embed = ref_cells = None
        if self.matcher is not None:
            h_m, w_m = levels[MATCH_LEVEL]
            ref_embed = torch.zeros(batch_size, n_slots, self.matcher.dim, h_m, w_m, device=device, dtype=dtype)
            ref_cells = torch.zeros(batch_size, n_slots, MATCH_CHANNELS, h_m, w_m, device=device, dtype=dtype)
        return RVOSState(
            hidden=hidden,
            prev_masks=prev,
            started=torch.full((batch_size, n_slots), not cfg.one_shot, dtype=torch.bool, device=device),
            frame_index=torch.zeros(batch_size, dtype=torch.long, device=device),
            image_size=(h_img, w_img),
            ref_embed=ref_embed,
            ref_cells=ref_cells,
        )

    def reset_rows(self, state: RVOSState, rows: RowIndex) -> RVOSState:
        """A new state with ``rows`` set back to zero, ready for new videos; other rows are unchanged."""
        idx = _row_index(rows, state.device)
        fresh = self.init_state(
            idx.numel(), device=state.device, image_size=state.image_size, num_slots=state.num_slots
        )
        return state.scatter_rows(idx, fresh)  # scatter casts to the state's dtypes

    # ---- one frame ---------------------------------------------------------------------------------------------

    def step(
        self,
        frames: Tensor,
        state: RVOSState,
        given_masks: Tensor | None = None,
        given_valid: Tensor | None = None,
        num_active_slots: int | None = None,
    ) -> tuple[Tensor, RVOSState]:
        """Segment one frame of every row.

        frames: (B, 3, H, W) float RGB in [0, 1], H x W = ``state.image_size``.
        given_masks: one-shot only, (B, S, H, W) float in [0, 1]: for slots where ``given_valid`` (B, S) bool
            (default all), the given mask replaces the fed-back previous mask for this frame, starts the slot if
            it had not started, and is fed back again as the previous mask of the next frame (so frame 0's given
            masks are the previous mask for frames 0 and 1). A given mask is ground truth at its frame, so no
            other slot keeps its pixels there: they are cleared from the other slots' previous masks going into
            this frame and from their masks fed on to the next one, and the cells they touch from the other
            slots' temporal memory (an object entering in front of a tracked one; a re-anchored object). Not in
            the paper, whose masks all come with the first frame.
        num_active_slots: decode only slots [0, n) (default all S); later slots keep their state untouched.
        Returns logits (B, n, H, W) and the new state. The fed-back soft mask is detached (ST+ second stage).
        """
        cfg = self.config
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (B, 3, H, W), got {tuple(frames.shape)}")
        b, _, h_img, w_img = frames.shape
        if b != state.batch_size or (h_img, w_img) != state.image_size:
            raise ValueError(
                f"frames {tuple(frames.shape)} do not match the state (batch {state.batch_size}, "
                f"image size {state.image_size})"
            )
        n_slots = state.num_slots
        n = n_slots if num_active_slots is None else int(num_active_slots)
        if not 1 <= n <= n_slots:
            raise ValueError(f"num_active_slots={n}: allowed is 1..{n_slots} (state slots)")
        valid = self._check_given(given_masks, given_valid, state, n)

        fine, skips = self.encoder(frames)  # f1 or None; fine to coarse, [(B, C_l, h_l, w_l)]
        sizes = [tuple(f.shape[-2:]) for f in reversed(skips)]  # layer order, coarse to fine
        for k, h in enumerate(state.hidden):
            assert tuple(h.shape[-2:]) == sizes[k], f"layer {k}: state {tuple(h.shape)} vs features {sizes[k]}"

        started = state.started
        prev = state.prev_masks  # (B, S, H, W) or None
        ref_embed, ref_cells, match = state.ref_embed, state.ref_cells, None
        if self.matcher is not None:
            assert ref_embed is not None and ref_cells is not None
            query = self.matcher.embed_frame(skips[MATCH_LEVEL])  # (B, E, h_8, w_8)
            if given_masks is not None and valid is not None:  # a slot starting now takes this frame as reference
                starting = (valid & ~started)[:, :, None, None, None]  # (B, S, 1, 1, 1)
                size = (ref_cells.shape[-2], ref_cells.shape[-1])
                cells = self.matcher.reference_cells(given_masks.to(ref_cells.dtype), size)
                ref_embed = torch.where(starting, query[:, None].to(ref_embed.dtype), ref_embed)
                ref_cells = torch.where(starting, cells, ref_cells)
            match = self.matcher.match(query, ref_embed[:, :n].to(query.dtype), ref_cells[:, :n])  # (B, n, 2, ., .)
        claimed = None  # (B, 1, H, W): the pixels a mask given at this frame assigns to its object
        cleared: list[Tensor] | None = None  # per layer (B, 1, h_k, w_k): the cells those pixels touch
        if given_masks is not None and valid is not None:
            assert prev is not None
            started = started | valid
            given = given_masks.to(prev.dtype)
            claimed = given_claims(given, valid)
            prev = overlay_given(prev, given, valid, claimed)
            if cfg.temporal:
                cleared = [F.adaptive_max_pool2d(claimed, size) for size in sizes]

        spatial: list[tuple[Tensor, Tensor]] | None = None
        if cfg.spatial:  # slot 0 of each frame starts from zeros
            spatial = [
                (f.new_zeros(b, c, *f.shape[-2:]), f.new_zeros(b, c, *f.shape[-2:]))
                for c, f in zip(self.decoder.hidden_sizes, reversed(skips), strict=True)
            ]
        slot_logits: list[Tensor] = []
        slot_hidden: list[list[Tensor]] = [[] for _ in self.decoder.hidden_sizes]
        for s in range(n):
            temporal = [h[:, s] for h in state.hidden] if cfg.temporal else None  # [(B, C_k, h_k, w_k)]
            if temporal is not None and cleared is not None:  # another object's given cells: no memory there
                assert valid is not None
                other = (~valid[:, s]).to(cleared[0].dtype)[:, None, None, None]  # (B, 1, 1, 1)
                temporal = [h * (1 - other * c) for h, c in zip(temporal, cleared, strict=True)]
            mask_in = prev[:, s : s + 1] if prev is not None else None  # (B, 1, H, W)
            match_in = match[:, s] if match is not None else None  # (B, 2, h_8, w_8)
            logit, hs, cs = self.decoder(skips, (h_img, w_img), mask_in, spatial, temporal, fine, match_in)
            if spatial is not None:
                spatial = list(zip(hs, cs, strict=True))
            slot_logits.append(logit[:, 0])  # (B, H, W)
            for k, h in enumerate(hs):
                slot_hidden[k].append(h)
        logits = torch.stack(slot_logits, dim=1)  # (B, n, H, W)

        keep = started[:, :n]  # (B, n): slots that have not started keep zero state
        hidden: tuple[Tensor, ...] = ()
        if cfg.temporal:
            hidden = tuple(
                torch.cat([(torch.stack(new, dim=1) * keep[:, :, None, None, None]).to(old.dtype), old[:, n:]], dim=1)
                for new, old in zip(slot_hidden, state.hidden, strict=True)
            )  # [(B, S, C_k, h_k, w_k)]
        prev_masks = None
        if prev is not None:
            assert state.prev_masks is not None
            fed = torch.sigmoid(logits.detach()).to(prev.dtype)  # (B, n, H, W)
            if valid is not None:
                assert claimed is not None
                fed = overlay_given(fed, given, valid, claimed)
            fed = fed * keep[:, :, None, None]
            prev_masks = torch.cat([fed, state.prev_masks[:, n:]], dim=1)  # (B, S, H, W)
        new_state = RVOSState(
            hidden=hidden,
            prev_masks=prev_masks,
            started=started,
            frame_index=state.frame_index + 1,
            image_size=state.image_size,
            ref_embed=ref_embed,
            ref_cells=ref_cells,
        )
        return logits, new_state

    def _check_given(
        self, given_masks: Tensor | None, given_valid: Tensor | None, state: RVOSState, n: int
    ) -> Tensor | None:
        if given_masks is None:
            if given_valid is not None:
                raise ValueError("given_valid without given_masks")
            return None
        if not self.config.one_shot:
            raise ValueError(f"given_masks are for one-shot models; this model's mode is {self.config.mode!r}")
        expected = (state.batch_size, state.num_slots, *state.image_size)
        if tuple(given_masks.shape) != expected:
            raise ValueError(f"given_masks must be (B, S, H, W) = {expected}, got {tuple(given_masks.shape)}")
        if given_valid is None:
            given_valid = torch.ones(expected[:2], dtype=torch.bool, device=given_masks.device)
        if given_valid.dtype != torch.bool or tuple(given_valid.shape) != expected[:2]:
            raise ValueError(
                f"given_valid must be bool (B, S) = {expected[:2]}, got {given_valid.dtype} {tuple(given_valid.shape)}"
            )
        if bool(given_valid[:, n:].any()):
            raise ValueError(f"a given mask is valid for a slot >= num_active_slots={n}; it would be ignored")
        return given_valid

    # ---- a clip ------------------------------------------------------------------------------------------------

    def forward(
        self,
        clip: Tensor,
        state: RVOSState | None = None,
        given_masks: Tensor | None = None,
        given_valid: Tensor | None = None,
        num_active_slots: int | None = None,
    ) -> tuple[Tensor, RVOSState]:
        """Run ``step`` over the frames of a clip (training; also chunked inference carrying ``state``).

        clip: (B, T, 3, H, W) in [0, 1]. state: from a previous chunk, or None for new videos (zero state at the
        clip's size). given_masks: (B, T, S, H, W) with given_valid (B, T, S), per frame as in ``step``.
        Returns logits (B, T, n, H, W) and the state after the last frame.
        """
        if clip.dim() != 5 or clip.shape[2] != 3:
            raise ValueError(f"clip must be (B, T, 3, H, W), got {tuple(clip.shape)}")
        b, t = clip.shape[:2]
        if state is None:
            n_slots = given_masks.shape[2] if given_masks is not None else None
            state = self.init_state(
                b, device=clip.device, image_size=(clip.shape[-2], clip.shape[-1]), num_slots=n_slots
            )
        if given_masks is not None and given_masks.shape[:2] != (b, t):
            raise ValueError(
                f"given_masks must be (B, T, S, H, W) with B, T = {(b, t)}, got {tuple(given_masks.shape)}"
            )
        if given_valid is not None and given_masks is None:
            raise ValueError("given_valid without given_masks")
        outputs = []
        for i in range(t):
            gm = given_masks[:, i] if given_masks is not None else None  # (B, S, H, W)
            gv = given_valid[:, i] if given_valid is not None else None  # (B, S)
            logits, state = self.step(clip[:, i], state, gm, gv, num_active_slots)
            outputs.append(logits)
        return torch.stack(outputs, dim=1), state  # (B, T, n, H, W)


def with_slots(model: RVOS, num_slots: int) -> RVOS:
    """``model`` decoding ``num_slots`` object slots: the same module objects and weights, another config.

    The weights do not depend on the slot count: every slot runs the same decoder, slot s reading slot s - 1's
    spatial state. So a model trained with S slots runs with more, each further slot seeing one more object before
    it than training ever showed (the labeling job's tracker uses this). ``model`` itself is unchanged.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots={num_slots}: allowed is >= 1")
    if num_slots == model.config.num_slots:
        return model
    twin = RVOS.__new__(RVOS)
    nn.Module.__init__(twin)
    twin.config = replace(model.config, num_slots=num_slots)
    twin.encoder, twin.decoder, twin.matcher = model.encoder, model.decoder, model.matcher  # the same modules
    return twin.train(model.training)
