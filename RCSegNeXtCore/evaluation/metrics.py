"""Per-case segmentation metrics: Dice (the paper's primary metric, Sec. 3.1), HD95 and volumes.

One implementation for `rcsegnext evaluate`, validation during training and the Slicer Dice panel.

Conventions (stated once, used everywhere):
- Dice = 2|P∩R| / (|P| + |R|). Both masks empty -> nan ("n/a": excluded from means, counted as n_both_empty);
  exactly one empty -> 0.
- HD95 (mm) follows MONAI's `compute_hausdorff_distance(percentile=95)`: surface voxels are the mask minus its
  6-connected erosion (outside the image counts as background); the distance from each surface voxel of one mask to
  the nearest surface voxel of the other is exact Euclidean in physical units (voxel spacing); HD95 is the larger of
  the two directed 95th percentiles (linear interpolation). Both empty -> nan; exactly one empty -> inf (excluded
  from HD95 means and counted as n_hd95_inf).
- Volumes in millilitres: voxel count x voxel volume (mm^3) / 1000.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import numpy as np
import SimpleITK as sitk

from RCSegNeXtCore.evaluation import EvaluationError

LabelValue = Union[int, Sequence[int]]

CONVENTION = ("Dice: both empty -> n/a (excluded from means, counted as n_both_empty), one empty -> 0. "
              "HD95 (mm): max of the two directed 95th percentiles of surface-voxel distances (MONAI convention, "
              "6-connected surface, physical spacing); both empty -> n/a, one empty -> inf (excluded from means, "
              "counted as n_hd95_inf). std uses ddof=1.")


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; "
                              "both must be on the same voxel grid")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise EvaluationError(f"spacing {spacing} must be {ndim} positive numbers (z, y, x) in mm")
    return spacing


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice of two binary masks (non-zero = foreground); nan when both are empty."""
    pred, ref = _as_bool(pred_mask), _as_bool(ref_mask)
    _check_pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Foreground volume in millilitres of a (z, y, x) mask with voxel spacing in mm."""
    mask = _as_bool(mask)
    spacing = _check_spacing(spacing, mask.ndim)
    return int(mask.sum()) * float(np.prod(spacing)) / 1000.0


def _crop_pad(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union and pad one background voxel on every side."""
    union = pred | ref
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(union))
    return np.pad(pred[box], 1), np.pad(ref[box], 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a 6-neighbour outside the mask; `mask` must have a one-voxel background border."""
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    eroded = mask[core].copy()
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            eroded &= mask[tuple(slice(1 + shift, mask.shape[a] - 1 + shift) if a == axis else slice(1, -1)
                                 for a in range(mask.ndim))]
    surface = np.zeros_like(mask)
    surface[core] = mask[core] & ~eroded
    return surface


def _distance_map(surface: np.ndarray, spacing: tuple) -> np.ndarray:
    """Exact Euclidean distance (mm) from every voxel to the nearest `surface` voxel (SimpleITK Maurer)."""
    image = sitk.GetImageFromArray(surface.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing)))
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayViewFromImage(dist).astype(np.float64), 0.0)


def surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(distances pred surface -> ref surface, distances ref surface -> pred surface) in mm; both masks non-empty."""
    pred, ref = _as_bool(pred_mask), _as_bool(ref_mask)
    _check_pair(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        raise EvaluationError("surface distances need two non-empty masks")
    pred, ref = _crop_pad(pred, ref)
    pred_surface, ref_surface = _surface(pred), _surface(ref)
    return _distance_map(ref_surface, spacing)[pred_surface], _distance_map(pred_surface, spacing)[ref_surface]


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], percentile: float = 95.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (MONAI convention; see module docstring).

    nan when both masks are empty, inf when exactly one is empty.
    """
    pred, ref = _as_bool(pred_mask), _as_bool(ref_mask)
    _check_pair(pred, ref)
    _check_spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return float("nan")
    if not has_pred or not has_ref:
        return float("inf")
    forward, backward = surface_distances(pred, ref, spacing)
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def label_mask(labels: np.ndarray, value: LabelValue) -> np.ndarray:
    """Binary mask of a label value, or of a region given as several values (nnU-Net region style)."""
    if isinstance(value, (list, tuple)):
        return np.isin(labels, np.asarray(value))
    return labels == int(value)


def foreground_labels(labels: Mapping[str, LabelValue]) -> dict[str, LabelValue]:
    """The classes to score: every entry of dataset.json's "labels" except background (value 0)."""
    return {name: value for name, value in labels.items()
            if not (isinstance(value, (int, np.integer)) and int(value) == 0) and name.lower() != "background"}


def class_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> dict:
    """All metrics of one class in one case (see module docstring for the empty-mask conventions)."""
    pred, ref = _as_bool(pred_mask), _as_bool(ref_mask)
    voxel_ml = float(np.prod(_check_spacing(spacing, pred.ndim))) / 1000.0
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    status = "both_empty" if n_pred == n_ref == 0 else "ref_empty" if n_ref == 0 else \
        "pred_empty" if n_pred == 0 else "ok"
    return {"dice": dice(pred, ref), "hd95": hd95(pred, ref, spacing),
            "volume_pred_ml": n_pred * voxel_ml, "volume_ref_ml": n_ref * voxel_ml,
            "volume_diff_ml": (n_pred - n_ref) * voxel_ml,
            "voxels_pred": n_pred, "voxels_ref": n_ref, "voxels_overlap": int(np.logical_and(pred, ref).sum()),
            "status": status}


def case_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, labels: Mapping[str, LabelValue],
                 spacing: Sequence[float]) -> dict[str, dict]:
    """Per-class metrics of one case: {class name: {dice, hd95, volume_pred_ml, volume_ref_ml, volume_diff_ml,
    voxels_pred, voxels_ref, voxels_overlap, status}}. `labels` is dataset.json's name -> value map."""
    pred, ref = np.asarray(pred_labels), np.asarray(ref_labels)
    _check_pair(pred, ref)
    return {name: class_metrics(label_mask(pred, value), label_mask(ref, value), spacing)
            for name, value in foreground_labels(labels).items()}


def _stats(values: list[float]) -> dict:
    finite = [v for v in values if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else float("nan")
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")
    return {"mean": mean, "std": std, "count": len(finite)}


def summarize(cases: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict]:
    """Per-class aggregate over cases: mean/std(ddof=1)/count of each metric over its finite values, plus
    n_cases, n_both_empty (Dice n/a) and n_hd95_inf (one mask empty)."""
    classes: list[str] = []
    for per_class in cases.values():
        classes += [name for name in per_class if name not in classes]
    summary = {}
    for name in classes:
        rows = [per_class[name] for per_class in cases.values() if name in per_class]
        entry = {metric: _stats([float(r[metric]) for r in rows])
                 for metric in ("dice", "hd95", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml")}
        entry["abs_volume_diff_ml"] = _stats([abs(float(r["volume_diff_ml"])) for r in rows])
        entry["n_cases"] = len(rows)
        entry["n_both_empty"] = sum(1 for r in rows if math.isnan(float(r["dice"])))
        entry["n_hd95_inf"] = sum(1 for r in rows if math.isinf(float(r["hd95"])))
        summary[name] = entry
    return summary
