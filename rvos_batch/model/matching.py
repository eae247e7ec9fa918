"""First-frame matching for one-shot models (not in the paper; ``RVOSConfig.match``).

RVOS-Mask sees an object's appearance only through its previous mask, so once a mask drifts onto the background
nothing pulls it back. Here every slot also keeps a reference: the embedding of the frame where the slot got its
given mask, and which cells of that frame were object and which background. Each later frame is compared with
it cell by cell, as FEELVOS's global matching does (Voigtlaender et al., CVPR 2019): for every cell of the new
frame, its best cosine similarity to any object cell of the reference, and to any background cell. The two maps
enter every ConvLSTM layer (and the refinement head) as two more input channels.

The embedding is a learned 1x1 convolution of the encoder's stride-8 skip, L2-normalised. Matching compares
features instead of learning what objects look like, which is why it may carry to textures never seen in
training; fine-tuned onto the shipped one-shot model on a CPU it did not raise held-out J&F (MODEL_CARD.md). A
decoder given matching starts out computing exactly what it computed without it: the gate weights that read the
two maps start at zero (``rvos_batch.train.add_matching`` puts matching on a trained one-shot model).

Dimension names: B batch rows, S slots, E embedding channels, h x w the stride-8 grid, N = h * w cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MATCH_LEVEL = 1  # the encoder skip matched: f3, stride 8 (skips run fine to coarse: s4, s8, s16, s32)
MATCH_CHANNELS = 2  # per slot: best similarity to the reference's object cells, and to its background cells


def match_dim(hidden: int) -> int:
    """Embedding width: H/2, the width of the stride-8 skip it is computed from."""
    return hidden // 2


class FirstFrameMatcher(nn.Module):
    """Embeds a frame's stride-8 skip and matches it against each slot's reference frame."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Conv2d(in_channels, dim, 1)

    def embed_frame(self, skip: Tensor) -> Tensor:
        """(B, C, h, w) stride-8 skip -> (B, E, h, w) unit-length embedding per cell."""
        return F.normalize(self.embed(skip), dim=1)

    @staticmethod
    def reference_cells(masks: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, S, H, W) soft masks -> (B, S, 2, h, w) float {0, 1}: the cells that hold any object pixel, and the
        cells that hold any background pixel (a boundary cell is both; a tiny object still has a cell)."""
        b, s = masks.shape[:2]
        flat = masks.reshape(b * s, 1, *masks.shape[-2:])
        fg = F.adaptive_max_pool2d(flat, size) > 0.5
        bg = F.adaptive_max_pool2d(1 - flat, size) > 0.5
        return torch.cat([fg, bg], dim=1).to(masks.dtype).reshape(b, s, 2, *size)

    @staticmethod
    def match(query: Tensor, ref_embed: Tensor, ref_cells: Tensor) -> Tensor:
        """Best cosine similarity of every query cell to each slot's reference object and background cells.

        query (B, E, h, w); ref_embed (B, S, E, h, w); ref_cells (B, S, 2, h, w). Returns (B, S, 2, h, w) in
        [-1, 1]; 0 where a reference set is empty (a slot that has no reference yet).

        The best reference cell is found without autograd; the similarity to it is then recomputed with autograd.
        Values and gradients are those of a max over the full similarity matrix, but backward never holds that
        (B, S, N, N) matrix.
        """
        b, e, h, w = query.shape
        s = ref_embed.shape[1]
        n = h * w
        q = query.reshape(b, e, n)  # (B, E, N)
        r = ref_embed.reshape(b, s, e, n)  # (B, S, E, N)
        inside = ref_cells.reshape(b, s, MATCH_CHANNELS, 1, n) > 0.5  # (B, S, 2, 1, N reference)
        with torch.no_grad():
            sim = torch.einsum("ben,bsem->bsnm", q, r)  # (B, S, N query, N reference)
            # Cells outside a set get -2 (cosines are >= -1). One masked_fill per set is far cheaper than one
            # broadcast over both; the second works in place, as sim is not needed after it.
            outside = [sim.masked_fill(~inside[:, :, 0], -2.0), sim.masked_fill_(~inside[:, :, 1], -2.0)]
        if torch.is_grad_enabled() and (q.requires_grad or r.requires_grad):
            best_cell = torch.stack([o.argmax(dim=-1) for o in outside], dim=2)  # (B, S, 2, N query)
            picked = torch.gather(r, 3, best_cell.reshape(b, s, 1, MATCH_CHANNELS * n).expand(b, s, e, -1))
            best = (picked.reshape(b, s, e, MATCH_CHANNELS, n) * q[:, None, :, None]).sum(dim=2)  # (B, S, 2, N)
        else:
            best = torch.stack([o.amax(dim=-1) for o in outside], dim=2)  # (B, S, 2, N query)
        best = best.masked_fill(~inside.any(dim=-1), 0.0)  # an empty set matches nothing
        return best.reshape(b, s, MATCH_CHANNELS, h, w)
