"""What can be wrong with a case, as `Problem`s: each names the case, both values and what to do.

Nothing is fixed here: a label on another grid, a flipped axis, a stray label value or a NaN voxel is reported,
never resampled, clipped or replaced. `case_content_problems` is what `dataset.read_case` uses to refuse a case and
what `rcsegnext check` (validation.py) reports, so training and `check` apply the same rules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from RCSegNeXtCore.data.io import Geometry, Image

TOLERANCE = 1e-4  # relative (mm scale) for spacing/origin, absolute for direction cosines, as Geometry.matches
_RESAMPLE_HINT = "resample the label onto the image grid (nearest neighbour) and save it again"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: which case (or 'dataset.json', 'imagesTr'), what, and what to do."""

    case_id: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.message} — {self.hint}"


def format_values(values: Sequence[float], decimals: int = 0) -> str:
    """'(4, 0.875, 0.875)' for a message."""
    values = np.ravel(values)
    if decimals:  # direction cosines: hide float noise such as 2e-10
        values = np.round(values, decimals) + 0.0
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def orientation_code(geometry: Geometry) -> str:
    """ITK/DICOM LPS orientation code, e.g. 'PIR' for a sagittal scan (where increasing i, j, k point)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(geometry.direction)


def _differs(a: Sequence[float], b: Sequence[float], relative: bool) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = max(1.0, float(np.abs(a).max(initial=0))) if relative else 1.0
    return not np.allclose(a, b, atol=TOLERANCE * scale, rtol=0)


def _storage_flips(geometry: Geometry, reference: Geometry) -> Optional[List[str]]:
    """If both describe the same voxel grid stored in another axis order/sign, the flipped axes ('i', 'j', 'k')
    of `geometry`; else None."""
    a, b = geometry.index_to_physical(), reference.index_to_physical()
    mapping = np.linalg.solve(b[:3, :3], a[:3, :3])  # index steps of `geometry` in `reference` index units
    rounded = np.round(mapping)
    if not np.allclose(mapping, rounded, atol=1e-3) or sorted(np.abs(rounded).sum(axis=0)) != [1, 1, 1] \
            or sorted(np.abs(rounded).sum(axis=1)) != [1, 1, 1]:
        return None
    # the corner voxels of `geometry` must land on the corner voxels of `reference` (to 0.05 voxel)
    ext = lambda g: [(0, g.shape[2] - 1), (0, g.shape[1] - 1), (0, g.shape[0] - 1)]  # noqa: E731
    corners = np.array([[i, j, k, 1.0] for i in ext(geometry)[0] for j in ext(geometry)[1] for k in ext(geometry)[2]])
    landed = (np.linalg.solve(b, a @ corners.T)).T[:, :3]
    expected = {(i, j, k) for i in ext(reference)[0] for j in ext(reference)[1] for k in ext(reference)[2]}
    if not np.allclose(landed, np.round(landed), atol=0.05) or \
            {tuple(int(v) for v in row) for row in np.round(landed)} != expected:
        return None
    return [axis for axis, column in zip("ijk", rounded.T) if column.sum() < 0]


def geometry_problems(case_id: str, what: str, geometry: Geometry, reference: Geometry,
                      reference_name: str = "image") -> List[Problem]:
    """Problems for `what` (e.g. 'label') not lying on `reference`'s grid: size, spacing, origin, direction."""
    problems = []
    if tuple(geometry.shape) != tuple(reference.shape):
        problems.append(Problem(case_id, f"{what} size (z,y,x) {tuple(geometry.shape)} differs from {reference_name} "
                                f"size {tuple(reference.shape)}", _RESAMPLE_HINT))
    if _differs(geometry.spacing, reference.spacing, relative=True):
        problems.append(Problem(case_id, f"{what} spacing (z,y,x) {format_values(geometry.spacing)} mm differs from "
                                f"{reference_name} spacing {format_values(reference.spacing)} mm (another grid, e.g. coarser)",
                                _RESAMPLE_HINT))
    direction_differs = _differs(geometry.direction, reference.direction, relative=False)
    origin_differs = _differs(geometry.origin, reference.origin, relative=True)
    flips = _storage_flips(geometry, reference) if direction_differs and not problems else None
    if flips is not None:
        axes = " and ".join(f"{a} axis" for a in flips) or "axes"
        kind = f"flipped {axes}" if flips else "permuted axes"
        problems.append(Problem(case_id, f"{what} is stored with a {kind}: direction {orientation_code(geometry)} "
                                f"{format_values(geometry.direction, 5)} vs {reference_name} {orientation_code(reference)} "
                                f"{format_values(reference.direction, 5)}, origin {format_values(geometry.origin)} vs "
                                f"{format_values(reference.origin)} (same voxel grid, different storage order)",
                                _RESAMPLE_HINT + " (this maps it exactly)"))
        return problems
    if direction_differs:
        problems.append(Problem(case_id, f"{what} direction {orientation_code(geometry)} {format_values(geometry.direction, 5)} "
                                f"differs from {reference_name} direction {orientation_code(reference)} "
                                f"{format_values(reference.direction, 5)}", _RESAMPLE_HINT))
    if origin_differs:
        problems.append(Problem(case_id, f"{what} origin {format_values(geometry.origin)} mm differs from {reference_name} "
                                f"origin {format_values(reference.origin)} mm",
                                _RESAMPLE_HINT + "; if only the header is wrong, fix the label's origin"))
    return problems


