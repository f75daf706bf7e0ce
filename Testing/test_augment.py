"""The augmentation's rules against the official pipeline's facts (nnU-Net v2.1 + batchgenerators v1; the fact sheet
../shared/reference/official_training_setup.md): dummy 2D decided from the patch, z untouched by it, the scale and
gamma drawn 50/50 below / above 1, the noise's drawn value is its SD, blur on every axis per channel, low resolution
per channel with axis 0 kept in dummy 2D, and the interpolation kernels equal scipy's. The distributions against
batchgenerators itself: benchmarks/parity/augmentation.py (docs/nnunet_parity.md)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import require_module

from RCSegNeXtCore.training.augment import AugmentConfig, Augmenter, use_dummy_2d
from RCSegNeXtCore.training.augment import kernels as K
from RCSegNeXtCore.training.augment.intensity import low_res
from RCSegNeXtCore.training.augment.spatial import spatial_matrices
from RCSegNeXtCore.training.config import TrainingConfig


def _only(**on) -> AugmentConfig:
    """Every transform off but those in `on` (probabilities) and the other fields given."""
    cfg = AugmentConfig(**{k: v for k, v in on.items() if not k.startswith("p_")})
    for f in dataclasses.fields(cfg):
        if f.name.startswith("p_") and f.name not in ("p_blur_per_channel", "p_low_res_per_channel"):
            setattr(cfg, f.name, on.get(f.name, 0.0))
    for k, v in on.items():
        setattr(cfg, k, v)
    return cfg


def _aug(patch, seed=0, **on) -> Augmenter:
    return Augmenter(patch, _only(**on), torch.Generator().manual_seed(seed))


# -- row 11: dummy 2D from the patch --------------------------------------------------------------------------
def test_dummy_2d_is_decided_from_the_patch_not_the_spacing():
    assert use_dummy_2d([16, 320, 320], [4.0, 0.875, 0.875])               # the paper's plan: both rules agree
    assert not use_dummy_2d([64, 128, 128], [4.0, 0.875, 0.875])          # 2 <= 3: 3D, though the spacing is thick
    assert use_dummy_2d([64, 128, 128], [4.0, 0.875, 0.875], rule="spacing")
    assert use_dummy_2d([16, 64, 64], [2.0, 1.0, 1.0])                      # 4 > 3
    assert not use_dummy_2d([16, 64, 64], [2.0, 1.0, 1.0], rule="spacing")
    assert not use_dummy_2d([16, 48, 48], [4.0, 1.0, 1.0])                  # exactly 3 is not > 3
    with pytest.raises(ValueError, match="aug_dummy_2d_rule"):
        use_dummy_2d([16, 64, 64], [1.0, 1.0, 1.0], rule="both")


def test_trainer_takes_the_dummy_2d_rule_and_variants_from_the_training_config(tmp_path):
    from training_helpers import tiny_cases, tiny_plans

    from RCSegNeXtCore.training.trainer import Trainer
    cases = tiny_cases(2)
    plans = tiny_plans(patch=(16, 32, 32))                                  # spacing [3, 1, 1]: ratio 3, patch 2
    official = Trainer(plans, cases, [], tmp_path / "a", TrainingConfig(device="cpu", progress=False, threads=1))
    assert not official.aug_config.dummy_2d and official.aug_config.intensity == "nnunet_v1"
    assert official.sampler.oversample_rule == "batch_position" and official.sampler.global_batch == 2
    old = Trainer(plans, cases, [], tmp_path / "b", TrainingConfig(
        device="cpu", progress=False, threads=1, aug_dummy_2d_rule="spacing", aug_spatial_scaling="all_axes_uniform",
        aug_noise_sd="sqrt", aug_intensity="0.1", aug_interpolation="linear_nearest", oversample_rule="random"))
    assert (old.aug_config.spatial_scaling, old.aug_config.noise_sd, old.aug_config.intensity,
            old.aug_config.interpolation, old.sampler.oversample_rule) == (
        "all_axes_uniform", "sqrt", "0.1", "linear_nearest", "random")
    with pytest.raises(ValueError, match="aug_noise_sd"):
        AugmentConfig(noise_sd="variance")


def test_official_choices_are_the_training_config_defaults_and_recorded():
    record = TrainingConfig().to_dict()
    assert {k: record[k] for k in ("aug_dummy_2d_rule", "aug_spatial_scaling", "aug_noise_sd", "aug_intensity",
                                   "aug_interpolation", "oversample_rule", "oversample_foreground")} == {
        "aug_dummy_2d_rule": "patch", "aug_spatial_scaling": "in_plane_two_sided", "aug_noise_sd": "drawn",
        "aug_intensity": "nnunet_v1", "aug_interpolation": "cubic_onehot", "oversample_rule": "batch_position",
        "oversample_foreground": 0.33}
    cfg = AugmentConfig()
    assert (cfg.spatial_scaling, cfg.noise_sd, cfg.intensity, cfg.interpolation) == (
        "in_plane_two_sided", "drawn", "nnunet_v1", "cubic_onehot")


# -- row 1: dummy 2D leaves z alone, the scale is drawn 50/50 ---------------------------------------------------
def _z_coded(n=4, z=4, size=24):
    """Every slice its own constant value (z + 1) and label (z % 3)."""
    image = (torch.arange(z, dtype=torch.float32) + 1).view(1, 1, z, 1, 1).expand(n, 1, z, size, size).clone()
    label = (torch.arange(z) % 3).view(1, z, 1, 1).expand(n, z, size, size).to(torch.int16).clone()
    return image, label


def test_dummy_2d_spatial_never_mixes_slices_and_the_old_variant_does():
    image, label = _z_coded(n=16)
    aug = _aug([4, 16, 16], seed=1, p_rotation=1.0, p_scale=1.0, dummy_2d=True)
    out, lab = aug.spatial(image, label)
    for z in range(4):
        values = set(np.round(out[:, 0, z].numpy(), 4).ravel().tolist())
        assert values <= {0.0, float(z + 1)}                                  # its own slice, or outside (0)
        assert set(torch.unique(lab[:, z]).tolist()) <= {0, z % 3}
    old = _aug([4, 16, 16], seed=1, p_rotation=1.0, p_scale=1.0, dummy_2d=True, spatial_scaling="all_axes_uniform")
    out, _ = old.spatial(image, label)
    assert not set(np.round(out[:, 0, 1].numpy(), 4).ravel().tolist()) <= {0.0, 2.0}   # z zoomed: slices mixed


def test_scale_is_drawn_half_below_half_above_one():
    n = 20000
    angles, rotate = torch.zeros(n, 1), torch.zeros(n, dtype=torch.bool)
    aug = _aug([4, 16, 16], seed=2)
    factors = aug._two_sided(n, 0.7, 1.4)
    m = spatial_matrices(angles, rotate, factors, torch.ones(n, dtype=torch.bool), in_plane_scale=True)
    assert torch.equal(m[:, 0], torch.tensor([1.0, 0, 0], dtype=torch.float64).expand(n, 3))   # z: scale 1
    s = m[:, 1, 1]
    assert abs(float((s < 1).double().mean()) - 0.5) < 0.015                 # uniform would give 0.3 / 0.7 = 0.43
    assert float(s.min()) >= 0.7 and float(s.max()) <= 1.4
    below, above = s[s < 1], s[s >= 1]
    assert abs(float(below.mean()) - 0.85) < 0.005 and abs(float(above.mean()) - 1.2) < 0.005   # uniform halves
    uniform = _aug([4, 16, 16], seed=2)._uniform(n, 0.7, 1.4)
    assert abs(float((uniform < 1).double().mean()) - 3 / 7) < 0.015


def test_gamma_and_contrast_are_drawn_half_below_half_above_one():
    aug = _aug([4, 8, 8], seed=3)
    g = aug._two_sided((20000,), 0.7, 1.5)
    assert abs(float((g < 1).double().mean()) - 0.5) < 0.015                 # uniform: 0.3 / 0.8 = 0.375
    assert abs(float(g[g >= 1].mean()) - 1.25) < 0.005


# -- row 4: the drawn value is the noise's SD ---------------------------------------------------------------------
@pytest.mark.parametrize("variant, expected", [("drawn", 0.04), ("sqrt", 0.2)])
def test_noise_sd_is_the_drawn_value(variant, expected):
    aug = _aug([8, 32, 32], p_noise=1.0, noise_range=(0.04, 0.04), noise_sd=variant)
    out = aug.noise(torch.zeros(2, 1, 8, 32, 32))
    assert float(out.std()) == pytest.approx(expected, rel=0.05)


def test_noise_fires_at_its_probability_and_leaves_the_rest_untouched():
    aug = _aug([2, 4, 4], seed=4, p_noise=0.1)
    out = aug.noise(torch.zeros(20000, 1, 2, 4, 4))
    fired = (out != 0).flatten(1).any(1)
    assert abs(float(fired.double().mean()) - 0.1) < 0.007
    sd = out[fired].flatten(1).std(1)
    assert float(sd.max()) < 0.2                                             # sqrt would reach 0.32


# -- row 6: blur on every axis, per channel; low resolution per channel, axis 0 kept in dummy 2D -----------------
def test_blur_smooths_every_axis_with_one_sigma_per_channel():
    x = torch.zeros(4000, 2, 9, 9, 9)
    x[:, :, 4, 4, 4] = 1.0
    out = _aug([9, 9, 9], seed=5, p_blur=1.0).blur(x)
    blurred = (out != x).flatten(2).any(2)                                    # [N, 2]
    assert abs(float(blurred.double().mean()) - 0.5) < 0.02                  # p_per_channel 0.5
    both = float((blurred[:, 0] & blurred[:, 1]).double().mean())
    assert abs(both - 0.25) < 0.02                                           # channels independent
    r = torch.arange(9.0) - 4
    v = out[blurred]                                                         # [M, 9, 9, 9]
    var = [(v.sum(dims) * r ** 2).sum(1) for dims in ((2, 3), (1, 3), (1, 2))]
    assert torch.allclose(var[0], var[1], atol=1e-5) and torch.allclose(var[0], var[2], atol=1e-5)   # all axes
    assert 0.2 < float(var[0].min()) and float(var[0].max()) < 1.01          # sigma in [0.5, 1]
    old = _aug([9, 9, 9], seed=5, p_blur=1.0, intensity="0.1").blur(x[:4])
    assert (old[:, :, [0, 1, 2, 3, 5, 6, 7, 8]] == 0).all() and not torch.equal(old, x[:4])   # 0.1: in-plane only


def test_low_res_keeps_axis_0_in_dummy_2d_and_goes_per_channel():
    z_only = torch.linspace(-1, 1, 8).view(1, 1, 8, 1, 1).expand(2000, 2, 8, 16, 16).clone()
    out = _aug([8, 16, 16], seed=6, p_low_res=1.0, dummy_2d=True).low_res(z_only)
    assert torch.allclose(out, z_only, atol=1e-5)                            # only y, x resampled: no change
    noise = torch.randn(1, 2, 8, 16, 16, generator=torch.Generator().manual_seed(0)).expand(2000, 2, 8, 16, 16)
    out = _aug([8, 16, 16], seed=6, p_low_res=1.0, dummy_2d=True).low_res(noise.clone())
    changed = (out != noise).flatten(2).any(2)
    # p_per_channel 0.5, and a zoom above 15.5 / 16 rounds back to the same size (no change)
    assert abs(float(changed.double().mean()) - 0.5 * (15.5 / 16 - 0.5) / 0.5) < 0.02
    assert float(out.max()) <= float(noise.max()) and float(out.min()) >= float(noise.min())   # clipped


def test_low_res_equals_nearest_down_then_the_cubic_spline_up():
    ndimage = require_module("scipy.ndimage", "scipy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 17, 13)).astype(np.float32)
    for zoom in (0.5, 0.63, 0.9):
        small = np.round(np.array(x.shape) * zoom).astype(int)
        # skimage.transform.resize(mode="edge", anti_aliasing=False) = scipy zoom(grid_mode=True, mode="nearest")
        down = ndimage.zoom(x.astype(float), small / np.array(x.shape), order=0, mode="nearest", grid_mode=True)
        up = ndimage.zoom(down, np.array(x.shape) / small, order=3, mode="nearest", grid_mode=True)
        ref = np.clip(up, down.min(), down.max())
        out = low_res(torch.from_numpy(x)[None, None], torch.tensor([0]), torch.tensor([0]), [zoom], False)
        assert np.abs(out[0, 0].numpy() - ref).max() < 1e-4, zoom


# -- row 7: the kernels are scipy's ----------------------------------------------------------------------------
@pytest.mark.parametrize("recursive", [True, False])          # the CPU's recursion, the GPU's matrix product
def test_cubic_and_linear_sampling_equal_scipy_map_coordinates(recursive):
    ndimage = require_module("scipy.ndimage", "scipy")
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 1, 6, 9, 11)).astype(np.float32)
    points = rng.uniform(-1.0, 11.0, size=(2, 4, 5, 6, 3))
    coefficients = K.bspline_prefilter(torch.from_numpy(image), (2, 3, 4), recursive=recursive)
    cubic = K.bspline_sample(coefficients, torch.from_numpy(points)).numpy()
    linear = K.linear_sample(torch.from_numpy(image), torch.from_numpy(points)).numpy()
    for i in range(2):
        coords = np.moveaxis(points[i], -1, 0)
        ref3 = ndimage.map_coordinates(image[i, 0].astype(float), coords, order=3, mode="constant")
        ref1 = ndimage.map_coordinates(image[i, 0].astype(float), coords, order=1, mode="constant")
        assert np.abs(cubic[i, 0] - ref3).max() < 1e-4
        assert np.abs(linear[i, 0] - ref1).max() < 1e-4


def test_blur_kernel_equals_scipy_gaussian_filter():
    ndimage = require_module("scipy.ndimage", "scipy")
    x = np.random.default_rng(2).normal(size=(3, 5, 9, 12)).astype(np.float32)
    sigmas = [0.5, 0.77, 1.0]
    ours = K.gaussian_blur(torch.from_numpy(x), sigmas, (1, 2, 3)).numpy()
    for i, s in enumerate(sigmas):
        assert np.abs(ours[i] - ndimage.gaussian_filter(x[i], s)).max() < 1e-5


def test_label_resampling_is_one_hot_linear_and_invents_no_value():
    label = torch.zeros(64, 4, 24, 24, dtype=torch.int16)
    label[:, :, 4:12, 4:20] = 1
    label[:, :, 12:20, 4:10] = 2
    _, out = _aug([4, 16, 16], seed=7, p_rotation=1.0, p_scale=1.0).spatial(label[:, None].float(), label)
    assert set(torch.unique(out).tolist()) <= {0, 1, 2}
    # identity matrix, input 3 x 3 -> patch 2 x 2: output (0, 0) samples the point (0.5, 0.5) of the block [:2, :2]
    aug = _aug([1, 2, 2])
    identity = torch.eye(3, dtype=torch.float64)[None]

    def sample(block):
        lab = torch.zeros(1, 1, 3, 3, dtype=torch.int16)
        lab[0, 0, :2, :2] = torch.tensor(block, dtype=torch.int16)
        return int(aug.resample(lab[:, None].float(), lab, identity, torch.tensor([True]))[1][0, 0, 0, 0])
    assert sample([[2, 1], [1, 0]]) == 1          # linear votes 1: 0.5, 2: 0.25, 0: 0.25 (nearest (1, 1) says 0)
    assert sample([[1, 2], [1, 2]]) == 2          # a tie 1 / 2 goes to the nearest neighbour's label (1, 1)
    assert sample([[2, 1], [2, 1]]) == 1


# -- the region cut around a patch: nnU-Net 2.1's initial patch size ------------------------------------------------
@pytest.mark.parametrize("patch, dummy_2d, expected", [
    # nnU-Net 2.1.2's get_patch_size(patch, *rotation_for_DA, (0.85, 1.25)) (axis 0 = the patch's in dummy 2D)
    ([16, 64, 64], True, [16, 75, 75]), ([16, 64, 96], True, [16, 112, 112]),
    ([32, 32, 32], False, [51, 51, 51]), ([24, 40, 56], False, [47, 73, 71])])
def test_context_is_nnunets_initial_patch_size(patch, dummy_2d, expected):
    from RCSegNeXtCore.training.augment import AugmentConfig, context_size
    assert context_size(patch, AugmentConfig(dummy_2d=dummy_2d)) == expected
    assert context_size(patch, AugmentConfig(dummy_2d=dummy_2d, p_rotation=0.0, p_scale=0.0)) == patch
    one_and_half = [p if (i == 0 and dummy_2d) else int(np.ceil(1.5 * p)) for i, p in enumerate(patch)]
    assert context_size(patch, AugmentConfig(dummy_2d=dummy_2d), "1.5x") == one_and_half   # RCSegNeXt 0.1
    with pytest.raises(ValueError, match="sampler_context"):
        context_size(patch, AugmentConfig(dummy_2d=dummy_2d), "2x")
