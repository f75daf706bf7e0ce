"""Evaluate a folder of predicted label maps against a folder of references; read and write metrics.json.

Files are matched by case id (the file name without its image extension, e.g. `case_001.nii.gz` -> `case_001`).
A prediction on a different voxel grid than its reference is an error (never resampled silently).

metrics.json layout (also written by training for `RUN/fold_K/validation/metrics.json`):
`{"convention", "labels": {name: value}, "cases": {case_id: {class: {dice, hd95, volume_*_ml, ...}}},
"summary": {class: {dice: {mean, std, count}, ..., n_both_empty, n_hd95_inf}}, "mean_dice",
"missing_predictions": [...], "unmatched_predictions": [...], "unexpected_labels": {case: {role: [values]}}}`. nan is stored as null and inf as "inf".
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from RCSegNeXtCore.data.io import IMAGE_EXTENSIONS, Geometry, read_geometry, read_image, split_extension
from RCSegNeXtCore.evaluation import EvaluationError
from RCSegNeXtCore.evaluation.metrics import CONVENTION, LabelValue, case_metrics, foreground_labels, summarize
from RCSegNeXtCore.files import atomic_write_json
from RCSegNeXtCore.progress import ProgressBar


def list_label_files(folder: str | os.PathLike) -> dict[str, Path]:
    """case id -> label-map file for every image file in `folder` (hidden and partial files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        case_id, ext = split_extension(path)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if case_id in files:
            raise EvaluationError(f"{folder}: case {case_id} has two files ({files[case_id].name}, {path.name}); "
                                  "keep one")
        files[case_id] = path
    return files


def parse_labels(spec: Any) -> dict[str, LabelValue]:
    """Labels from a dataset.json "labels" dict (v2 name -> value, or v1 "value" -> name) or "rectum=1,tumour=2"."""
    if isinstance(spec, str):
        pairs = [item.split("=") for item in spec.split(",") if item.strip()]
        if not pairs or any(len(p) != 2 or not p[1].strip().isdigit() for p in pairs):
            raise EvaluationError(f"labels {spec!r}: expected NAME=VALUE pairs such as rectum=1,tumour=2")
        return {name.strip(): int(value) for name, value in pairs}
    if not isinstance(spec, Mapping) or not spec:
        raise EvaluationError(f"labels {spec!r}: expected a dict such as {{'rectum': 1, 'tumour': 2}}")
    if all(str(k).isdigit() and isinstance(v, str) for k, v in spec.items()):  # nnU-Net v1 style
        return {str(name): int(value) for value, name in spec.items()}
    return {str(name): (list(value) if isinstance(value, (list, tuple)) else int(value))
            for name, value in spec.items()}


def labels_from_dataset_json(path: str | os.PathLike) -> dict[str, LabelValue]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read dataset.json: {exc}") from None
    if "labels" not in data:
        raise EvaluationError(f"{path}: has no \"labels\" entry")
    return parse_labels(data["labels"])


def find_labels(ref_dir: str | os.PathLike) -> dict[str, LabelValue]:
    """Labels from dataset.json in `ref_dir` or its parent (nnU-Net's labelsTr/../dataset.json)."""
    ref_dir = Path(ref_dir)
    for candidate in (ref_dir / "dataset.json", ref_dir.parent / "dataset.json"):
        if candidate.is_file():
            return labels_from_dataset_json(candidate)
    raise EvaluationError(f"no dataset.json in {ref_dir} or {ref_dir.parent}; give the classes with "
                          "--labels rectum=1,tumour=2 (or --labels path/to/dataset.json)")


def _read_labels(path: Path, case_id: str, role: str) -> tuple[np.ndarray, Geometry]:
    image = read_image(path)
    array = image.array
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise EvaluationError(f"case {case_id}: {role} {path.name} holds non-integer values; "
                                  "a label map (0 = background, 1, 2, ...) is needed, not probabilities")
        array = array.astype(np.int32)
    return array, image.geometry


def build_result(cases: Mapping[str, Mapping[str, Mapping]], labels: Mapping[str, LabelValue],
                 **extra: Any) -> dict:
    """The metrics.json dictionary for per-case metrics (as returned by `case_metrics`)."""
    summary = summarize(cases)
    dice_means = [entry["dice"]["mean"] for entry in summary.values() if math.isfinite(entry["dice"]["mean"])]
    result = {"convention": CONVENTION, "labels": dict(foreground_labels(labels)), "n_cases": len(cases),
              "cases": {k: dict(v) for k, v in cases.items()}, "summary": summary,
              "mean_dice": float(np.mean(dice_means)) if dice_means else float("nan")}
    result.update(extra)
    return result


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                     labels: Optional[Mapping[str, LabelValue]] = None, progress: bool = True) -> dict:
    """Score every reference case against the prediction of the same case id (see module docstring)."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    labels = dict(labels) if labels is not None else find_labels(ref_dir)
    if not foreground_labels(labels):
        raise EvaluationError(f"labels {labels} hold no foreground class to score")
    refs, preds = list_label_files(ref_dir), list_label_files(pred_dir)
    if not refs:
        hint = f"; did you mean {ref_dir / 'labelsTr'}?" if (ref_dir / "labelsTr").is_dir() else ""
        raise EvaluationError(f"{ref_dir}: holds no reference label maps ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    matched = [case_id for case_id in refs if case_id in preds]
    missing = [case_id for case_id in refs if case_id not in preds]
    unmatched = [case_id for case_id in preds if case_id not in refs]
    if not matched:
        raise EvaluationError(f"no prediction in {pred_dir} matches a reference case id in {ref_dir} "
                              f"(references: {', '.join(list(refs)[:5])}...; predictions: "
                              f"{', '.join(list(preds)[:5]) or 'none'})")
    # Geometry first (headers only): every mismatch is reported at once, nothing is resampled.
    mismatches = []
    for case_id in matched:
        differences = read_geometry(preds[case_id]).differences(read_geometry(refs[case_id]))
        if differences:
            mismatches.append(f"case {case_id}: prediction vs reference " + "; ".join(differences))
    if mismatches:
        raise EvaluationError("predictions are not on their reference's voxel grid (nothing is resampled; "
                              "write predictions on the reference grid):\n  " + "\n  ".join(mismatches))
    cases, unexpected = {}, {}
    known = {0} | {int(v) for value in labels.values() for v in (value if isinstance(value, list) else [value])}
    with ProgressBar(len(matched), "evaluate", enabled=progress, unit="case") as bar:
        for case_id in matched:
            ref, geometry = _read_labels(refs[case_id], case_id, "reference")
            pred, _ = _read_labels(preds[case_id], case_id, "prediction")
            cases[case_id] = case_metrics(pred, ref, labels, geometry.spacing)
            extra = {role: sorted(int(v) for v in np.unique(array) if int(v) not in known)
                     for role, array in (("prediction", pred), ("reference", ref))}
            if any(extra.values()):
                unexpected[case_id] = extra  # label values the class list does not name: not scored
            bar.update(1)
    return build_result(cases, labels, pred_dir=str(pred_dir), ref_dir=str(ref_dir),
                        missing_predictions=missing, unmatched_predictions=unmatched, unexpected_labels=unexpected)


def _encode(value: Any) -> Any:
    if isinstance(value, float) or isinstance(value, np.floating):
        value = float(value)
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


_METRIC_KEYS = {"dice", "hd95", "mean", "std", "mean_dice", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"}


def _decode(value: Any, key: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _decode(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, key) for v in value]
    if value is None and key in _METRIC_KEYS:
        return float("nan")
    if value in ("inf", "-inf") and key in _METRIC_KEYS:
        return float(value)
    return value


def write_metrics(result: Mapping, path: str | os.PathLike) -> Path:
    """Write metrics.json (or any result dict) atomically as strict JSON: nan -> null, inf -> "inf"."""
    return atomic_write_json(path, _encode(result), allow_nan=False)


def load_metrics(path: str | os.PathLike) -> dict:
    """Read a metrics.json written by `write_metrics` (nan/inf restored); clear error when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read metrics file: {exc.strerror}") from None
    except ValueError as exc:
        raise EvaluationError(f"{path}: is not valid JSON ({exc}); expected a metrics.json from "
                              "`rcsegnext evaluate`") from None
    if not isinstance(data, dict) or not ("cases" in data or "summary" in data):
        raise EvaluationError(f"{path}: has neither \"cases\" nor \"summary\"; expected a metrics.json from "
                              "`rcsegnext evaluate` or training validation (RUN/fold_K/validation/metrics.json, "
                              "not the training history RUN/fold_K/metrics.json)")
    return _decode(data)
