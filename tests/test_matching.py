"""First-frame matching (RVOSConfig.match, not in the paper): the maps are the best cosine similarity to each
slot's reference object and background cells, reference cells keep tiny objects, a slot's reference is the frame
where it started, and a model with matching added computes what it computed before until it trains."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from rvos_batch.model import RVOS, ConfigError, RVOSConfig
from rvos_batch.model.matching import FirstFrameMatcher

SIZE = (64, 96)  # stride 8: 8 x 12 cells


def brute_force(query: torch.Tensor, ref: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """One cell at a time: the definition of the two maps."""
    b, e, h, w = query.shape
    s = ref.shape[1]
    out = torch.zeros(b, s, 2, h, w)
    for i, k, j, y, x in itertools.product(range(b), range(s), range(2), range(h), range(w)):
        members = [(yy, xx) for yy in range(h) for xx in range(w) if cells[i, k, j, yy, xx] > 0.5]
        if members:
            out[i, k, j, y, x] = max(float(query[i, :, y, x] @ ref[i, k, :, yy, xx]) for yy, xx in members)
    return out


def unit(*shape: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=dim)


def test_match_is_the_best_similarity_to_each_reference_set():
    b, s, e, h, w = 2, 3, 6, 4, 5
    query, ref = unit(b, e, h, w, dim=1, seed=0), unit(b, s, e, h, w, dim=2, seed=1)
    cells = (torch.rand(b, s, 2, h, w, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    cells[0, 1] = 0  # a slot with no reference yet
    cells[1, 2, 0] = 0
    cells[1, 2, 0, 3, 4] = 1  # an object of one cell
    expected = brute_force(query, ref, cells)
    with torch.no_grad():
        got = FirstFrameMatcher.match(query, ref, cells)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert got[0, 1].abs().sum() == 0
    # with autograd (training) the same values, and the gradient of a max over the full similarity matrix
    q, r = query.clone().requires_grad_(), ref.clone().requires_grad_()
    out = FirstFrameMatcher.match(q, r, cells)
    torch.testing.assert_close(out.detach(), expected, atol=1e-6, rtol=0)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((out * weights).sum(), [q, r])
    q2, r2 = query.clone().requires_grad_(), ref.clone().requires_grad_()
    sim = torch.einsum("ben,bsem->bsnm", q2.reshape(b, e, -1), r2.reshape(b, s, e, -1))
    dense = []
    for j in range(2):
        inside = cells[:, :, j].reshape(b, s, 1, -1) > 0.5
        dense.append(sim.masked_fill(~inside, -2.0).amax(-1).masked_fill(~inside.any(-1), 0.0))
    ref_out = torch.stack(dense, 2).reshape(out.shape)
    for a, d in zip(grads, torch.autograd.grad((ref_out * weights).sum(), [q2, r2]), strict=True):
        torch.testing.assert_close(a, d, atol=1e-6, rtol=0)


def test_reference_cells_keep_tiny_objects_and_boundaries():
    masks = torch.zeros(1, 2, 16, 24)
    masks[0, 0, 5, 13] = 1  # one pixel: one object cell (cell (1, 3) of the 4x4-pixel grid)
    masks[0, 1, :, :12] = 1  # the left half: cells 0-2 object, 3-5 background, no cell both
    cells = FirstFrameMatcher.reference_cells(masks, (4, 6))
    assert cells.shape == (1, 2, 2, 4, 6)
    assert cells[0, 0, 0].nonzero().tolist() == [[1, 3]]
    assert cells[0, 0, 1].sum() == 24  # every cell holds background, the object's cell too
    assert cells[0, 1, 0, :, :3].all() and not cells[0, 1, 0, :, 3:].any()
    assert cells[0, 1, 1, :, 3:].all() and not cells[0, 1, 1, :, :3].any()


def test_a_slot_matches_against_the_frame_where_it_started():
    torch.manual_seed(0)
    model = RVOS(RVOSConfig(hidden=16, num_slots=3, mode="one-shot", input_size=SIZE, match=True)).eval()
    assert model.matcher is not None
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(3, 1, 3, *SIZE, generator=g)
    masks = (torch.rand(3, 1, 3, *SIZE, generator=g) > 0.5).float()
    valid = torch.zeros(3, 1, 3, dtype=torch.bool)
    valid[0, 0, :2] = True  # slots 0 and 1 start at frame 0
    valid[2, 0, 2] = True  # slot 2 starts at frame 2 ...
    valid[2, 0, 0] = True  # ... where slot 0 is given a mask again: its reference stays frame 0
    state = model.init_state(1)
    with torch.no_grad():
        embeds = [model.matcher.embed_frame(model.encoder(f)[1][1]) for f in frames]
        for t in range(3):
            _, state = model.step(frames[t], state, masks[t], valid[t])
    assert state.ref_embed is not None and state.ref_cells is not None
    for slot, t in [(0, 0), (1, 0), (2, 2)]:
        torch.testing.assert_close(state.ref_embed[0, slot], embeds[t][0])
        cells = FirstFrameMatcher.reference_cells(masks[t], (8, 12))
        torch.testing.assert_close(state.ref_cells[0, slot], cells[0, slot])
    # a frame matched against itself: every object cell is a perfect match
    with torch.no_grad():
        maps = FirstFrameMatcher.match(embeds[0], state.ref_embed[:, :1], state.ref_cells[:, :1])
    fg = state.ref_cells[0, 0, 0] > 0.5
    torch.testing.assert_close(maps[0, 0, 0][fg], torch.ones(int(fg.sum())))


def test_matching_is_one_shot_only():
    with pytest.raises(ConfigError, match="match=True needs mode='one-shot'"):
        RVOSConfig(mode="zero-shot", match=True)
    with pytest.raises(ConfigError, match="RVOSConfig.match=1"):
        RVOSConfig(mode="one-shot", match=1)  # type: ignore[arg-type]
    assert RVOSConfig.from_dict(RVOSConfig(mode="one-shot", match=True).to_dict()).match
    assert not RVOSConfig.from_dict({"mode": "one-shot"}).match  # checkpoints from before matching load as before
