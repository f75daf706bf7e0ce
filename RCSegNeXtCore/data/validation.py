"""Dataset validation (`rcsegnext check`): the layout and every case read, all problems at once (problems.py
says what each check looks for).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from RCSegNeXtCore.data.dataset import scan_dataset
from RCSegNeXtCore.data.io import read_image
from RCSegNeXtCore.data.problems import (Problem, case_content_problems, format_values, orientation_code,
                                         relative_to_root)
from RCSegNeXtCore.errors import ImageReadError
from RCSegNeXtCore.progress import ProgressBar


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
            lines.append(f"spacing (z,y,x) mm: min {format_values(sp.min(0))}, median {format_values(np.median(sp, 0))}, "
                         f"max {format_values(sp.max(0))}")
            lines.append(f"size (z,y,x) voxels: min {tuple(sh.min(0).tolist())}, max {tuple(sh.max(0).tolist())}")
            lines.append("orientations: " + ", ".join(f"{k} ({n})" for k, n in sorted(self.orientations.items())))
        names = {v: k for k, v in self.labels.items()}
        for value in sorted(set(names) | set(self.label_voxels)):
            lines.append(f"label {value} {names.get(value, '(undeclared)')}: {self.label_voxels.get(value, 0)} "
                         f"voxels in {self.label_cases.get(value, 0)} case(s)")
        return lines


def inspect_dataset(folder: str | os.PathLike, progress: bool = False) -> DatasetReport:
    """Check the layout and read every case; never stops at the first problem."""
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
