"""Algorithm 1 (paper Appendix A) on hand-computed spacings, and the patch-aware plan."""
from __future__ import annotations

import pytest

from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.planning import plan_for_patch, plan_kernels_and_strides, total_stride

A, B2, I3 = [1, 3, 3], [1, 2, 2], [3, 3, 3]
S2 = [2, 2, 2]

# (spacing, kernels, strides), each worked out by hand from Algorithm 1's ratio rule
HAND_COMPUTED = [
    # Dataset A: ratios 4.57 -> 2.29 -> 1.14 -> 1.14 (the paper's text lists one kernel too few)
    ([4.0, 0.875, 0.875], [A, A, I3, I3, I3], [B2, B2, S2, S2]),
    # Dataset B native: ratios 14.1 -> 7.05 -> 3.53 -> 1.76 -> 1.76
    ([3.3, 0.234, 0.234], [A, A, A, I3, I3], [B2, B2, B2, S2]),
    # Dataset B resized to [21, 512, 512]: ratios 7.05 -> 3.53 -> 1.76 -> 1.76
    ([3.3, 0.468, 0.468], [A, A, I3, I3, I3], [B2, B2, S2, S2]),
    # isotropic 1 mm
    ([1.0, 1.0, 1.0], [I3] * 5, [S2] * 4),
    # thick y axis: 3.0 / 0.8 = 3.75 -> then 3.0 / 1.6 = 1.875
    ([0.8, 3.0, 0.8], [[3, 1, 3], I3, I3, I3, I3], [[2, 1, 2], S2, S2, S2]),
    # thick x axis exactly at the boundary: ratio 2 counts as "fine" (<= 2)
    ([1.0, 1.0, 2.0], [I3] * 5, [S2] * 4),
    # thick x axis just above it: 2.5 -> then 2.5 / 2 = 1.25
    ([1.0, 1.0, 2.5], [[3, 3, 1], I3, I3, I3, I3], [[2, 2, 1], S2, S2, S2]),
    # two thick axes of different thickness: ratios [5, 1, 2.5] -> [2.5, 1, 1.25] -> [1.25, 1, 1.25]
    ([5.0, 1.0, 2.5], [[1, 3, 1], A, I3, I3, I3], [[1, 2, 1], B2, S2, S2]),
]


@pytest.mark.parametrize("spacing,kernels,strides", HAND_COMPUTED)
def test_algorithm1_hand_computed(spacing, kernels, strides):
    assert plan_kernels_and_strides(spacing) == (kernels, strides)


def test_algorithm1_number_of_poolings():
    kernels, strides = plan_kernels_and_strides([4.0, 0.875, 0.875], num_pooling=2)
    assert kernels == [A, A, I3] and strides == [B2, B2]
    assert plan_kernels_and_strides([1, 1, 1], num_pooling=0) == ([I3], [])


def test_total_stride():
    assert total_stride([B2, B2, S2, S2]) == [4, 16, 16]
    assert total_stride([[2, 1, 2], [1, 1, 2]]) == [2, 1, 4]
    assert total_stride([]) == [1, 1, 1]


def test_plan_for_patch_matches_algorithm1_when_the_patch_is_large():
    assert plan_for_patch([4.0, 0.875, 0.875], [16, 320, 320]) == plan_kernels_and_strides([4.0, 0.875, 0.875])


def test_plan_for_patch_stops_pooling_small_axes():
    # isotropic, z = 16: 16 -> 8 -> 4, then 2 < 4 voxels: no more pooling along z; kernels stay Algorithm 1's
    kernels, strides = plan_for_patch([1.0, 1.0, 1.0], [16, 128, 128])
    assert kernels == [I3] * 5
    assert strides == [S2, S2, B2, B2]
    # Dataset A, z = 8: Algorithm 1 pools z in the last two steps; 8 -> 4 is allowed, 4 -> 2 is not
    kernels, strides = plan_for_patch([4.0, 0.875, 0.875], [8, 64, 64])
    assert kernels == [A, A, I3, I3, I3]
    assert strides == [B2, B2, S2, B2]
    # a larger minimum feature size stops earlier
    assert plan_for_patch([1.0, 1.0, 1.0], [16, 128, 128], min_feature_size=8)[1] == [S2, B2, B2, [1, 2, 2]]


def test_plan_for_patch_not_divisible_names_both_values():
    with pytest.raises(PlanError) as info:
        plan_for_patch([4.0, 0.875, 0.875], [16, 320, 328])
    message = str(info.value)
    assert "[16, 320, 328]" in message and "[4, 16, 16]" in message and "divisible" in message
    # 18 -> 9 -> 4.5: pooled (4.5 >= 4) but not divisible
    with pytest.raises(PlanError, match="divisible"):
        plan_for_patch([1.0, 1.0, 1.0], [18, 64, 64])


@pytest.mark.parametrize("spacing", [[1.0, 1.0], [1.0, -1.0, 1.0], [0, 1, 1], "abc", [1.0, None, 1.0]])
def test_bad_spacing_is_a_plan_error(spacing):
    with pytest.raises(PlanError, match="spacing"):
        plan_kernels_and_strides(spacing)


@pytest.mark.parametrize("patch", [[16, 320], [16.5, 320, 320], [0, 320, 320]])
def test_bad_patch_is_a_plan_error(patch):
    with pytest.raises(PlanError, match="patch"):
        plan_for_patch([4.0, 0.875, 0.875], patch)
