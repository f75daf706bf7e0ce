"""The review map: where the model is unsure, per voxel, and one score per case to sort a worklist by.

Two voxel maps, float32 in [0, 1], on the input's grid:
- **uncertainty** (the map written by `predict --uncertainty`): the normalised entropy H(p) / log K of the final
  softmax p, the one whose argmax is the written label map (0: one class certain; 1: every class equally likely).
  Same definition with or without folds / TTA, so maps of different runs compare.
- **disagreement** (several members only: folds x TTA mirrors): the mutual information H(mean_m p_m) - mean_m H(p_m)
  between the members' softmaxes, / log K. The sliding window keeps it as running Gaussian-weighted sums of each
  member's probabilities (K channels) and entropy (1 channel), never every member's probabilities; overlapping
  tiles enter those sums like members, with their Gaussian weights. By the concavity of H it is >= 0; 0 when all
  members agree.
Both are computed on the network grid's logits and brought back like the probabilities are (`restore_map`).

**Per-case score** (`case_score`): the mean uncertainty over the predicted tumour's boundary band, the voxels within
BAND_RADIUS voxels (Euclidean, in-plane: the two axes other than the thickest) of the predicted tumour surface,
inside and outside; when no tumour is predicted, the band of the whole foreground (every label > 0); when nothing is
predicted, the whole volume. numpy + scipy only.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

BAND_RADIUS = 2  # voxels, in-plane: the per-case score's band around the predicted surface
TUMOUR_NAMES = ("tumour", "tumor")


def log_classes(num_classes: int) -> float:
    """log K, the entropy of a uniform softmax over K classes (the normaliser; 1 for K = 1 so nothing divides by 0)."""
    return math.log(num_classes) if num_classes > 1 else 1.0


def normalized_entropy(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """H(p) / log K of class probabilities along `axis`, float32 in [0, 1] (0 log 0 = 0)."""
    p = np.asarray(probabilities, dtype=np.float32)
    logs = np.log(np.clip(p, np.finfo(np.float32).tiny, None))
    entropy = -(p * logs).sum(axis=axis)
    entropy /= log_classes(p.shape[axis])
    return np.clip(entropy, 0.0, 1.0, out=entropy).astype(np.float32, copy=False)


def softmax_and_entropy(logits: np.ndarray, probabilities: np.ndarray, entropy: np.ndarray,
                        scratch: np.ndarray) -> None:
    """Per member: softmax over axis 1 of (B, K, ...) `logits` into `probabilities` and its entropy (nats) into
    `entropy` (B, ...), without logs of probabilities: H = logsumexp(z) - sum_k p_k z_k (exact for p_k -> 0).
    `scratch`: a buffer shaped like `probabilities` (the window reuses its buffers for every tile)."""
    np.subtract(logits, logits.max(axis=1, keepdims=True), out=scratch)       # z - max
    np.exp(scratch, out=probabilities)
    total = probabilities.sum(axis=1)
    probabilities /= total[:, None]
    scratch *= probabilities
    np.subtract(np.log(total), scratch.sum(axis=1), out=entropy)


def mutual_information(mean_probabilities: np.ndarray, mean_entropy: np.ndarray) -> np.ndarray:
    """Disagreement of members from their (weighted) mean softmax (K, ...) and mean entropy (nats, ...):
    (H(mean p) - mean H(p_m)) / log K, float32 clipped to [0, 1] (rounding can make it a hair negative)."""
    out = normalized_entropy(mean_probabilities) - mean_entropy / np.float32(log_classes(mean_probabilities.shape[0]))
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def restore_map(values: np.ndarray, properties: Dict[str, Any]) -> np.ndarray:
    """A (z, y, x) map on the preprocessed grid -> float32 on the original grid in [0, 1]: resampled to the cropped
    region linearly in-plane and with the plan's `restore_order_thick_axis` along a thick axis (the probabilities'
    rule, data.preprocess.restore_to_original, but never above linear so values stay in [0, 1]), 0 outside the crop
    (there the prediction is certain background), axes transposed back."""
    from RCSegNeXtCore.data.io import Geometry
    from RCSegNeXtCore.data.preprocess import bbox_slices
    from RCSegNeXtCore.data.resample import resample_probabilities
    from RCSegNeXtCore.plans import inverse_permutation, resampling_settings

    expected = [int(n) for n in properties["shape_after_resampling"]]
    if list(values.shape) != expected:
        raise ValueError(f"map has shape {list(values.shape)}, but this case was preprocessed to {expected}")
    r = resampling_settings(properties.get("resampling"))
    spacings = [properties["target_spacing"], properties["spacing"]]
    if r["restore"] != "logits":  # the 0.1 rule picks the thick axis the other way round (restore_to_original)
        spacings.reverse()
    restored = resample_probabilities(np.asarray(values, np.float32)[None],
                                      [int(n) for n in properties["shape_after_crop"]], *spacings,
                                      min(int(r["restore_order"]), 1), min(int(r["restore_order_thick_axis"]), 1),
                                      float(r["anisotropy_threshold"]))[0]
    order = [int(a) for a in properties.get("transpose_forward", (0, 1, 2))]
    original = Geometry.from_dict(properties["original_geometry"])
    out = np.zeros([original.shape[a] for a in order], dtype=np.float32)
    out[bbox_slices(properties["crop_bbox"])] = restored
    if order != [0, 1, 2]:
        out = np.ascontiguousarray(out.transpose(*inverse_permutation(order)))
    return np.clip(out, 0.0, 1.0, out=out)


def tumour_label(labels: Mapping[str, int]) -> Optional[int]:
    """The value of the tumour label in a dataset.json `labels` mapping (name tumour / tumor), None without one."""
    for name, value in labels.items():
        if name.strip().lower() in TUMOUR_NAMES:
            return int(value)
    return None


def _disk(radius: int) -> np.ndarray:
    """In-plane Euclidean disk of `radius` voxels as a (1, 2r+1, 2r+1) structuring element."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (yy ** 2 + xx ** 2 <= radius ** 2)[None]