def _value_list(values: np.ndarray, counts: np.ndarray, limit: int = 6) -> str:
    items = [f"{v:g} ({c} voxels)" for v, c in zip(values[:limit], counts[:limit])]
    return ", ".join(items) + (f", ... ({len(values)} values)" if len(values) > limit else "")


def label_value_problems(case_id: str, array: np.ndarray, allowed: Optional[Iterable[int]]) -> List[Problem]:
    """Non-finite, non-integer, and (when `allowed` is given) undeclared label values."""
    problems = []
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            problems.append(Problem(case_id, f"label has {int(bad.sum())} non-finite voxel(s) (NaN/inf)",
                                    "re-export the label map with integer values"))
            array = array[~bad]
        fractional = array != np.round(array)
        if fractional.any():
            values, counts = np.unique(array[fractional], return_counts=True)
            problems.append(Problem(case_id, f"label has non-integer values {_value_list(values, counts)}",
                                    "store labels as integers; a resampled mask must use nearest-neighbour, "
                                    "not linear interpolation"))
            array = array[~fractional]
    values, counts = np.unique(array, return_counts=True)
    allowed_set = set(range(256)) if allowed is None else {int(v) for v in allowed}
    outside = np.array([v not in allowed_set for v in values.tolist()], dtype=bool)
    if outside.any():
        declared = sorted(allowed_set) if allowed is not None else "0..255"
        problems.append(Problem(case_id, f"label values {_value_list(values[outside], counts[outside])} are not "
                                f"declared in dataset.json labels {declared}",
                                "relabel the mask to the declared values, or add the labels to dataset.json"))
    return problems


def case_content_problems(case_id: str, channels: List[Image], label: Optional[Image],
                          allowed_labels: Optional[Iterable[int]] = None) -> List[Problem]:
    """Everything wrong inside one read case: channel/label grids, non-finite voxels, label values."""
    problems = []
    reference = channels[0].geometry
    for index, channel in enumerate(channels):
        if np.issubdtype(channel.array.dtype, np.floating):
            bad = int((~np.isfinite(channel.array)).sum())
            if bad:
                problems.append(Problem(case_id, f"channel {index:04d} has {bad} non-finite voxel(s) (NaN/inf) "
                                        f"of {channel.array.size}", "re-export the image without NaN/inf; "
                                        "nothing is replaced automatically"))
        if index:
            problems += geometry_problems(case_id, f"channel {index:04d}", channel.geometry, reference,
                                          "channel 0000")
    if label is not None:
        problems += geometry_problems(case_id, "label", label.geometry, reference)
        problems += label_value_problems(case_id, label.array, allowed_labels)
    return problems


def relative_to_root(problems: List[Problem], root: os.PathLike) -> List[Problem]:
    """The same problems with paths inside `root` written relative to it (shorter lines)."""
    prefix = f"{os.fspath(root).rstrip(os.sep)}{os.sep}"
    return [Problem(p.case_id, p.message.replace(prefix, ""), p.hint.replace(prefix, "")) for p in problems]
