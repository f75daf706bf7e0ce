"""A study folder (one sub-folder per DICOM series of one study, as PACS exports write): list, then choose.

Segmenting every series of a study (localizers, axial, coronal, DWI, ...) with a sagittal model is slow nonsense.
A folder whose sub-folders are DICOM series sharing one StudyInstanceUID (at least two) is therefore a study: its
series are listed (description, plane, size, spacing) and only those in the model's slice plane are segmented, or
the ones named with `--series`. A series that fails the reader's checks (`data/dicom.py`) is listed as skipped with
the reason. Sub-folders from different studies stay a folder of cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from RCSegNeXtCore.data.dicom import DICOM_SUFFIXES, has_dicom_preamble, inspect_series, series_label, study_uid
from RCSegNeXtCore.data.io import IMAGE_EXTENSIONS
from RCSegNeXtCore.errors import ImageReadError


@dataclass
class StudySeries:
    """One sub-folder of a study folder; `problem` says why it cannot be read as a volume (None: readable)."""

    folder: Path
    description: str = ""
    series_uid: str = ""
    plane: Optional[str] = None
    shape: Optional[Tuple[int, int, int]] = None
    spacing: Optional[Tuple[float, float, float]] = None
    problem: Optional[str] = None

    @property
    def name(self) -> str:
        return self.folder.name


def _is_loose_image(path: Path) -> bool:
    """An image file or a DICOM file directly in the folder: then it is a series or a folder of cases."""
    if not path.is_file() or path.name.startswith("."):
        return False
    name = path.name.lower()
    return name.endswith(IMAGE_EXTENSIONS) or name.endswith(DICOM_SUFFIXES) or has_dicom_preamble(path)


def find_study(path: Path) -> Optional[List[Path]]:
    """The sub-folders of `path` when it is one study's folder (>= 2 of them DICOM series with one shared
    StudyInstanceUID, no image file beside them); None otherwise (a file, a series or a folder of cases)."""
    if not path.is_dir() or any(_is_loose_image(p) for p in path.iterdir()):
        return None
    folders = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    uids = [uid for uid in (study_uid(p) for p in folders) if uid is not None]
    if len(uids) < 2 or len(set(uids)) != 1:
        return None
    return folders


def list_study(folders: List[Path]) -> List[StudySeries]:
    """Every sub-folder checked from its headers (fast: no pixel data is decoded)."""
    listed = []
    for folder in folders:
        try:
            info = inspect_series(folder)
        except ImageReadError as exc:
            description, uid = series_label(folder)
            reason = str(exc)
            reason = reason[len(str(folder)) + 2:] if reason.startswith(f"{folder}: ") else reason
            listed.append(StudySeries(folder, description, uid, problem=reason))
            continue
        listed.append(StudySeries(folder, info.description, info.series_uid, info.plane, info.shape, info.spacing))
    return listed


def select_series(listed: List[StudySeries], plane: Optional[str], wanted: Optional[str] = None
                  ) -> Tuple[List[StudySeries], List[Dict[str, str]], List[str], Optional[str]]:
    """(series to segment, skipped [{"series", "reason"}], notes, problem). `problem` (nothing to segment) is a
    failure for the caller. `wanted` matches a folder name, SeriesInstanceUID or SeriesDescription (any case)."""
    selected: List[StudySeries] = []
    skipped: List[Dict[str, str]] = []
    notes: List[str] = []
    if wanted is not None:
        key = wanted.strip().lower()
        for s in listed:
            if key in (s.name.lower(), s.series_uid.lower(), s.description.strip().lower()):
                selected.append(s)   # named explicitly: a series that fails its checks is then a failure
            else:
                skipped.append({"series": s.name, "reason": s.problem or f"not the series named by --series {wanted}"})
        problem = None if selected else (f"no series matches --series {wanted!r} (a sub-folder name, "
                                         "SeriesDescription or SeriesInstanceUID); series here: "
                                         + ", ".join(f"{s.name} ({s.description or 'no description'})" for s in listed))
        return selected, skipped, notes, problem
    if plane is None:
        notes.append("the model records no slice plane: segmenting every readable series; name one with --series "
                     "(or record the plane with `rcsegnext init-model --slice-plane`)")
    for s in listed:
        if s.problem:
            skipped.append({"series": s.name, "reason": s.problem})
        elif plane is not None and s.plane != plane:
            skipped.append({"series": s.name, "reason": f"{s.plane} series, the model was trained on {plane} series "
                                                        "(name it with --series to segment it anyway)"})
        else:
            selected.append(s)
    problem = None if selected else (f"no series in the {plane} plane; name one with --series" if plane else
                                     "no readable 3D series; see the reasons listed")
    return selected, skipped, notes, problem


def format_listing(study: Path, listed: List[StudySeries], selected: List[StudySeries],
                   skipped: List[Dict[str, str]]) -> str:
    """The table printed before a study run: one row per series, with what happens to it and why."""
    reasons = {s["series"]: s["reason"] for s in skipped}
    chosen = {s.name for s in selected}
    rows = [("series", "description", "plane", "size (z,y,x)", "spacing (z,y,x) mm", "")]
    for s in listed:
        size = "x".join(str(v) for v in s.shape) if s.shape else "-"
        spacing = "x".join(f"{v:.4g}" for v in s.spacing) if s.spacing else "-"
        action = "segment" if s.name in chosen else f"skipped: {reasons.get(s.name, '')}"
        rows.append((s.name, s.description or "-", s.plane or "-", size, spacing, action))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [f"study folder {study}: {len(listed)} series of one study"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
    return "\n".join(line.rstrip() for line in lines)