def boundary_band(mask: np.ndarray, spacing: Sequence[float], radius: int = BAND_RADIUS) -> np.ndarray:
    """Voxels within `radius` voxels (in-plane, Euclidean) of the surface of `mask`, on both sides: the dilation
    minus the erosion by an in-plane disk, slice by slice along the thickest axis (the first for ties)."""
    from scipy.ndimage import binary_dilation, binary_erosion
    axis = int(np.argmax(np.asarray(spacing, float)))
    moved = np.moveaxis(np.asarray(mask, bool), axis, 0)
    disk = _disk(radius)
    # border_value=1: the image edge is no surface for the erosion (a mask touching it is not cut open there)
    band = binary_dilation(moved, disk) & ~binary_erosion(moved, disk, border_value=1)
    return np.moveaxis(band, 0, axis)


def score_region(labels: np.ndarray, spacing: Sequence[float], tumour: Optional[int] = 2
                 ) -> Tuple[Optional[np.ndarray], str]:
    """(mask, region) the per-case score averages over: the predicted tumour's boundary band ("tumour"), else the
    whole foreground's band ("foreground"), else the whole volume ("volume", mask None); see the module docstring."""
    for region, mask in (("tumour", labels == tumour if tumour is not None else None), ("foreground", labels > 0)):
        if mask is not None and mask.any():
            return boundary_band(mask, spacing), region
    return None, "volume"


def region_mean(values: np.ndarray, mask: Optional[np.ndarray]) -> float:
    """The mean of a map over a `score_region` mask (None: everywhere)."""
    values = np.asarray(values, np.float32)
    if mask is not None and values.shape != mask.shape:
        raise ValueError(f"map {values.shape} and labels {mask.shape} are on different grids")
    return float((values if mask is None else values[mask]).mean(dtype=np.float64))


def case_score(uncertainty: np.ndarray, labels: np.ndarray, spacing: Sequence[float],
               tumour: Optional[int] = 2) -> Tuple[float, str]:
    """(score, region): the mean of `uncertainty` over `score_region`. `labels` is the predicted label map on the
    same grid, `tumour` its tumour value."""
    if np.shape(uncertainty) != labels.shape:
        raise ValueError(f"uncertainty {np.shape(uncertainty)} and labels {labels.shape} are on different grids")
    mask, region = score_region(labels, spacing, tumour)
    return region_mean(uncertainty, mask), region


def score_metadata(score: float, region: str, disagreement: Optional[float] = None) -> Dict[str, str]:
    """Header keys of a prediction's review score (NRRD / .seg.nrrd / MHA; beside export.provenance's)."""
    keys = {"RCSegNeXt_UncertaintyScore": f"{score:.6f}", "RCSegNeXt_UncertaintyRegion": region}
    if disagreement is not None:
        keys["RCSegNeXt_Disagreement"] = f"{disagreement:.6f}"
    return keys
