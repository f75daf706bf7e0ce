"""Dataset fingerprint: spacings, shapes after cropping and foreground intensities (nnU-Net's planning input).

The median spacing becomes the target spacing (paper Sec. 3: Dataset A's median [4.0, 0.875, 0.875]); intensity
statistics of the labelled (foreground) voxels are kept per channel; MRI channels get per-case z-scoring.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from RCSegNeXtCore.data.cache import map_over
from RCSegNeXtCore.data.preprocess import nonzero_bbox
from RCSegNeXtCore.errors import DatasetError

SAMPLES_PER_CASE = 10_000  # foreground voxels per case and channel pooled for the dataset statistics


def _statistics(values: np.ndarray) -> Dict[str, float]:
    if values.size == 0:  # no foreground (e.g. a negative case): nothing to report, JSON null
        return dict.fromkeys(("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5"))
    low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
    return {"mean": float(values.mean(dtype=np.float64)), "std": float(values.std(dtype=np.float64)),
            "median": float(median), "min": float(values.min()), "max": float(values.max()),
            "percentile_00_5": float(low), "percentile_99_5": float(high)}


def case_fingerprint(case) -> Tuple[Dict[str, Any], List[np.ndarray]]:
    """One case: spacing, shapes, per-channel foreground statistics, and a sample of foreground intensities."""
    from RCSegNeXtCore.data.dataset import read_case
    image, label = read_case(case)
    data = image.array
    bbox = nonzero_bbox(data)
    crop = tuple(slice(lo, hi) for lo, hi in bbox)
    # foreground = labelled voxels; without a label, the non-zero voxels
    mask = (label.array > 0) if label is not None else np.any(data != 0, axis=0)
    rng = np.random.default_rng(1234)
    stats, samples = [], []
    for channel in data:
        values = channel[mask]
        stats.append(_statistics(values))
        take = rng.choice(values.size, min(SAMPLES_PER_CASE, values.size), replace=False) if values.size else []
        samples.append(values[take].astype(np.float32))
    info = {"case_id": case.case_id, "spacing": [float(s) for s in image.geometry.spacing],
            "shape": [int(n) for n in image.geometry.shape],
            "slice_orientation": image.geometry.slice_orientation(),
            "shape_after_crop": [hi - lo for lo, hi in bbox], "crop_bbox": bbox,
            "foreground_voxels": int(mask.sum()), "intensity_statistics": {str(c): s for c, s in enumerate(stats)},
            "classes_present": [] if label is None else [int(v) for v in np.unique(label.array[crop])]}
    return info, samples


def _normalization_for(channel_name: str) -> str:
    return "ct" if channel_name.strip().upper() == "CT" else "zscore"  # MRI (T2, ...): per-case z-score


def _majority(values) -> Optional[str]:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def compute_fingerprint(dataset, workers: int = 1, progress: bool = True) -> Dict[str, Any]:
    """Fingerprint of a `Dataset` (or dataset folder): per-case spacing and shape after crop, their medians,
    pooled foreground intensity statistics per channel, and the normalisation each channel gets. JSON-able."""
    from RCSegNeXtCore.data.dataset import load_dataset
    if isinstance(dataset, (str, os.PathLike)):
        dataset = load_dataset(dataset)
    if not dataset.cases:
        raise DatasetError(f"{dataset.root}: no training case to fingerprint; add cases to imagesTr/")
    results = map_over(case_fingerprint, list(dataset.cases), workers, "fingerprint", progress)
    cases = [info for info, _ in results]
    channel_names = {str(k): str(v) for k, v in dataset.channel_names.items()}
    intensity = {}
    for c in range(len(channel_names)):
        pooled = np.concatenate([samples[c] for _, samples in results]) if results else np.zeros(0)
        intensity[str(c)] = _statistics(pooled)
    spacings = np.array([info["spacing"] for info in cases], dtype=float).reshape(-1, 3)
    shapes = np.array([info["shape_after_crop"] for info in cases], dtype=float).reshape(-1, 3)
    return {
        "dataset_name": str(dataset.dataset_json.get("name", dataset.root.name)),
        "num_cases": len(cases),
        "labels": {str(k): int(v) for k, v in dataset.labels.items()},
        "channel_names": channel_names,
        "normalization": [_normalization_for(channel_names[k]) for k in sorted(channel_names, key=int)],
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "slice_orientation": _majority(info.get("slice_orientation") for info in cases),
        "median_shape_after_crop": [float(v) for v in np.median(shapes, axis=0)],
        "intensity_properties": intensity,
        "cases": cases,
    }
