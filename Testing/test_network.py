"""The RCSegNeXt network: parameter counts against the official ones, shapes, gradients, errors, block semantics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.network import (BLOCKS, IsoNeXtBlock, Res2NetBlock, ScaleAwareIntegration, build_network,
                                   count_paper_parameters, count_parameters)
from RCSegNeXtCore.planning import plan_kernels_and_strides

DATASET_A = plan_kernels_and_strides([4.0, 0.875, 0.875])
VARIANTS = [("conv", "conv"), ("aninext", "conv"), ("aninext", "convnext"), ("aninext", "res2net"),
            ("aninext", "res2next"), ("aninext", "isonext")]

# ../shared/reference/param_counts.md (official code: live, and official total = the paper's #P)
OFFICIAL = {("conv", "conv"): (22_137_347, 22_137_347), ("aninext", "conv"): (22_055_843, 22_067_331),
            ("aninext", "convnext"): (5_100_835, 5_539_587), ("aninext", "res2next"): (5_083_363, 5_522_115),
            ("aninext", "isonext"): (2_320_611, 2_759_363)}


def _meta_network(kernels_strides, **kwargs):
    with torch.device("meta"):  # counts need no memory and no initialisation time
        return build_network(*kernels_strides, **kwargs)


@pytest.mark.parametrize("aniso,iso", VARIANTS)
def test_parameter_counts_match_the_official_network(aniso, iso):
    net = _meta_network(DATASET_A, aniso_block=aniso, iso_block=iso)
    if (aniso, iso) in OFFICIAL:
        assert (count_parameters(net), count_paper_parameters(net)) == OFFICIAL[(aniso, iso)]
    else:  # res2net is not in the official code: our count, pinned (paper: 8.11 M with its own widths)
        assert count_parameters(net) == 7_754_275


def _res2net_block_formula(c_in, c_out, k3, s):
    w = c_out // s
    params = c_in * c_out + c_out + (s - 1) * (w * w * k3 + w) + c_out * c_out + c_out
    return params + (c_in * c_out + c_out if c_in != c_out else 0)


def _isonext_block_formula(c_in, c_out, k3, s, r):
    w = c_in // s
    params = (s - 1) * (w * k3 + w) + (c_in // s) * r * c_in + r * c_in + (r * c_in // w) * c_out + c_out
    return params + (c_in * c_out + c_out if c_in != c_out else 0)


@pytest.mark.parametrize("c_in,c_out", [(64, 128), (128, 128), (512, 256)])
def test_block_counts_follow_the_hand_formulas(c_in, c_out):
    with torch.device("meta"):
        assert count_parameters(Res2NetBlock(c_in, c_out, (3, 3, 3), scale=4)) == _res2net_block_formula(
            c_in, c_out, 27, 4)
        assert count_parameters(IsoNeXtBlock(c_in, c_out, (3, 3, 3), scale=4, expansion=2)) == \
            _isonext_block_formula(c_in, c_out, 27, 4, 2)


PLANS = {
    "dataset_a": (DATASET_A, [16, 32, 32]),
    "dataset_b_resized": (plan_kernels_and_strides([3.3, 0.468, 0.468]), [8, 32, 32]),
    "isotropic_1mm": (plan_kernels_and_strides([1.0, 1.0, 1.0]), [32, 32, 32]),
}


@pytest.mark.parametrize("plan", PLANS)
def test_output_shape_and_stage_blocks(plan):
    (kernels, strides), size = PLANS[plan]
    torch.manual_seed(0)
    net = build_network(kernels, strides, in_channels=2, num_classes=3, base_channels=4)
    blocks = [type(stage[0]).__name__ for stage in net.encoder]
    assert blocks == ["AniNeXtBlock" if 1 in k else "IsoNeXtBlock" for k in kernels]
    with torch.inference_mode():
        batch = 2 if plan == "dataset_a" else 1
        out = net(torch.randn(batch, 2, *size))
    assert out.shape == (batch, 3, *size)


@pytest.mark.parametrize("aniso,iso", VARIANTS)
def test_gradient_reaches_every_parameter(aniso, iso):
    torch.manual_seed(0)
    net = build_network(*DATASET_A, base_channels=4, aniso_block=aniso, iso_block=iso)
    x = torch.randn(1, 1, 8, 32, 32)
    out = net(x)
    assert out.shape == (1, 3, 8, 32, 32)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_forward_is_deterministic_and_seeded():
    def make():
        torch.manual_seed(3)
        return build_network(*DATASET_A, base_channels=4).eval()
    a, b = make(), make()
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.inference_mode():
        out = a(x)
        assert torch.equal(out, a(x))
        assert torch.equal(out, b(x))


def test_channels_last_and_decoder_features():
    torch.manual_seed(0)
    net = build_network(*DATASET_A, base_channels=4).eval()
    keys = list(net.state_dict())
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.inference_mode():
        reference = net(x)
        logits, features = net(x, return_features=True)
        net_cl = net.to(memory_format=torch.channels_last_3d)
        channels_last = net_cl(x.to(memory_format=torch.channels_last_3d))
    assert torch.equal(logits, reference)
    torch.testing.assert_close(channels_last, reference, atol=1e-5, rtol=1e-4)
    assert [tuple(f.shape) for f in features] == [(1, 4, 8, 32, 32), (1, 8, 8, 16, 16), (1, 16, 8, 8, 8),
                                                  (1, 32, 4, 4, 4)]
    assert net.decoder_widths == [4, 8, 16, 32]
    assert list(net.state_dict()) == keys


def test_saim_shuffle_order():
    """[s, r, C/s] -> [C/s, s, r]: new channel (w, g, e) comes from old channel g*r*W + e*W + w."""
    s, r, c = 4, 2, 8
    saim = ScaleAwareIntegration(c, c, scale=s, expansion=r)
    x = torch.arange(r * c, dtype=torch.float32).view(1, r * c, 1, 1, 1)
    width = c // s
    expected = [g * r * width + e * width + w for w in range(width) for g in range(s) for e in range(r)]
    assert saim.shuffle(x).flatten().tolist() == expected


def test_isonext_block_against_a_functional_reference():
    """IsoNeXt forward re-written with torch.nn.functional straight from param_counts.md."""
    torch.manual_seed(1)
    c_in, c_out, s, r = 8, 16, 4, 2
    block = IsoNeXtBlock(c_in, c_out, (3, 3, 3), scale=s, expansion=r).eval()
    x = torch.randn(2, c_in, 4, 6, 6)
    xs = torch.chunk(x, s, dim=1)
    ys, y = [], None
    for i, conv in enumerate(block.split.convs):
        y = F.conv3d(xs[i] if y is None else xs[i] + y, conv.weight, conv.bias, padding=1, groups=c_in // s)
        ys.append(y)
    h = F.instance_norm(torch.cat(ys + [xs[-1]], dim=1), eps=1e-5)
    h = F.gelu(F.conv3d(h, block.saim.expand.weight, block.saim.expand.bias, groups=s))
    h = h.view(2, s, r, c_in // s, 4, 6, 6).permute(0, 3, 1, 2, 4, 5, 6).reshape(2, r * c_in, 4, 6, 6)
    h = F.conv3d(h, block.saim.compress.weight, block.saim.compress.bias, groups=c_in // s)
    expected = h + F.conv3d(x, block.shortcut.weight, block.shortcut.bias)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), expected)


def test_unknown_block_name_lists_the_valid_ones():
    with pytest.raises(PlanError) as info:
        build_network(*DATASET_A, iso_block="transformer")
    assert "transformer" in str(info.value) and all(name in str(info.value) for name in BLOCKS)


def test_channels_not_divisible_by_scale():
    with pytest.raises(PlanError, match="not divisible by scale 4"):
        build_network(*DATASET_A, base_channels=5)  # IsoNeXt stage 3 input: 10 channels
    with pytest.raises(PlanError, match="scale"):
        build_network(*DATASET_A, base_channels=4, scale=3)


def test_input_not_divisible_by_total_stride():
    net = build_network(*DATASET_A, base_channels=4)
    with pytest.raises(PlanError, match=r"\[4, 16, 16\]"):
        net(torch.zeros(1, 1, 16, 40, 32))
    with pytest.raises(PlanError, match="input"):
        net(torch.zeros(1, 2, 16, 32, 32))


@pytest.mark.parametrize("kwargs", [dict(kernels=[[1, 3, 3]], strides=[[1, 2, 2]]),
                                    dict(kernels=[[1, 3], [3, 3, 3]], strides=[[2, 2, 2]])])
def test_inconsistent_plan(kwargs):
    with pytest.raises(PlanError):
        build_network(kwargs["kernels"], kwargs["strides"])


def test_summary_totals_and_flops():
    from torch.utils.flop_counter import FlopCounterMode

    from RCSegNeXtCore.network.summary import summarize_network
    summary = summarize_network(*DATASET_A, [16, 320, 320])
    assert (summary.live_params, summary.paper_params) == (2_320_611, 2_759_363)
    stem = summary.rows[0]
    assert stem.name == "stem" and stem.gflops == pytest.approx(2 * 1 * 32 * 16 * 320 * 320 / 1e9)  # 2 x MACs
    assert [r.block for r in summary.rows[1:6]] == ["aninext", "aninext", "isonext", "isonext", "isonext"]
    assert summary.rows[5].feature_size == [4, 20, 20]
    # the per-stage GFLOPs add up to a real (non-meta) count of the whole network on a small patch
    small = summarize_network(*DATASET_A, [16, 32, 32], base_channels=4)
    torch.manual_seed(0)
    net = build_network(*DATASET_A, base_channels=4)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 1, 16, 32, 32))
    assert small.gflops == pytest.approx(counter.get_total_flops() / 1e9)
    assert "2,759,363" in summary.format() and "2,320,611" in summary.format()


def test_summary_command(capsys, tmp_path):
    from RCSegNeXtCore.cli import main
    assert main(["summary", "--aniso-block", "conv", "--iso-block", "conv"]) == 0
    assert "22,137,347" in capsys.readouterr().out
    assert main(["summary", "--spacing", "1", "1", "1", "--patch", "64", "64", "64", "--base-channels", "8"]) == 0
    out = capsys.readouterr().out
    assert "isonext" in out and "aninext" not in out
    assert main(["summary", "--patch", "16", "320", "330"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main(["summary", "--iso-block", "vit"]) == 2
    assert "valid block types" in capsys.readouterr().err

    from RCSegNeXtCore.plans import Plans
    kernels, strides = PLANS["dataset_b_resized"][0]
    Plans(target_spacing=[3.3, 0.468, 0.468], patch_size=[16, 256, 256], kernels=kernels,
          strides=strides).with_overrides(base_channels=8).save(tmp_path / "plans.json")
    assert main(["summary", "--plans", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "16x256x256" in out and "base width 8" in out
    assert f"{count_parameters(_meta_network((kernels, strides), base_channels=8)):,}" in out
