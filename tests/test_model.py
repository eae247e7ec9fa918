"""RVOS model properties on tiny untrained CPU models: config validation, encoder levels, gradients in every
variant, step == clip forward == chunks, batched rows == separate videos, fixed-size state, given masks."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from rvos_batch.model import RVOS, ConfigError, Encoder, RVOSConfig, RVOSState
from rvos_batch.model.config import BACKBONES
from rvos_batch.model.rvos import with_slots

SIZE = (64, 96)
VARIANTS = list(itertools.product(["zero-shot", "one-shot"], ["S", "T", "ST"]))


def tiny(
    mode: str = "one-shot",
    recurrence: str = "ST",
    backbone: str = "mobilenet_v2",
    slots: int = 3,
    size: tuple[int, int] = SIZE,
    seed: int = 0,
    refine: bool = False,
    match: bool = False,
) -> RVOS:
    torch.manual_seed(seed)
    cfg = RVOSConfig(
        backbone=backbone, hidden=16, num_slots=slots, mode=mode, recurrence=recurrence, input_size=size,
        refine=refine, match=match,
    )
    model = RVOS(cfg).eval()
    with torch.no_grad():  # weights that start at zero get values, so that what they read counts
        if refine:
            torch.nn.init.normal_(model.decoder.refine[-1].weight, std=0.5)
        if match:
            convs = [cell.gates for cell in model.decoder.cells]
            convs += [model.decoder.refine[0]] if refine else []
            for conv in convs:
                conv.weight[:, -2:].normal_(std=0.5)
    return model


def clip_and_masks(b: int, t: int, s: int, size: tuple[int, int] = SIZE, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(b, t, 3, *size, generator=g)
    masks = (torch.rand(b, t, s, *size, generator=g) > 0.7).float()
    valid = torch.zeros(b, t, s, dtype=torch.bool)
    valid[:, 0, : s - 1] = True  # all but the last object are given on frame 0 ...
    valid[:, min(2, t - 1), s - 1] = True  # ... the last one appears later
    return clip, masks, valid


def assert_state_close(a: RVOSState, b: RVOSState, atol: float = 1e-5) -> None:
    for x, y in zip(a.tensors(), b.tensors(), strict=True):
        assert x.shape == y.shape
        if x.dtype.is_floating_point:
            torch.testing.assert_close(x, y, atol=atol, rtol=0)
        else:
            assert torch.equal(x, y)


# ---- config --------------------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    cfg = RVOSConfig(backbone="resnet18", hidden=32, num_slots=4, mode="one-shot", recurrence="T", input_size=(65, 97))
    assert RVOSConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["input_size"] == [65, 97]
    with pytest.raises(ConfigError, match=r"backbone='vgg16'.*mobilenet_v2"):
        RVOSConfig(backbone="vgg16")
    with pytest.raises(ConfigError, match=r"hidden=12.*multiple of 8"):
        RVOSConfig(hidden=12)
    with pytest.raises(ConfigError, match=r"recurrence='X'"):
        RVOSConfig(recurrence="X")
    with pytest.raises(ConfigError, match=r"mode='two-shot'"):
        RVOSConfig(mode="two-shot")
    with pytest.raises(ConfigError, match=r"num_slots=0"):
        RVOSConfig(num_slots=0)
    with pytest.raises(ConfigError, match=r"input_size=\(16, 64\)"):
        RVOSConfig(input_size=(16, 64))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['dropout'\]"):
        RVOSConfig.from_dict({"dropout": 0.1})
    with pytest.raises(ConfigError, match=r"refine='yes'"):
        RVOSConfig(refine="yes")  # type: ignore[arg-type]
    assert RVOSConfig.from_dict({"hidden": 32}).refine is False  # checkpoints written before the field load as is


# ---- encoder -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", BACKBONES)
def test_encoder_publishes_levels_and_odd_sizes_work(backbone):
    enc = Encoder(backbone, hidden=16).eval()
    assert enc.strides == (4, 8, 16, 32)
    assert enc.channels == (4, 8, 16, 16)  # H/4, H/2, H, H for f2..f5
    size = (33, 47)
    with torch.no_grad():
        x = enc.stem(torch.rand(1, 3, *size))
        for stage, c in zip(enc.stages, enc.backbone_channels, strict=True):
            x = stage(x)
            assert x.shape[1] == c
        fine, feats = enc(torch.rand(2, 3, *size))
    assert fine is None
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, *hw) for c, hw in zip(enc.channels, enc.feature_sizes(size), strict=True)
    ]
    assert enc.feature_sizes((256, 448)) == [(64, 112), (32, 56), (16, 28), (8, 14)]  # RVOS.md


@pytest.mark.parametrize("size", [(64, 96), (65, 97), (71, 33)])
@pytest.mark.parametrize("refine", [False, True])
def test_odd_input_sizes(size, refine):
    model = tiny(size=size, refine=refine)
    state = model.init_state(2)
    with torch.no_grad():
        logits, state = model.step(torch.rand(2, 3, *size), state, torch.rand(2, 3, *size))
    assert logits.shape == (2, 3, *size)
    assert torch.isfinite(logits).all()


# ---- gradients -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,recurrence,refine,match", [(m, r, False, False) for m, r in VARIANTS] + [
    ("zero-shot", "ST", True, False), ("one-shot", "ST", True, False), ("one-shot", "ST", True, True)])
def test_every_parameter_gets_a_gradient(mode, recurrence, refine, match):
    model = tiny(mode, recurrence, refine=refine, match=match).train()
    clip, masks, valid = clip_and_masks(2, 2, 3, size=(32, 64))
    given = (masks, valid) if mode == "one-shot" else (None, None)
    logits, _ = model(clip, None, *given)
    assert logits.shape == (2, 2, 3, 32, 64)
    logits.sigmoid().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_refinement_reads_the_stride_2_feature(backbone):
    enc = Encoder(backbone, hidden=16, refine=True).eval()
    plain = Encoder(backbone, hidden=16).eval()
    plain.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("fine_projection")})
    x = torch.rand(2, 3, 33, 47)
    with torch.no_grad():
        fine, feats = enc(x)
        plain_fine, plain_feats = plain(x)
        assert plain_fine is None
        for a, b in zip(feats, plain_feats, strict=True):  # the tap does not change the four skips
            torch.testing.assert_close(a, b)
    assert fine is not None and tuple(fine.shape) == (2, 4, 17, 24)  # H/4 channels at stride 2
    model = tiny("one-shot", refine=True)
    keys = {k.split(".")[1] for k in model.state_dict() if k.startswith(("encoder.fine", "decoder.refine"))}
    assert keys == {"fine_projection", "refine"}
    assert not any("refine" in k or "fine_projection" in k for k in tiny("one-shot").state_dict())
    # one-shot: upsampled finest h (H/8) + f1 (H/4) + the previous mask
    assert model.decoder.refine[0].in_channels == 2 + 4 + 1


def test_variants_build_only_the_inputs_they_use():
    h = 16
    counts = {}
    for mode, rec in VARIANTS:
        cell = tiny(mode, rec).decoder.cells[0]
        counts[mode, rec] = (cell.gates.in_channels, cell.gates.out_channels)
    # layer 0 input: f5 (H) + [mask] + [h spatial] + [h temporal]; no spatial recurrence -> no forget gate
    assert counts["zero-shot", "ST"] == (3 * h, 4 * h)
    assert counts["zero-shot", "S"] == (2 * h, 4 * h)
    assert counts["zero-shot", "T"] == (2 * h, 3 * h)
    assert counts["one-shot", "ST"] == (3 * h + 1, 4 * h)


def test_parameter_count_matches_the_paper():
    model = RVOS(RVOSConfig(backbone="resnet101", hidden=128, mode="zero-shot"))
    head = sum(p.numel() for p in [*model.decoder.parameters(), *model.encoder.projections.parameters()])
    backbone = sum(p.numel() for p in [*model.encoder.stem.parameters(), *model.encoder.stages.parameters()])
    assert abs(head - 6.8e6) < 0.1e6  # RVOS.md: decoder + projections about 6.8 M
    assert abs(backbone - 42.5e6) < 0.1e6  # ResNet-101 trunk about 42.5 M


# ---- step / forward / chunks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,recurrence,refine,match", [(m, r, False, False) for m, r in VARIANTS] + [
    ("one-shot", "ST", True, False), ("one-shot", "ST", True, True), ("one-shot", "T", False, True)])
def test_step_by_step_and_chunks_equal_whole_clip(mode, recurrence, refine, match):
    model = tiny(mode, recurrence, refine=refine, match=match)
    clip, masks, valid = clip_and_masks(2, 5, 3)
    given = (masks, valid) if mode == "one-shot" else (None, None)
    with torch.no_grad():
        whole, final = model(clip, None, *given)
        for chunks in ([1, 1, 1, 1, 1], [2, 3], [4, 1]):
            state = model.init_state(2)
            outs, t0 = [], 0
            for n in chunks:
                sl = slice(t0, t0 + n)
                gm = (masks[:, sl], valid[:, sl]) if mode == "one-shot" else (None, None)
                out, state = model(clip[:, sl], state, *gm)
                outs.append(out)
                t0 += n
            torch.testing.assert_close(torch.cat(outs, 1), whole, atol=1e-5, rtol=0)
            assert_state_close(state, final)
    assert final.frame_index.tolist() == [5, 5]


@pytest.mark.parametrize("match", [False, True])
def test_state_size_is_independent_of_video_length(match):
    model = tiny("one-shot", "ST", match=match)
    state = model.init_state(1)
    sizes = [state.nbytes()]
    shapes = [[tuple(t.shape) for t in state.tensors()]]
    with torch.no_grad():
        for t in range(6):
            _, state = model.step(torch.rand(1, 3, *SIZE), state, torch.rand(1, 3, *SIZE) if t == 0 else None)
            sizes.append(state.nbytes())
            shapes.append([tuple(x.shape) for x in state.tensors()])
    assert len(set(sizes)) == 1 and all(s == shapes[0] for s in shapes)
    assert [tuple(h.shape) for h in state.hidden] == [
        (1, 3, 16, 2, 3),
        (1, 3, 8, 4, 6),
        (1, 3, 4, 8, 12),
        (1, 3, 2, 16, 24),
    ]
    if match:  # the reference: an 8-wide embedding (H/2) and object / background cells, at stride 8
        assert state.ref_embed is not None and state.ref_cells is not None
        assert (tuple(state.ref_embed.shape), tuple(state.ref_cells.shape)) == ((1, 3, 8, 8, 12), (1, 3, 2, 8, 12))
    else:
        assert state.ref_embed is None and state.ref_cells is None


# ---- batching ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("match", [False, True])
def test_batched_rows_equal_separate_videos_with_reset_and_idle_rows(match):
    model = tiny("one-shot", "ST", match=match)
    g = torch.Generator().manual_seed(3)
    videos = {name: torch.rand(t, 3, *SIZE, generator=g) for name, t in [("a", 5), ("b", 2), ("c", 3)]}
    firsts = {name: (torch.rand(3, *SIZE, generator=g) > 0.6).float() for name in videos}
    with torch.no_grad():
        solo = {}
        for name, frames in videos.items():
            state, outs = model.init_state(1), []
            for t in range(frames.shape[0]):
                out, state = model.step(frames[t : t + 1], state, firsts[name][None] if t == 0 else None)
                outs.append(out[0])
            solo[name] = outs
        # Row 0 runs "a"; row 1 runs "b" then is reset and reused for "c"; at step 2 row 0 idles (not stepped).
        schedule = [
            {0: ("a", 0), 1: ("b", 0)},
            {0: ("a", 1), 1: ("b", 1)},
            {1: ("c", 0)},
            {0: ("a", 2), 1: ("c", 1)},
            {0: ("a", 3), 1: ("c", 2)},
            {0: ("a", 4)},
        ]
        state = model.init_state(2)
        batched: dict[str, list[torch.Tensor]] = {"a": [], "b": [], "c": []}
        for plan in schedule:
            rows = sorted(plan)
            for r in rows:
                if plan[r] == ("c", 0):
                    state = model.reset_rows(state, [r])
            before = {r: state.index_rows([r]) for r in range(2) if r not in plan}
            frames = torch.stack([videos[plan[r][0]][plan[r][1]] for r in rows])
            given = torch.zeros(len(rows), 3, *SIZE)
            valid = torch.zeros(len(rows), 3, dtype=torch.bool)
            for i, r in enumerate(rows):
                if plan[r][1] == 0:
                    given[i], valid[i] = firsts[plan[r][0]], True
            out, sub = model.step(frames, state.index_rows(rows), given, valid)
            state = state.scatter_rows(rows, sub)
            for i, r in enumerate(rows):
                batched[plan[r][0]].append(out[i])
            for r, old in before.items():  # a row not stepped does not advance
                assert_state_close(state.index_rows([r]), old, atol=0)
    for name in videos:
        torch.testing.assert_close(torch.stack(batched[name]), torch.stack(solo[name]), atol=1e-5, rtol=0)


def test_reset_rows_zeroes_only_those_rows():
    model = tiny("one-shot", "ST")
    with torch.no_grad():
        _, state = model.step(torch.rand(2, 3, *SIZE), model.init_state(2), torch.rand(2, 3, *SIZE))
    reset = model.reset_rows(state, [1])
    assert_state_close(reset.index_rows([0]), state.index_rows([0]), atol=0)
    assert_state_close(reset.index_rows([1]), model.init_state(1), atol=0)
    assert reset.frame_index.tolist() == [1, 0]


def test_fewer_active_slots_give_the_same_first_slots():
    model = tiny("one-shot", "ST", slots=4)
    clip, masks, valid = clip_and_masks(1, 3, 4)
    valid[:, 2, 3] = False  # nothing for slots >= 2
    valid[:, 0, 2:] = False
    with torch.no_grad():
        full, full_state = model(clip, None, masks, valid)
        part, part_state = model(clip, None, masks, valid, num_active_slots=2)
        small, _ = model(clip, model.init_state(1, num_slots=2), masks[:, :, :2], valid[:, :, :2])
    assert part.shape == (1, 3, 2, *SIZE)
    torch.testing.assert_close(part, full[:, :, :2], atol=1e-5, rtol=0)
    torch.testing.assert_close(small, part, atol=1e-5, rtol=0)
    for h in part_state.hidden:  # slots beyond the active ones keep their (zero) state
        assert h[:, 2:].abs().sum() == 0


# ---- one-shot given masks ------------------------------------------------------------------------------------


def test_one_shot_uses_given_masks_and_feeds_them_to_the_next_frame():
    model = tiny("one-shot", "ST")
    frames = torch.rand(2, 1, 3, *SIZE)
    m1 = torch.zeros(1, 3, *SIZE)
    m1[..., 10:40, 20:60] = 1.0
    m2 = torch.zeros(1, 3, *SIZE)
    m2[..., 30:60, 50:90] = 1.0
    with torch.no_grad():
        out1, s1 = model.step(frames[0], model.init_state(1), m1)
        out2, s2 = model.step(frames[0], model.init_state(1), m2)
        assert not torch.allclose(out1, out2)
        # frame 0's given masks are the previous mask for frame 1 too
        torch.testing.assert_close(s1.prev_masks, m1)
        n1, _ = model.step(frames[1], s1)
        n2, _ = model.step(frames[1], s2)
        assert not torch.allclose(n1, n2)
        # after that the model's own (detached) soft output is fed back
        _, s3 = model.step(frames[1], s1)
        torch.testing.assert_close(s3.prev_masks, n1.sigmoid())


def test_one_shot_slots_start_with_their_given_mask():
    model = tiny("one-shot", "ST")
    valid = torch.tensor([[True, False, False]])
    with torch.no_grad():
        _, state = model.step(torch.rand(1, 3, *SIZE), model.init_state(1), torch.rand(1, 3, *SIZE), valid)
    assert state.started.tolist() == [[True, False, False]]
    for h in state.hidden:  # not-yet-started slots hold zero state
        assert h[:, 0].abs().sum() > 0 and h[:, 1:].abs().sum() == 0
    assert state.prev_masks[:, 1:].abs().sum() == 0


def test_a_given_mask_is_cleared_from_the_other_slots():
    """A mask given at a frame is ground truth there: the other slots lose its pixels from their previous masks
    going into that frame, from the masks fed on to the next one, and (the cells it touches) from their memory."""
    model = tiny("one-shot", "ST")
    frames = torch.rand(3, 1, 3, *SIZE)
    first = torch.zeros(1, 3, *SIZE)
    first[:, 0, 10:40, 20:60] = 1.0
    first[:, 1, 30:60, 50:90] = 1.0
    entering = torch.zeros(1, 3, *SIZE)
    entering[:, 2, 20:50, 40:70] = 1.0  # overlaps both tracked objects
    valid = torch.tensor([[False, False, True]])
    with torch.no_grad():
        _, state = model.step(frames[0], model.init_state(1), first, torch.tensor([[True, True, False]]))
        _, state = model.step(frames[1], state)
        assert (state.prev_masks[:, :2] * entering[:, 2:]).sum() > 0  # the tracked masks reach into the new one
        logits, after = model.step(frames[2], state, entering, valid)
        touched = [torch.nn.functional.adaptive_max_pool2d(entering[:, 2:], h.shape[-2:]) for h in state.hidden]
        carved = dataclasses.replace(
            state,
            prev_masks=state.prev_masks * (1 - entering[:, 2:]),
            hidden=tuple(h * (1 - c[:, :, None]) for h, c in zip(state.hidden, touched, strict=True)),
        )
        assert all(0 < c.mean() < 1 for c in touched)
        expected, _ = model.step(frames[2], carved, num_active_slots=2)
    torch.testing.assert_close(logits[:, :2], expected)  # slots 0 and 1 saw their masks without the new object
    torch.testing.assert_close(after.prev_masks[:, :2], logits[:, :2].sigmoid() * (1 - entering[:, 2:]))
    torch.testing.assert_close(after.prev_masks[:, 2], entering[:, 2])
    assert after.started.tolist() == [[True, True, True]]


def test_with_slots_runs_the_same_weights_with_more_slots():
    model = tiny("one-shot", "ST", slots=3)
    wide = with_slots(model, 5)
    assert model.config.num_slots == 3 and wide.config.num_slots == 5 and with_slots(model, 3) is model
    assert all(a is b for a, b in zip(model.parameters(), wide.parameters(), strict=True))
    frames = torch.rand(1, 3, *SIZE)
    masks = (torch.rand(1, 5, *SIZE) > 0.7).float()
    with torch.no_grad():
        few, _ = model.step(frames, model.init_state(1), masks[:, :3])
        many, state = wide.step(frames, wide.init_state(1), masks)
    assert state.num_slots == 5 and many.shape[1] == 5
    torch.testing.assert_close(many[:, :3], few)  # slot s depends only on slots < s
    with pytest.raises(ValueError, match="num_slots=6"):
        model.init_state(1, num_slots=6)  # the model itself keeps its own count


def test_bad_inputs_are_refused_with_names():
    zs, os_ = tiny("zero-shot"), tiny("one-shot")
    x = torch.rand(1, 3, *SIZE)
    with pytest.raises(ValueError, match="one-shot models"):
        zs.step(x, zs.init_state(1), torch.rand(1, 3, *SIZE))
    with pytest.raises(ValueError, match=r"given_masks must be \(B, S, H, W\)"):
        os_.step(x, os_.init_state(1), torch.rand(1, 2, *SIZE))
    with pytest.raises(ValueError, match="do not match the state"):
        os_.step(torch.rand(1, 3, 32, 32), os_.init_state(1))
    with pytest.raises(ValueError, match=r"num_active_slots=4"):
        os_.step(x, os_.init_state(1), num_active_slots=4)
    with pytest.raises(ValueError, match=r"num_slots=9"):
        os_.init_state(1, num_slots=9)
