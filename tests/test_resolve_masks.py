"""The CPU mask resolver upsamples each slot only where it can pass the threshold; it must give the masks that
full-size bilinear upsampling of every slot gives (F.interpolate, the CUDA path's method)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvos_batch.predictor import _axis, resolve_masks


def reference(probs: torch.Tensor, reportable: torch.Tensor, size: tuple[int, int], threshold: float):
    """Every slot upsampled at full size, then the per-pixel rule; also the pixels whose owner a float32 ulp
    could change (two slots, or a slot and the threshold, within 1e-6)."""
    n = probs.shape[1]
    full = F.interpolate(probs * reportable[:, :, None, None], size=size, mode="bilinear", align_corners=False)
    top2 = full.topk(min(2, n), dim=1).values
    best_p, best = full.max(dim=1)
    label = torch.where(best_p > threshold, best, n)
    masks = label[:, None] == torch.arange(n)[None, :, None, None]
    close = (best_p - threshold).abs() <= 1e-6
    if n > 1:
        close |= (top2[:, 0] - top2[:, 1]).abs() <= 1e-6
    area = masks.sum((2, 3))
    score = (full * masks).sum((2, 3)) / area.clamp(min=1)
    return masks, area, score, close


def blobs(g: int, n: int, h: int, w: int, seed: int, saturate: bool) -> torch.Tensor:
    """Smooth random probability maps with compact blobs (like a model's), some saturated at exactly 1.0."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(g, n, max(2, h // 8), max(2, w // 8), generator=gen) * 6 - 4
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    p = torch.sigmoid(logits)
    if saturate:
        p = torch.where(p > 0.97, torch.ones_like(p), p)  # float32 sigmoid of a confident logit is 1.0
    return p.contiguous()


@pytest.mark.parametrize(
    ("h", "w", "size", "saturate"),
    [
        ((128), 224, (240, 427), True),  # the shipped model on a 240x427 corpus
        (64, 112, (480, 854), False),  # upsampling by 7.5
        (128, 224, (97, 131), True),  # frames smaller than the model input: downsampling
        (33, 47, (33, 47), False),  # same size
        (16, 24, (121, 5), True),  # odd and thin
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_cropped_resolution_equals_full_upsampling(h, w, size, saturate, seed):
    g, n = 3, 5
    probs = blobs(g, n, h, w, seed, saturate)
    reportable = torch.rand(g, n, generator=torch.Generator().manual_seed(seed)) > 0.2
    reportable[0] = True
    masks, area, score = resolve_masks(probs, reportable, size, 0.5)
    want_masks, want_area, want_score, close = reference(probs, reportable, size, 0.5)
    assert masks.shape == (g, n, *size) and masks.dtype == torch.bool
    assert masks.sum(1).max() <= 1, "a pixel belongs to at most one slot"
    differ = (masks != want_masks).any(1)
    assert not (differ & ~close).any(), "masks differ from full upsampling beyond float32 ties"
    tied = close.sum((1, 2))[:, None]
    assert ((area - want_area).abs() <= tied).all()
    ok = (area == want_area) & (area > 0)
    torch.testing.assert_close(score[ok], want_score[ok].float(), atol=1e-5, rtol=1e-5)
    assert not masks[~reportable].any() and (area[~reportable] == 0).all()
    assert want_area.sum() > 0, "the case must have foreground to compare"


def test_cropped_resolution_edge_cases():
    probs = torch.zeros(2, 3, 8, 10)
    probs[0, 0, 0, 0] = 0.9  # one corner pixel: its box reaches the output's corner
    probs[0, 1, 7, 9] = 1.0  # the opposite corner
    probs[0, 2] = 0.5  # exactly the threshold everywhere: never above it
    reportable = torch.ones(2, 3, dtype=torch.bool)  # row 1: nothing above the threshold
    masks, area, score = resolve_masks(probs, reportable, (16, 20), 0.5)
    want, want_area, _, _ = reference(probs, reportable, (16, 20), 0.5)
    assert torch.equal(masks, want) and torch.equal(area, want_area)
    assert area[0, 0] > 0 and area[0, 1] > 0 and area[0, 2] == 0 and area[1].sum() == 0
    assert masks[0, 0, 0, 0] and masks[0, 1, -1, -1]
    assert (score[1] == 0).all()


@pytest.mark.parametrize(("n_in", "n_out"), [(128, 240), (224, 427), (64, 854), (128, 97), (7, 7), (3, 1)])
def test_axis_weights_are_torchs(n_in, n_out):
    """The per-axis indices and weights equal those F.interpolate uses (read back from it on a unit basis)."""
    eye = torch.eye(n_in)[None, :, :, None]  # channel c: the c-th unit vector along height
    want = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].T.numpy()
    ax = _axis(n_in, n_out)
    got = np.zeros((n_out, n_in), np.float32)
    np.add.at(got, (np.arange(n_out), ax.lo), ax.w_lo)
    np.add.at(got, (np.arange(n_out), ax.hi), ax.w_hi)
    np.testing.assert_array_equal(got, want)
