"""RVOS decoder: four ConvLSTM layers, coarse to fine, decoding one object slot of one frame per call.

One class serves every variant through its arguments: zero-shot / one-shot (previous mask as an extra input
channel) and S / T / ST recurrence. Inputs a variant does not have are not zero-filled: its gate convolutions
are built without those channels, and without spatial recurrence there is no incoming cell, so the cell has
no forget gate (three gates i, o, g instead of four). Layer k runs at the k-th coarsest encoder stride.

Not in the paper, optional (``refine_channels``): a refinement head at stride 2. The paper's finest state is at
stride 4, which caps boundary accuracy (a 128x224 input decodes at 32x56). The head reads the finest h upsampled
to stride 2, the encoder's projected stride-2 feature and, one-shot, the previous mask there, and adds a
correction to the logits. Its last convolution starts at zero, so a decoder given the head starts out computing
exactly what it computed without it (``rvos_batch.train.add_refinement`` puts a head on a trained model).

Also not in the paper, optional (``match_channels``): first-frame matching maps (``rvos_batch.model.matching``),
resized to every layer and to the head and read as the last input channels there. The weights that read them start
at zero, for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_batch.model.config import RECURRENCES


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer: a single 3x3 gate convolution over the concatenated inputs, no peepholes."""

    def __init__(self, in_channels: int, hidden: int, has_cell_input: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.has_cell_input = has_cell_input
        self.gates = nn.Conv2d(in_channels, (4 if has_cell_input else 3) * hidden, 3, padding=1)

    def forward(self, inputs: Tensor, c_prev: Tensor | None) -> tuple[Tensor, Tensor]:
        """inputs (B, C_in, h, w), c_prev (B, hidden, h, w) or None -> (h, c), each (B, hidden, h, w)."""
        assert (c_prev is not None) == self.has_cell_input
        gates = self.gates(inputs)  # (B, n_gates * hidden, h, w)
        if c_prev is not None:
            i, f, o, g = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        else:
            i, o, g = gates.chunk(3, dim=1)
            c = torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def layer_hidden_sizes(hidden: int) -> tuple[int, int, int, int]:
    """ConvLSTM widths, coarse to fine: H, H/2, H/4, H/8."""
    return (hidden, hidden // 2, hidden // 4, hidden // 8)


class RVOSDecoder(nn.Module):
    """Decodes one slot: skips + [previous mask] + spatial (h, c) + temporal h -> mask logits and new (h, c).

    Built from the encoder's published ``channels`` and ``strides`` (fine to coarse). All per-layer lists in and
    out of ``forward`` are in layer order, coarse to fine.
    """

    def __init__(
        self,
        skip_channels: Sequence[int],
        strides: Sequence[int],
        hidden: int,
        recurrence: str,
        one_shot: bool,
        refine_channels: int = 0,
        match_channels: int = 0,
    ) -> None:
        super().__init__()
        if recurrence not in RECURRENCES:
            raise ValueError(f"recurrence={recurrence!r}: allowed values are {list(RECURRENCES)}")
        assert len(skip_channels) == len(strides) == 4, "RVOS decodes four skip levels"
        assert list(strides) == sorted(strides), f"strides must go fine to coarse, got {list(strides)}"
        self.spatial = "S" in recurrence
        self.temporal = "T" in recurrence
        self.one_shot = one_shot
        self.match_channels = match_channels
        self.hidden_sizes = layer_hidden_sizes(hidden)
        self.strides = tuple(reversed(strides))  # layer order: coarse to fine
        cells = []
        for k, c_skip in enumerate(reversed(skip_channels)):
            h = self.hidden_sizes[k]
            c_x = c_skip + (self.hidden_sizes[k - 1] if k else 0)  # layer k>0: concat(up(h_{k-1}), f_k)
            c_in = c_x + int(one_shot) + h * int(self.spatial) + h * int(self.temporal)
            cell = ConvLSTMCell(c_in + match_channels, h, has_cell_input=self.spatial)
            _zero_last_inputs(cell.gates, match_channels)
            cells.append(cell)
        self.cells = nn.ModuleList(cells)
        self.head = nn.Conv2d(self.hidden_sizes[-1], 1, 3, padding=1)
        self.refine: nn.Sequential | None = None
        if refine_channels:
            c_in = self.hidden_sizes[-1] + refine_channels + int(one_shot) + match_channels
            width = max(self.hidden_sizes[-1], 8)
            first = nn.Conv2d(c_in, width, 3, padding=1)
            _zero_last_inputs(first, match_channels)
            last = nn.Conv2d(width, 1, 3, padding=1)
            assert last.bias is not None
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.refine = nn.Sequential(first, nn.ReLU(inplace=True), last)

    def forward(
        self,
        skips: Sequence[Tensor],
        out_size: tuple[int, int],
        prev_mask: Tensor | None = None,
        spatial: Sequence[tuple[Tensor, Tensor]] | None = None,
        temporal: Sequence[Tensor] | None = None,
        fine: Tensor | None = None,
        match: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Decode one slot.

        skips: encoder features, fine to coarse, [(B, C_l, h_l, w_l)]. prev_mask: (B, 1, H, W) soft mask, one-shot
        only. spatial: per layer (h, c) of the previous slot in this frame (zeros for slot 0), only with spatial
        recurrence. temporal: per layer h of this slot in the previous frame, only with temporal recurrence.
        fine: the encoder's stride-2 feature f1 (B, C_1, h_1, w_1), only with the refinement head.
        match: this slot's matching maps (B, match_channels, h, w) at any grid, only with matching.
        Returns logits (B, 1, *out_size) and per-layer h and c, coarse to fine.
        """
        assert (prev_mask is not None) == self.one_shot, "prev_mask is given iff the decoder is one-shot"
        assert (spatial is not None) == self.spatial, "spatial state is given iff spatial recurrence is on"
        assert (temporal is not None) == self.temporal, "temporal state is given iff temporal recurrence is on"
        assert (fine is not None) == (self.refine is not None), "fine features are given iff the head refines"
        assert (match is not None) == bool(self.match_channels), "match maps are given iff the decoder matches"
        coarse_first = list(reversed(skips))
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        x: Tensor | None = None
        for k, (cell, f) in enumerate(zip(self.cells, coarse_first, strict=True)):
            size = (f.shape[-2], f.shape[-1])
            # Bilinear to the exact size of the next skip, so odd input sizes work.
            parts = [f] if x is None else [F.interpolate(x, size=size, mode="bilinear", align_corners=False), f]
            if prev_mask is not None:
                parts.append(F.adaptive_max_pool2d(prev_mask, size))  # (B, 1, h_k, w_k)
            c_prev = None
            if spatial is not None:
                h_sp, c_prev = spatial[k]
                parts.append(h_sp)
            if temporal is not None:
                parts.append(temporal[k])
            if match is not None:
                parts.append(_resize(match, size))
            h, c = cell(torch.cat(parts, dim=1), c_prev)  # (B, H_k, h_k, w_k) each
            hs.append(h)
            cs.append(c)
            x = h
        assert x is not None
        if fine is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)  # stride 4 -> 2
            logits = self.head(x)  # (B, 1, ~H/2, ~W/2)
        else:
            assert self.refine is not None
            x = F.interpolate(x, size=fine.shape[-2:], mode="bilinear", align_corners=False)  # stride 4 -> 2
            parts = [x, fine]
            if prev_mask is not None:
                parts.append(F.adaptive_max_pool2d(prev_mask, fine.shape[-2:]))
            if match is not None:
                parts.append(_resize(match, (fine.shape[-2], fine.shape[-1])))
            logits = self.head(x) + self.refine(torch.cat(parts, dim=1))  # (B, 1, h_1, w_1)
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)  # (B, 1, H, W)
        return logits, hs, cs


def _zero_last_inputs(conv: nn.Conv2d, n: int) -> None:
    """Zero the weights that read the last ``n`` input channels, so that those inputs start out ignored."""
    if n:
        with torch.no_grad():
            conv.weight[:, -n:].zero_()


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, h, w) -> (B, C, *size): averaged where the target is coarser, bilinear where it is finer."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
