"""Planning: kernels and pooling strides from the voxel spacing (the paper's Algorithm 1, Appendix A), a patch size
for a dataset, and the plans.json built from them (paper Sec. 3).

Target spacing = nnU-Net's rule (`target_spacing`: the median spacing, but the thick axis takes the 10th percentile of
its spacings when the data are anisotropic in spacing and in voxels) or the plain median (`target_spacing_rule`);
axis order = the thickest axis of that spacing first (`transpose_for`, nnU-Net's transpose_forward); patch size = the
paper's [16, 320, 320], shrunk on axes where the median image (after resampling) is smaller, to the smallest size
that covers it and is divisible by the total pooling stride; kernels and strides from Algorithm 1 with pooling
stopped below 4 voxels (`plan_for_patch`); batch size 2.
A plan's spacings, sizes, kernels and strides are in the network's (z, y, x) order, i.e. after the transpose; the
fingerprint's are in the images' own order.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.plans import TARGET_SPACING_RULES, Architecture, Plans
from RCSegNeXtCore.strides import total_stride

DEFAULT_PATCH_SIZE = (16, 320, 320)  # paper Sec. 3, Dataset A
ANISOTROPY_THRESHOLD = 3.0           # nnU-Net's ANISO_THRESHOLD (target spacing rule)
NUM_POOLING = 4                       # paper Appendix A: four poolings, five stages
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


def plan_kernels_and_strides(spacing: Sequence[float], num_pooling: int = NUM_POOLING) -> Tuple[List[Triple], List[Triple]]:
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


def plan_for_patch(spacing: Sequence[float], patch_size: Sequence[int], num_pooling: int = NUM_POOLING,
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


def _round_up(value: float, multiple: int) -> int:
    return int(np.ceil(value / multiple) * multiple)


def fit_patch_size(spacing: Sequence[float], median_shape: Sequence[float],
                   default_patch: Sequence[int] = DEFAULT_PATCH_SIZE, num_pooling: int = NUM_POOLING) -> List[int]:
    """Per axis the default patch, or where the median shape is smaller, the smallest size >= it that the network
    (Algorithm 1 with pooling stopped below 4 voxels) accepts. Among valid choices the smallest patch wins, then
    the one with the most pooling."""
    options = []
    for median, default in zip(median_shape, default_patch):
        if median >= default:
            options.append([int(default)])
        else:
            sizes = {min(int(default), _round_up(max(median, 1.0), 2 ** k)) for k in range(num_pooling + 1)}
            options.append(sorted(sizes))
    best, best_key = None, None
    for candidate in itertools.product(*options):
        try:
            _, strides = plan_for_patch(spacing, candidate, num_pooling)
        except PlanError:
            continue
        pooling = int(np.prod(total_stride(strides)))
        key = (int(np.prod(candidate)), -pooling)
        if best_key is None or key < best_key:
            best, best_key = list(candidate), key
    if best is None:  # the default itself is always a valid fallback when it is divisible
        plan_for_patch(spacing, default_patch, num_pooling)
        best = [int(p) for p in default_patch]
    return best


def _split_overrides(overrides: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in overrides.items() if v is not None}


def make_plans_from_values(spacing: Sequence[float], patch_size: Sequence[int] = DEFAULT_PATCH_SIZE,
                           **overrides) -> Plans:
    """A plan without a dataset: `make_plans_from_values([4.0, 0.875, 0.875], [16, 320, 320], base_channels=8)`.

    `overrides` are Plans or Architecture field names (labels, channel_names, batch_size, base_channels, ...);
    in_channels/num_classes follow channel_names/labels when those are given."""
    overrides = _split_overrides(overrides)
    num_pooling = int(overrides.pop("num_pooling", NUM_POOLING))
    spacing = [float(s) for s in spacing]
    patch = [int(p) for p in patch_size]
    kernels, strides = plan_for_patch(spacing, patch, num_pooling)
    if "labels" in overrides:
        overrides["labels"] = {str(k): int(v) for k, v in overrides["labels"].items()}
        overrides.setdefault("num_classes", len(overrides["labels"]))
    if "channel_names" in overrides:
        overrides["channel_names"] = {str(k): str(v) for k, v in overrides["channel_names"].items()}
        overrides.setdefault("in_channels", len(overrides["channel_names"]))
        overrides.setdefault("normalization", ["zscore"] * len(overrides["channel_names"]))
    overrides.setdefault("target_spacing_rule", "given")
    plans = Plans(target_spacing=spacing, patch_size=patch, kernels=kernels, strides=strides,
                  architecture=Architecture()).with_overrides(**overrides)
    plans.validate("plan")
    return plans


def target_spacing(spacings: Sequence[Sequence[float]], shapes_after_crop: Sequence[Sequence[float]],
                   rule: str = "nnunet") -> List[float]:
    """The target spacing for cases of these spacings and cropped shapes (each in the images' own axis order).

    "median": the per-axis median. "nnunet": nnU-Net v2.1.2's ExperimentPlanner.determine_fullres_target_spacing:
    the median, but when the coarsest axis of it is > 3x the others' coarsest spacing AND the median shape has
    < 1/3 of the others' smallest size along it, that axis takes the 10th percentile of the cases' spacings on it
    (never below the others' coarsest spacing: then that + 1e-5)."""
    if rule not in ("nnunet", "median"):
        raise PlanError(f"target spacing rule {rule!r}: use nnunet or median")
    spacings = np.asarray(spacings, dtype=float).reshape(-1, 3)
    target = np.percentile(spacings, 50, 0)
    if rule == "median":
        return [float(v) for v in target]
    size = np.percentile(np.asarray(shapes_after_crop, dtype=float).reshape(-1, 3), 50, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    other_spacing = max(target[i] for i in others)
    anisotropic_spacing = target[worst] > ANISOTROPY_THRESHOLD * other_spacing
    anisotropic_voxels = size[worst] * ANISOTROPY_THRESHOLD < min(size[i] for i in others)
    if anisotropic_spacing and anisotropic_voxels:
        value = float(np.percentile(spacings[:, worst], 10))
        if value < other_spacing:
            value = max(other_spacing, value) + 1e-5
        target[worst] = value
    return [float(v) for v in target]


def transpose_for(spacing: Sequence[float]) -> List[int]:
    """nnU-Net's transpose_forward for a target spacing in the images' order: the coarsest axis first (the first
    of equals), the others in their order."""
    worst = int(np.argmax(np.asarray(spacing, dtype=float)))
    return [worst] + [i for i in range(3) if i != worst]


def make_plans(fingerprint: Dict[str, Any], dataset: Optional[Any] = None, **overrides) -> Plans:
    """The plan for a fingerprinted dataset; `overrides` (target_spacing, patch_size, base_channels, ...) win.

    `target_spacing_rule` ("nnunet", default, or "median") chooses the target spacing, `transpose_forward` may fix the
    axis order (default: the coarsest axis of the rule's spacing first); a given `target_spacing` is in the network's
    order (after the transpose)."""
    overrides = _split_overrides(overrides)
    rule = overrides.pop("target_spacing_rule", "nnunet")
    if rule not in TARGET_SPACING_RULES:
        raise PlanError(f"target_spacing_rule {rule!r}: use one of {', '.join(TARGET_SPACING_RULES)}")
    cases = fingerprint.get("cases") or []
    if cases and rule != "given":
        ruled = target_spacing([c["spacing"] for c in cases], [c["shape_after_crop"] for c in cases], rule)
    else:
        ruled = [float(s) for s in fingerprint["median_spacing"]]
    order = [int(a) for a in overrides.pop("transpose_forward", transpose_for(ruled))]
    if "target_spacing" in overrides:
        rule = "given"
    spacing = [float(s) for s in overrides.pop("target_spacing", [ruled[a] for a in order])]
    median_crop = np.asarray(fingerprint["median_shape_after_crop"], dtype=float)[order]
    median_spacing = np.asarray(fingerprint["median_spacing"], dtype=float)[order]
    median_shape = median_crop * median_spacing / np.asarray(spacing)  # median case on the target grid
    num_pooling = int(overrides.get("num_pooling", NUM_POOLING))
    patch = overrides.pop("patch_size", None) or fit_patch_size(spacing, median_shape, DEFAULT_PATCH_SIZE,
                                                                num_pooling)
    labels = dict(dataset.labels) if dataset is not None else dict(fingerprint["labels"])
    channel_names = dict(dataset.channel_names) if dataset is not None else dict(fingerprint["channel_names"])
    values = dict(labels=labels, channel_names=channel_names, normalization=list(fingerprint["normalization"]),
                  median_shape=[int(round(v)) for v in median_shape], median_spacing=[float(v) for v in median_spacing],
                  intensity_properties=fingerprint["intensity_properties"],
                  dataset_name=str(fingerprint.get("dataset_name", "")),
                  num_training_cases=int(fingerprint["num_cases"]),
                  slice_orientation=fingerprint.get("slice_orientation"),
                  transpose_forward=order, target_spacing_rule=rule)
    values.update(overrides)
    return make_plans_from_values(spacing, patch, **values)
