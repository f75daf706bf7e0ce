"""plans.json from a dataset fingerprint or from explicit values (paper Sec. 3 and Appendix A).

Target spacing = median spacing; patch size = the paper's [16, 320, 320], shrunk on axes where the median image
(after resampling) is smaller, to the smallest size that covers it and is divisible by the total pooling stride;
kernels and strides from Algorithm 1 (`planner.plan_for_patch`); batch size 2.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.planner import plan_for_patch
from RCSegNeXtCore.plans import Architecture, Plans

DEFAULT_PATCH_SIZE = (16, 320, 320)  # paper Sec. 3, Dataset A
NUM_POOLING = 4                       # paper Appendix A: four poolings, five stages


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
        pooling = int(np.prod([np.prod(s) for s in strides]))
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
    plans = Plans(target_spacing=spacing, patch_size=patch, kernels=kernels, strides=strides,
                  architecture=Architecture()).with_overrides(**overrides)
    plans.validate("plan")
    return plans


def make_plans(fingerprint: Dict[str, Any], dataset: Optional[Any] = None, **overrides) -> Plans:
    """The plan for a fingerprinted dataset; `overrides` (target_spacing, patch_size, base_channels, ...) win."""
    overrides = _split_overrides(overrides)
    spacing = [float(s) for s in overrides.pop("target_spacing", fingerprint["median_spacing"])]
    median_crop = np.asarray(fingerprint["median_shape_after_crop"], dtype=float)
    median_spacing = np.asarray(fingerprint["median_spacing"], dtype=float)
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
                  slice_orientation=fingerprint.get("slice_orientation"))
    values.update(overrides)
    return make_plans_from_values(spacing, patch, **values)
