"""Kernel sizes and pooling strides from the voxel spacing: the paper's Algorithm 1 (Appendix A).

All spacings, sizes, kernels and strides are in (z, y, x) order; any axis may be the thick one.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from RCSegNeXtCore.errors import PlanError

Triple = List[int]

# Algorithm 1 compares ratio <= 2; a tiny tolerance keeps e.g. 1.75/0.875 (exactly 2 on paper) from flipping on
# floating-point noise.
_RATIO_LIMIT = 2.0 * (1.0 + 1e-9)


def _check_triple(name: str, values: Sequence, kind: type) -> List:
    try:
        out = [kind(v) for v in values]
    except (TypeError, ValueError):
        raise PlanError(f"{name} must be 3 numbers in (z, y, x), got {values!r}") from None
    if len(out) != 3 or not all(v > 0 for v in out) or (kind is int and any(o != v for o, v in zip(out, values))):
        raise PlanError(f"{name} must be 3 positive {kind.__name__}s in (z, y, x), got {list(values)!r}")
    return out


def _kernel_and_stride(spacing: Sequence[float]) -> Tuple[Triple, Triple]:
    """One step of Algorithm 1: ratio to the smallest spacing; <= 2 -> kernel 3 / stride 2, else 1 / 1."""
    smallest = min(spacing)
    fine = [sp / smallest <= _RATIO_LIMIT for sp in spacing]
    return [3 if f else 1 for f in fine], [2 if f else 1 for f in fine]


def plan_kernels_and_strides(spacing: Sequence[float], num_pooling: int = 4) -> Tuple[List[Triple], List[Triple]]:
    """Algorithm 1: `num_pooling + 1` stage kernels and `num_pooling` pooling strides for a (z, y, x) spacing.

    >>> plan_kernels_and_strides([4.0, 0.875, 0.875])[1]
    [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    """
    current = _check_triple("spacing", spacing, float)
    if int(num_pooling) != num_pooling or num_pooling < 0:
        raise PlanError(f"num_pooling must be a non-negative integer, got {num_pooling!r}")
    kernels: List[Triple] = []
    strides: List[Triple] = []
    for _ in range(int(num_pooling)):
        kernel, stride = _kernel_and_stride(current)
        current = [sp * st for sp, st in zip(current, stride)]
        kernels.append(kernel)
        strides.append(stride)
    kernels.append(_kernel_and_stride(current)[0])  # the bottleneck ("saddle") stage
    return kernels, strides


def total_stride(strides: Sequence[Sequence[int]]) -> Triple:
    """Product of all pooling strides per axis: the patch (and any network input) must be divisible by it."""
    total = [1, 1, 1]
    for stride in strides:
        total = [t * int(s) for t, s in zip(total, stride)]
    return total


def plan_for_patch(spacing: Sequence[float], patch_size: Sequence[int], num_pooling: int = 4,
                   min_feature_size: int = 4) -> Tuple[List[Triple], List[Triple]]:
    """Algorithm 1 for a chosen patch: pooling of an axis stops once its feature map would fall below
    `min_feature_size` voxels (stride 1 on that axis from then on); kernels stay Algorithm 1's.

    Raises PlanError when the patch is not divisible by the resulting total stride.
    """
    patch = _check_triple("patch size", patch_size, int)
    if int(min_feature_size) != min_feature_size or min_feature_size < 1:
        raise PlanError(f"min_feature_size must be a positive integer, got {min_feature_size!r}")
    kernels, planned = plan_kernels_and_strides(spacing, num_pooling)
    size = [float(p) for p in patch]
    strides: List[Triple] = []
    for stride in planned:
        actual = [st if sz / st >= min_feature_size else 1 for st, sz in zip(stride, size)]
        size = [sz / st for sz, st in zip(size, actual)]
        strides.append(actual)
    total = total_stride(strides)
    if any(p % t for p, t in zip(patch, total)):
        suggestion = [max(t, round(p / t) * t) for p, t in zip(patch, total)]
        raise PlanError(f"patch size {patch} is not divisible by the total pooling stride {total} of strides "
                        f"{strides}; use a multiple of it per axis, e.g. {suggestion}")
    return kernels, strides
