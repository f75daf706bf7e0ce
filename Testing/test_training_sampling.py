"""Patch placement of the sampler: nnU-Net's margin (windows may leave the case) and the demo's foreground jitter;
which samples are forced onto foreground (nnU-Net's batch-position rule, per DDP rank)."""
import numpy as np
import pytest

from RCSegNeXtCore.training.sampler import (PatchSampler, TrainingCase, class_locations_from, forced_positions,
                                            rank_slice)

SHAPE = (4, 40, 40)


def _coded_case() -> TrainingCase:
    """Each voxel's value encodes its (z, y, x) + 1, so a patch tells where it was cut (0 = padding)."""
    z, y, x = np.indices(SHAPE)
    data = (z * 10000 + y * 100 + x + 1).astype(np.float32)[None]
    label = np.zeros(SHAPE, np.uint8)
    label[2, 20, 31] = 2                                    # one tumour voxel
    return TrainingCase("coded", data, label, class_locations_from(None, label))


def _starts(image: np.ndarray) -> tuple:
    """Window start (z, y, x) from the first non-padding voxel of a coded patch."""
    pz, py, px = np.argwhere(image[0] > 0)[0]
    v = int(image[0, pz, py, px]) - 1
    return v // 10000 - pz, (v // 100) % 100 - py, v % 100 - px


def test_default_windows_stay_inside_and_centre_the_voxel():
    sampler = PatchSampler([_coded_case()], [4, 16, 16], oversample_foreground=0.5, seed=0)
    images, labels, forced = sampler.batch(400)
    starts = np.array([_starts(i) for i in images])
    assert starts.min() >= 0 and starts[:, 1:].max() <= 40 - 16           # inside the case, no padding
    assert (starts[forced] == [0, 20 - 8, 31 - 8]).all()                   # voxel at the patch centre
    assert (labels[forced][:, 2, 8, 8] == 2).all()


@pytest.mark.parametrize("placement", ["nnunet", "inside"])
def test_margin_lets_windows_reach_past_the_border(placement):
    m = 4                                                   # need_to_pad 2m: half of it on each side
    sampler = PatchSampler([_coded_case()], [4, 24, 24], oversample_foreground=0.0, seed=1, margin=[0, 2 * m, 2 * m],
                           placement=placement)
    starts = np.array([_starts(i) for i in sampler.batch(600)[0]])
    # uniform over [-m, 40 - 24 + m]: both ends are drawn, nothing beyond
    assert starts[:, 1].min() == -m and starts[:, 1].max() == 40 - 24 + m
    assert starts[:, 2].min() == -m and starts[:, 2].max() == 40 - 24 + m
    assert (starts[:, 0] == 0).all()


def test_an_odd_need_to_pad_gives_its_extra_voxel_to_the_upper_side_as_nnunet():
    sampler = PatchSampler([_coded_case()], [4, 24, 24], oversample_foreground=0.0, seed=1, margin=[0, 5, 5])
    starts = np.array([_starts(i) for i in sampler.batch(600)[0]])
    assert starts[:, 1].min() == -2 and starts[:, 1].max() == 40 + 2 + 1 - 24   # get_bbox's lbs / ubs


@pytest.mark.parametrize("placement, start", [("nnunet", 38 - 8), ("inside", 40 - 16)])
def test_a_forced_window_near_the_upper_edge_runs_past_it_only_as_nnunet(placement, start):
    case = _coded_case()
    case.label[:] = 0
    case.label[2, 20, 38] = 1                               # foreground 2 voxels from the upper x edge
    case.class_locations = class_locations_from(None, case.label)
    sampler = PatchSampler([case], [4, 16, 16], oversample_foreground=1.0, seed=0, placement=placement)
    images, labels, forced = sampler.batch(4)
    assert forced.all() and {_starts(i)[2] for i in images} == {start}
    if placement == "nnunet":                               # centred on the voxel, zero-padded past the case
        assert (labels[:, 2, 8, 8] == 1).all() and (images[:, 0, :, :, 16 - 6:] == 0).all()


def test_an_unknown_placement_is_refused():
    with pytest.raises(ValueError, match="sampler_placement"):
        PatchSampler([_coded_case()], [4, 16, 16], placement="centre")


