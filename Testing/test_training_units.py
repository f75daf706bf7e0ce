"""Loss, poly schedule, splits, patch sampler, augmentation and the CPU memory estimate."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import require_module

from RCSegNeXtCore.errors import DatasetError
from RCSegNeXtCore.training.augment import AugmentConfig, Augmenter, context_size
from RCSegNeXtCore.training.loss import DiceCELoss, soft_dice_loss
from RCSegNeXtCore.training.sampler import PatchSampler, TrainingCase, class_locations_from
from RCSegNeXtCore.training.schedule import PolyLRScheduler, poly_lr
from RCSegNeXtCore.training.splits import (cases_for_fold, get_or_create_splits, load_splits, make_splits,
                                           parse_fold)


# -- loss -----------------------------------------------------------------------------------------------------
def test_dice_ce_matches_monai():
    monai_losses = require_module("monai.losses", "monai")
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 8, 8)
    target = torch.randint(0, 3, (2, 4, 8, 8))
    for batch in (True, False):                  # batch Dice (our default, as nnU-Net) and per-sample Dice
        ours = DiceCELoss(batch_dice=batch)(logits, target)
        ref = monai_losses.DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5,
                                      smooth_dr=1e-5, batch=batch)(logits, target[:, None])
        assert torch.allclose(ours, ref, atol=1e-5)


def test_dice_loss_perfect_and_disjoint():
    target = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    target[0, :, :2] = 1
    perfect = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float() * 100
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    assert soft_dice_loss(-perfect, target).item() == pytest.approx(1.0, abs=1e-4)


def test_poly_schedule_hand_computed():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)      # 0.0053589
    assert poly_lr(0.01, 100, 100) == 0.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PolyLRScheduler(opt, 0.01, 10)
    assert sched.step(9) == pytest.approx(0.01 * 0.1 ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 ** 0.9)


# -- splits ---------------------------------------------------------------------------------------------------
def test_splits_deterministic_nnunet_format(tmp_path):
    ids = [f"case_{i:03d}" for i in range(12)][::-1]
    splits = make_splits(ids, 5)
    assert splits == make_splits(sorted(ids), 5)
    assert [len(s["val"]) for s in splits] == [3, 3, 2, 2, 2]              # sklearn KFold sizes
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == sorted(ids)                                      # every case validated exactly once
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"]) and len(s["train"]) + len(s["val"]) == 12
        assert s["train"] == sorted(s["train"])
    path = tmp_path / "splits_final.json"
    assert get_or_create_splits(path, ids) == splits
    data = json.loads(path.read_text())
    assert isinstance(data, list) and set(data[0]) == {"train", "val"}
    assert cases_for_fold(splits, 1, ids) == (splits[1]["train"], splits[1]["val"])
    assert cases_for_fold(None, parse_fold("all"), ids) == (sorted(ids), [])


def test_splits_user_file_accepted_and_checked(tmp_path):
    ids = ["a", "b", "c"]
    user = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["c"], "val": ["a", "b"]}]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(user))
    assert get_or_create_splits(path, ids) == user
    path.write_text(json.dumps([{"train": ["a", "zz"], "val": ["c"]}]))
    with pytest.raises(DatasetError, match="zz"):
        load_splits(path, ids)


def test_fewer_cases_than_folds_refused():
    with pytest.raises(DatasetError, match="3 case.*fewer than the 5 folds.*--fold all"):
        make_splits(["a", "b", "c"], 5)
    with pytest.raises(DatasetError, match="fold 7 does not exist"):
        cases_for_fold(make_splits(list("abcde"), 5), 7, list("abcde"))


# -- sampler --------------------------------------------------------------------------------------------------
def _sparse_case() -> TrainingCase:
    label = np.zeros((20, 64, 64), np.uint8)
    label[3, 5, 7] = 1                         # one rectum voxel, one tumour voxel far apart
    label[15, 50, 40] = 2
    data = np.random.default_rng(0).normal(size=(1, 20, 64, 64)).astype(np.float32)
    return TrainingCase("sparse", data, label, class_locations_from(None, label))


def test_sampler_oversamples_a_third_including_tumour():
    case = _sparse_case()
    sampler = PatchSampler([case], [4, 16, 16], oversample_foreground=1 / 3, seed=3, oversample_rule="random")
    n = 3000
    images, labels, forced = sampler.batch(n)
    assert images.shape == (n, 1, 4, 16, 16) and labels.shape == (n, 4, 16, 16)
    fraction = forced.mean()
    assert abs(fraction - 1 / 3) < 0.03                                     # binomial sd ~0.009
    has_fg = (labels > 0).reshape(n, -1).any(1)
    assert has_fg[forced].all()                                             # forced patches hold their voxel
    assert has_fg[~forced].mean() < 0.05                                    # random ones almost never
    tumour = (labels == 2).reshape(n, -1).any(1)
    assert 0.3 < tumour[forced].mean() < 0.7                                # classes chosen uniformly
    # patches are exact crops of the case: the forced tumour patch is centred on the tumour voxel
    idx = int(np.flatnonzero(forced & tumour & ~(labels == 1).reshape(n, -1).any(1))[0])
    assert labels[idx, 2, 8, 8] == 2
    assert np.array_equal(images[idx], case.data[:, 13:17, 42:58, 32:48])


def test_sampler_pads_small_cases_and_is_seeded():
    label = np.ones((2, 10, 10), np.uint8)
    case = TrainingCase("small", np.ones((1, 2, 10, 10), np.float32), label, class_locations_from(None, label))
    a = PatchSampler([case], [4, 16, 16], seed=1).batch(4)
    b = PatchSampler([case], [4, 16, 16], seed=1).batch(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    images, labels, forced = a
    assert labels.shape == (4, 4, 16, 16) and forced.tolist() == [False, False, False, True]
    assert (labels[~forced].sum(axis=(1, 2, 3)) == 2 * 10 * 10).all()      # random windows: the case once, zeros around
    assert (labels[forced][:, 2, 8, 8] == 1).all()                          # forced: the voxel at the centre (nnU-Net)
    inside = PatchSampler([case], [4, 16, 16], seed=1, placement="inside").batch(4)
    assert inside[1].sum() == 4 * 2 * 10 * 10                               # 0.1: every window holds the whole case


# -- augmentation ---------------------------------------------------------------------------------------------
def _off(**on) -> AugmentConfig:
    cfg = AugmentConfig()
    for name in list(vars(cfg)):
        if name.startswith("p_"):
            setattr(cfg, name, 0.0)
    for k, v in on.items():
        setattr(cfg, k, v)
    return cfg


def _pattern():
    label = torch.zeros(1, 4, 16, 16, dtype=torch.int16)
    label[0, :, 2:6, 3:12] = 1                 # an asymmetric L: bar plus a foot of the other class
    label[0, :, 6:13, 3:6] = 2
    return label[:, None].float() * 10 + 1, label


def test_rotation_by_90_degrees_matches_rot90_and_keeps_alignment():
    image, label = _pattern()
    cfg = _off(p_rotation=1.0, rotation_degrees=90.0)
    aug = Augmenter([4, 16, 16], cfg)
    # force exactly +90 degrees: patch the generator draw through a config range of a single value
    cfg.rotation_degrees = 90.0
    aug._uniform = lambda shape, lo, hi: torch.full(shape if isinstance(shape, tuple) else (shape,), hi)  # +90 deg
    out_image, out_label = aug.spatial(image, label)
    rotated = torch.rot90(label, 1, dims=(2, 3)) if torch.equal(
        out_label, torch.rot90(label, 1, dims=(2, 3))) else torch.rot90(label, -1, dims=(2, 3))
    assert torch.equal(out_label, rotated)                   # a pure 90-degree turn, no voxel lost or invented
    assert not torch.equal(out_label, label)
    assert torch.allclose(out_image[:, 0], out_label.float() * 10 + 1, atol=1e-4)   # image turned with its label


def test_mirroring_and_random_spatial_keep_label_values_and_alignment():
    image, label = _pattern()
    image, label = image.repeat(4, 1, 1, 1, 1), label.repeat(4, 1, 1, 1)
    aug = Augmenter([4, 16, 16], _off(p_mirror=1.0, p_rotation=1.0, p_scale=1.0),
                    torch.Generator().manual_seed(5))
    out_image, out_label = aug.spatial(image, label)
    out_image, out_label = aug.mirror(out_image, out_label)
    assert set(torch.unique(out_label).tolist()) <= {0, 1, 2}
    # wherever the image is exactly a class value (inside a region, not at an interpolated edge) they agree
    exact = (out_image[:, 0] - torch.round(out_image[:, 0])).abs() < 1e-4
    agree = (out_image[:, 0].round() == out_label.float() * 10 + 1) | (out_image[:, 0].round() == 0)
    assert agree[exact].float().mean() > 0.98
    # mirroring alone: the exact flip of both
    aug2 = Augmenter([4, 16, 16], _off(p_mirror=1.0), torch.Generator().manual_seed(0))
    m_image, m_label = aug2.mirror(*_pattern())
    assert torch.equal(m_label, _pattern()[1].flip([1, 2, 3]))
    assert torch.equal(m_image, _pattern()[0].flip([2, 3, 4]))


def test_intensity_augmentations_change_image_not_shape():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 24, 24)
    aug = Augmenter([8, 16, 16], AugmentConfig(p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_low_res=1,
                                               p_gamma=1, p_gamma_inverted=0), torch.Generator().manual_seed(1))
    label = torch.zeros(3, 8, 24, 24, dtype=torch.int16)
    out, lab = aug(x, label)
    assert out.shape == (3, 1, 8, 16, 16) and lab.shape == (3, 8, 16, 16)
    assert torch.isfinite(out).all() and not torch.allclose(out, x[..., 4:20, 4:20])
    assert context_size([16, 320, 320], AugmentConfig()) == [16, 376, 376]          # nnU-Net: 320 / 0.85
    assert context_size([16, 320, 320], AugmentConfig(), "1.5x") == [16, 480, 480]   # RCSegNeXt 0.1


# -- memory ---------------------------------------------------------------------------------------------------
def test_memory_estimate_refuses_oversized_cpu_config_with_a_proposal():
    from RCSegNeXtCore.planning import plan_for_patch
    from RCSegNeXtCore.plans import Plans
    from RCSegNeXtCore.training.memory import (OutOfMemoryPlan, check_fits, estimate_training_memory,
                                               network_profile)
    kernels, strides = plan_for_patch([4.0, 0.875, 0.875], [16, 320, 320])
    plans = Plans(target_spacing=[4.0, 0.875, 0.875], patch_size=[16, 320, 320], kernels=kernels, strides=strides)
    profile = network_profile(plans)
    paper = estimate_training_memory(plans, 2, [16, 320, 320], profile)
    assert 20 < paper.gib < 45                                    # "~30 GB on CPU" for batch 2 x [16, 320, 320]
    half = estimate_training_memory(plans, 1, [16, 320, 320], profile)
    assert half.bytes_activations == pytest.approx(paper.bytes_activations / 2, rel=1e-6)
    with pytest.raises(OutOfMemoryPlan, match=r"needs about .* GiB .* only 8.0 GiB is free; try --batch-size 1 "
                                              r"--patch-size 16 (\d+) \1"):
        check_fits(plans, 2, [16, 320, 320], "cpu", available=8 * 2 ** 30)
    assert check_fits(plans, 2, [16, 320, 320], "cuda", available=1) is None   # GPUs are not estimated
    assert check_fits(plans, 1, [16, 64, 64], "cpu", available=8 * 2 ** 30).gib < 8
