"""Dataset validation (`rcsegnext check`): every problem at once, each naming the case, both values and what to do.

Nothing is fixed here: a label on another grid, a flipped axis, a stray label value or a NaN voxel is reported,
never resampled, clipped or replaced. `case_content_problems` is also what `dataset.read_case` uses to refuse
a case, so training and `check` apply the same rules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from RCSegNeXtCore.data.io import Geometry, Image
from RCSegNeXtCore.errors import ImageReadError

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


def _fmt(values: Sequence[float], decimals: int = 0) -> str:
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
        problems.append(Problem(case_id, f"{what} spacing (z,y,x) {_fmt(geometry.spacing)} mm differs from "
                                f"{reference_name} spacing {_fmt(reference.spacing)} mm (another grid, e.g. coarser)",
                                _RESAMPLE_HINT))
    direction_differs = _differs(geometry.direction, reference.direction, relative=False)
    origin_differs = _differs(geometry.origin, reference.origin, relative=True)
    flips = _storage_flips(geometry, reference) if direction_differs and not problems else None
    if flips is not None:
        axes = " and ".join(f"{a} axis" for a in flips) or "axes"
        kind = f"flipped {axes}" if flips else "permuted axes"
        problems.append(Problem(case_id, f"{what} is stored with a {kind}: direction {orientation_code(geometry)} "
                                f"{_fmt(geometry.direction, 5)} vs {reference_name} {orientation_code(reference)} "
                                f"{_fmt(reference.direction, 5)}, origin {_fmt(geometry.origin)} vs "
                                f"{_fmt(reference.origin)} (same voxel grid, different storage order)",
                                _RESAMPLE_HINT + " (this maps it exactly)"))
        return problems
    if direction_differs:
        problems.append(Problem(case_id, f"{what} direction {orientation_code(geometry)} {_fmt(geometry.direction, 5)} "
                                f"differs from {reference_name} direction {orientation_code(reference)} "
                                f"{_fmt(reference.direction, 5)}", _RESAMPLE_HINT))
    if origin_differs:
        problems.append(Problem(case_id, f"{what} origin {_fmt(geometry.origin)} mm differs from {reference_name} "
                                f"origin {_fmt(reference.origin)} mm",
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


@dataclass
class DatasetReport:
    """Result of `inspect_dataset`: all problems plus the figures `rcsegnext check` prints."""

    root: str
    problems: List[Problem]
    num_cases: int = 0
    num_test_cases: int = 0
    channel_names: Dict[str, str] = field(default_factory=dict)
    spacings: List[tuple] = field(default_factory=list)      # (z, y, x) per readable training case
    shapes: List[tuple] = field(default_factory=list)
    orientations: Dict[str, int] = field(default_factory=dict)
    label_voxels: Dict[int, int] = field(default_factory=dict)  # value -> voxels over all cases
    label_cases: Dict[int, int] = field(default_factory=dict)   # value -> cases holding it
    labels: Dict[str, int] = field(default_factory=dict)

    def summary_lines(self) -> List[str]:
        lines = [f"{self.num_cases} training case(s), {self.num_test_cases} test case(s), channels "
                 + ", ".join(f"{k}: {v}" for k, v in self.channel_names.items())]
        if self.spacings:
            sp, sh = np.array(self.spacings), np.array(self.shapes)
            lines.append(f"spacing (z,y,x) mm: min {_fmt(sp.min(0))}, median {_fmt(np.median(sp, 0))}, "
                         f"max {_fmt(sp.max(0))}")
            lines.append(f"size (z,y,x) voxels: min {tuple(sh.min(0).tolist())}, max {tuple(sh.max(0).tolist())}")
            lines.append("orientations: " + ", ".join(f"{k} ({n})" for k, n in sorted(self.orientations.items())))
        names = {v: k for k, v in self.labels.items()}
        for value in sorted(set(names) | set(self.label_voxels)):
            lines.append(f"label {value} {names.get(value, '(undeclared)')}: {self.label_voxels.get(value, 0)} "
                         f"voxels in {self.label_cases.get(value, 0)} case(s)")
        return lines


def inspect_dataset(folder: str | os.PathLike, progress: bool = False) -> DatasetReport:
    """Check the layout and read every case; never stops at the first problem."""
    from RCSegNeXtCore.data.dataset import scan_dataset  # dataset.py imports this module
    from RCSegNeXtCore.data.io import read_image
    from RCSegNeXtCore.progress import ProgressBar

    dataset, problems = scan_dataset(folder)
    report = DatasetReport(str(dataset.root), problems, len(dataset.cases), len(dataset.test_cases),
                           dict(dataset.channel_names), labels=dict(dataset.labels))
    allowed = list(dataset.labels.values()) if dataset.labels else None
    all_cases = [(c, True) for c in dataset.cases] + [(c, False) for c in dataset.test_cases]
    with ProgressBar(len(all_cases), "check", enabled=progress, unit="case") as bar:
        for case, training in all_cases:
            channels, label = [], None
            for path in case.image_paths:
                try:
                    channels.append(read_image(path))
                except ImageReadError as exc:
                    problems.append(Problem(case.case_id, str(exc), _read_hint(str(exc))))
            if case.label_path is not None:
                try:
                    label = read_image(case.label_path)
                except ImageReadError as exc:
                    problems.append(Problem(case.case_id, f"label {exc}", _read_hint(str(exc))))
            if not channels:
                bar.update(1)
                continue
            problems += case_content_problems(case.case_id, channels, label, allowed)
            if training:
                geometry = channels[0].geometry
                report.spacings.append(geometry.spacing)
                report.shapes.append(geometry.shape)
                code = orientation_code(geometry)
                report.orientations[code] = report.orientations.get(code, 0) + 1
                if label is not None:
                    values, counts = np.unique(label.array, return_counts=True)
                    for value, count in zip(values.tolist(), counts.tolist()):
                        if float(value).is_integer():
                            report.label_voxels[int(value)] = report.label_voxels.get(int(value), 0) + count
                            report.label_cases[int(value)] = report.label_cases.get(int(value), 0) + 1
            bar.update(1)
    report.problems = relative_to_root(problems, dataset.root)
    return report


def relative_to_root(problems: List[Problem], root: os.PathLike) -> List[Problem]:
    """The same problems with paths inside `root` written relative to it (shorter lines)."""
    prefix = f"{os.fspath(root).rstrip(os.sep)}{os.sep}"
    return [Problem(p.case_id, p.message.replace(prefix, ""), p.hint.replace(prefix, "")) for p in problems]


def _read_hint(message: str) -> str:
    if "2D" in message or "4D" in message or "components" in message:
        return "store each case and channel as one 3D scalar volume"
    if "DICOM" in message:
        return "put exactly one DICOM series (all its slices) in the case folder"
    if "no such file" in message:
        return "restore the file or remove the case"
    return "re-export or re-copy the file (it is empty, truncated or not an image)"


def check_dataset(folder: str | os.PathLike) -> List[Problem]:
    """Every problem in the dataset at `folder` (empty list when it is ready for plan/preprocess/train)."""
    return inspect_dataset(folder).problems