def test_jitter_keeps_the_voxel_in_the_final_patch_at_varying_positions():
    m, p = 4, 24                                            # final patch = 24 - 2 * 4 = 16
    sampler = PatchSampler([_coded_case()], [4, p, p], oversample_foreground=1.0, seed=2, margin=[0, 2 * m, 2 * m],
                           jitter_foreground=True)
    images, labels, forced = sampler.batch(500)
    assert forced.all()
    starts = np.array([_starts(i) for i in images])
    offset_y, offset_x = 20 - starts[:, 1] - m, 31 - starts[:, 2] - m       # voxel inside the final patch
    assert offset_y.min() >= 0 and offset_y.max() <= p - 2 * m - 1
    # y: every position 0..15 fits inside the case's window range; x: 31 is near the border, the range is clipped
    assert len(set(offset_y.tolist())) == p - 2 * m
    assert offset_x.min() >= 0 and offset_x.max() <= p - 2 * m - 1 and starts[:, 2].max() == 40 - p + m
    crop = labels[:, :, m:p - m, m:p - m]
    assert ((crop == 2).reshape(len(crop), -1).sum(1) == 1).all()


# -- which samples are forced: nnU-Net v2.1's rule, not a coin per patch -------------------------------------------
@pytest.mark.parametrize("batch, expected", [
    (1, [False]), (2, [False, True]), (3, [False, False, True]), (4, [False, False, False, True]),
    (6, [False] * 4 + [True] * 2), (12, [False] * 8 + [True] * 4)])
def test_the_last_samples_of_a_batch_are_forced(batch, expected):
    # sample i forced iff not i < round(B * (1 - 0.33))
    assert forced_positions(batch, 0.33) == expected


@pytest.mark.parametrize("global_batch, world, expected", [
    (2, 2, [[False], [True]]),                                   # the paper's batch 2 on 2 GPUs: rank 1 forces
    (4, 2, [[False, False], [False, True]]),
    (4, 4, [[False], [False], [False], [True]]),
    (6, 3, [[False, False], [False, False], [True, True]]),
    (12, 4, [[False] * 3, [False] * 3, [False, False, True], [True] * 3])])
def test_under_ddp_each_rank_forces_its_slice_of_the_global_rule(global_batch, world, expected):
    per_rank = []
    for rank in range(world):
        offset, size = rank_slice(global_batch, rank, world)
        per_rank.append(forced_positions(size, 0.33, global_batch, offset))
    assert per_rank == expected
    assert sum(per_rank, []) == forced_positions(global_batch, 0.33)


@pytest.mark.parametrize("global_batch, world, slices", [
    (2, 2, [(0, 1), (1, 1)]), (5, 2, [(0, 3), (3, 2)]), (7, 3, [(0, 3), (3, 3), (6, 1)]),   # nnU-Net's ceil split
    (4, 3, [(0, 2), (2, 1), (3, 1)]),                       # nnU-Net: 2, 2, 0 (a rank without samples): even
    (1, 2, [(0, 1), (1, 1)])])                              # fewer samples than ranks: one each
def test_ranks_split_the_global_batch_as_nnunet(global_batch, world, slices):
    assert [rank_slice(global_batch, r, world) for r in range(world)] == slices


def test_sampler_forces_the_same_positions_in_every_batch():
    case = _coded_case()
    sampler = PatchSampler([case], [4, 16, 16], seed=3)                     # defaults: 0.33, batch position
    for _ in range(20):
        assert sampler.batch(2)[2].tolist() == [False, True]
    rank1 = PatchSampler([case], [4, 16, 16], seed=3, global_batch=4, batch_offset=2)
    assert all(rank1.batch(2)[2].tolist() == [False, True] for _ in range(20))
    rank0 = PatchSampler([case], [4, 16, 16], seed=3, global_batch=4, batch_offset=0)
    assert not any(rank0.batch(2)[2].any() for _ in range(20))
    coin = PatchSampler([case], [4, 16, 16], seed=3, oversample_rule="random", oversample_foreground=0.33)
    fraction = np.mean([coin.batch(2)[2] for _ in range(1500)])
    assert abs(fraction - 0.33) < 0.03                                      # 0.1's rule: a coin per patch
    with pytest.raises(ValueError, match="oversample_rule"):
        PatchSampler([case], [4, 16, 16], oversample_rule="last")
