"""One case from scanner grid to network grid and back: crop, normalise, resample (nnU-Net's order of steps).

`preprocess_case` puts the axes in the network's order (`plans.transpose_forward`: the thickest axis first, as
nnU-Net), crops to the non-zero region, z-scores each channel (statistics inside the crop), and resamples to
`plans.target_spacing` (paper Sec. 3: Dataset A at [4.0, 0.875, 0.875]); a case already at the target spacing is not
resampled, so mapping it back is exact. `restore_to_original` undoes the geometry for the network's logits (then
softmax, nnU-Net's export) or class probabilities, as the plan's `resampling.restore` says. Every step is recorded
in a JSON-able `properties` dict that travels with the case (cache, predictor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from RCSegNeXtCore.data.io import Geometry, Image
from RCSegNeXtCore.data.resample import (new_shape_for_spacing, resample_image, resample_label,
                                         resample_probabilities, same_spacing)
from RCSegNeXtCore.errors import DatasetError, PlanError
from RCSegNeXtCore.plans import Plans, inverse_permutation, resampling_settings

MAX_CLASS_LOCATIONS = 10_000  # sampled voxels per foreground class, for foreground oversampling in training


@dataclass
class PreprocessedCase:
    data: np.ndarray                   # float32 (C, z, y, x) on the target spacing
    label: Optional[np.ndarray]        # int8 (z, y, x) or None
    properties: Dict[str, Any]


def nonzero_bbox(data: np.ndarray) -> List[List[int]]:
    """[[z0, z1], [y0, y1], [x0, x1]] (end exclusive) of voxels non-zero in any channel; whole image when none."""
    mask = np.any(data != 0, axis=0) if data.ndim == 4 else data != 0
    bbox = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        bbox.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, int(mask.shape[axis])])
    return bbox


def bbox_slices(bbox: Sequence[Sequence[int]]) -> tuple:
    return tuple(slice(int(lo), int(hi)) for lo, hi in bbox)


def normalize(data: np.ndarray, schemes: Sequence[str], intensity_properties: Optional[dict] = None) -> np.ndarray:
    """Per channel: 'zscore' (this case's mean/std, nnU-Net's MRI default), 'ct' (clip to the dataset's
    0.5/99.5 percentiles, dataset mean/std) or 'none'. Returns float32."""
    if len(schemes) != data.shape[0]:
        raise PlanError(f"the plan names {len(schemes)} normalisation scheme(s) {list(schemes)} for "
                        f"{data.shape[0]} channel(s); give one per channel in plans.json 'normalization'")
    out = np.empty(data.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        channel = data[c].astype(np.float32, copy=False)
        if scheme == "zscore":
            mean, std = float(channel.mean(dtype=np.float64)), float(channel.std(dtype=np.float64))
            out[c] = (channel - mean) / max(std, 1e-8)
        elif scheme == "ct":
            stats = (intensity_properties or {}).get(str(c))
            if not stats or stats.get("mean") is None:
                raise PlanError(f"channel {c} uses 'ct' normalisation but plans.json has no intensity statistics "
                                "for it; re-create the plan from a dataset with labelled voxels (`rcsegnext plan`)")
            clipped = np.clip(channel, stats["percentile_00_5"], stats["percentile_99_5"])
            out[c] = (clipped - stats["mean"]) / max(float(stats["std"]), 1e-8)
        elif scheme in ("none", "noNorm"):
            out[c] = channel
        else:
            raise PlanError(f"unknown normalisation {scheme!r} for channel {c}; use 'zscore', 'ct' or 'none'")
    return out


def sample_class_locations(label: np.ndarray, classes: Sequence[int], max_per_class: int = MAX_CLASS_LOCATIONS,
                           seed: int = 1234) -> Dict[str, List[List[int]]]:
    """Up to `max_per_class` random (z, y, x) voxel indices of each class (JSON-able), for patch oversampling."""
    rng = np.random.default_rng(seed)
    locations = {}
    for value in classes:
        where = np.argwhere(label == value)
        if len(where) > max_per_class:
            where = where[np.sort(rng.choice(len(where), max_per_class, replace=False))]
        locations[str(int(value))] = where.astype(int).tolist()
    return locations


def _channels_first(image: Image, plans: Plans) -> np.ndarray:
    data = image.array[None] if image.array.ndim == 3 else image.array
    if data.ndim != 4 or tuple(data.shape[1:]) != tuple(image.geometry.shape):
        raise DatasetError(f"image array shape {image.array.shape} does not fit its geometry shape "
                           f"{tuple(image.geometry.shape)}; expected (C, z, y, x)")
    if data.shape[0] != plans.architecture.in_channels:
        raise DatasetError(f"image has {data.shape[0]} channel(s) but the plan expects "
                           f"{plans.architecture.in_channels} ({', '.join(plans.channel_names.values())}); "
                           "give one file per channel")
    if not np.isfinite(data).all():
        raise DatasetError("image holds NaN or infinite voxels; fix or re-export the image")
    return data


def _check_label(label: np.ndarray, shape: Sequence[int], plans: Plans) -> None:
    if tuple(label.shape) != tuple(shape):
        raise DatasetError(f"label shape (z,y,x) {tuple(label.shape)} differs from image shape {tuple(shape)}; "
                           "the label must be on the image's voxel grid")
    values = np.unique(label)
    bad = [int(v) for v in values if v < 0 or v >= plans.num_classes or v != int(v)]
    if bad:
        raise DatasetError(f"label values {bad} are not classes of the plan {plans.labels}; "
                           "relabel the mask or fix the labels in dataset.json")


def preprocess_case(image: Image, plans: Plans, label: Optional[np.ndarray] = None) -> PreprocessedCase:
    """Transpose (thickest axis first), crop to non-zero, normalise, resample to `plans.target_spacing`; records
    every step in `properties` (crop box, shapes and spacing on the transposed grid)."""
    data = _channels_first(image, plans)
    geometry = image.geometry
    if label is not None:
        _check_label(label, geometry.shape, plans)
    order = [int(a) for a in plans.transpose_forward]
    if order != [0, 1, 2]:
        data = data.transpose(0, *[a + 1 for a in order])
        label = None if label is None else label.transpose(order)
    shape = [int(n) for n in data.shape[1:]]
    bbox = nonzero_bbox(data) if plans.crop_to_nonzero else [[0, n] for n in shape]
    crop = bbox_slices(bbox)
    data = normalize(data[(slice(None), *crop)], plans.normalization, plans.intensity_properties)
    if label is not None:
        label = label[crop]
    shape_after_crop = [int(n) for n in data.shape[1:]]
    spacing = [float(geometry.spacing[a]) for a in order]
    target = [float(s) for s in plans.target_spacing]
    r = resampling_settings(plans.resampling)
    new_shape = list(shape_after_crop) if same_spacing(spacing, target) else \
        list(new_shape_for_spacing(shape_after_crop, spacing, target))
    threshold = float(r["anisotropy_threshold"])
    if new_shape != shape_after_crop:
        data = resample_image(data, new_shape, spacing, target, int(r["image_order"]), int(r["image_order_thick_axis"]),
                              threshold, r["image_interpolation"])
        if label is not None:
            label = resample_label(label, new_shape, spacing, target, int(r["label_order"]),
                                   int(r["label_order_thick_axis"]), threshold, r["label_rule"])
    properties: Dict[str, Any] = {
        "original_geometry": geometry.to_dict(), "transpose_forward": order, "crop_bbox": bbox,
        "shape_after_crop": shape_after_crop, "spacing": spacing, "target_spacing": target,
        "shape_after_resampling": [int(n) for n in data.shape[1:]], "resampled": new_shape != shape_after_crop,
        "resampling": r}
    if label is not None:
        label = np.ascontiguousarray(label, dtype=np.int8)
        present = [int(v) for v in np.unique(label)]
        properties["classes_present"] = present
        properties["class_locations"] = sample_class_locations(label, [v for v in present if v > 0])
    return PreprocessedCase(np.ascontiguousarray(data, dtype=np.float32), label, properties)


def _as_numpy(values) -> np.ndarray:
    """A numpy array, or a torch tensor (any device) as one (where the caller uses torch)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax over `axis` (the classes), in place on a float array it owns; returns it."""
    logits -= logits.max(axis=axis, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=axis, keepdims=True)
    return logits


def restore_to_original(values, properties: Dict[str, Any], logits: bool = False) -> np.ndarray:
    """(K, z, y, x) class probabilities, or the network's logits (`logits=True`), on the preprocessed grid (numpy; a
    torch tensor on any device is taken too) -> float32 probabilities (K, Z, Y, X) on the original grid: resampled
    back to the cropped region with the plan's restore orders (`resampling.restore_order`,
    `restore_order_thick_axis`; logits in float64, then softmax, as nnU-Net's export), padded with background
    (class 0 probability 1) outside it, and transposed back to the original axis order. numpy only."""
    shape_after_crop = [int(n) for n in properties["shape_after_crop"]]
    expected = [int(n) for n in properties["shape_after_resampling"]]
    if list(values.shape[1:]) != expected:
        raise ValueError(f"probabilities have spatial shape {list(values.shape[1:])}, but this case was "
                         f"preprocessed to {expected}")
    r = resampling_settings(properties.get("resampling"))
    values = _as_numpy(values)
    # the thick axis as nnU-Net's export picks it: from the network grid's spacing first, then the original's
    # (they differ for an input whose thick axis is not the plan's); 0.1 plans ("probabilities") kept the reverse
    spacings = [properties["target_spacing"], properties["spacing"]]
    if r["restore"] != "logits":
        spacings.reverse()
    restored = resample_probabilities(values.astype(np.float64) if logits else values, shape_after_crop,
                                      *spacings, int(r["restore_order"]),
                                      int(r["restore_order_thick_axis"]), float(r["anisotropy_threshold"]))
    if logits:
        restored = softmax(restored.astype(np.float32))
    restored = restored.astype(np.float32, copy=False)
    order = [int(a) for a in properties.get("transpose_forward", (0, 1, 2))]
    original = Geometry.from_dict(properties["original_geometry"])
    out = np.zeros((restored.shape[0], *[original.shape[a] for a in order]), dtype=np.float32)
    out[0] = 1.0
    out[(slice(None), *bbox_slices(properties["crop_bbox"]))] = restored
    if order != [0, 1, 2]:
        out = np.ascontiguousarray(out.transpose(0, *[a + 1 for a in inverse_permutation(order)]))
    return out
