"""DICOM series folders: every file is checked before slices are stacked into a volume.

GDCM's series listing silently drops files it cannot parse (a slice cut in its header or pixel data), and ITK's
series reader stacks whatever it is given (slices in three planes, a missing slice) with one averaged spacing,
printing only a warning. A segmentation of such a volume no longer fits the series. So every file in the folder is
looked at here, header only (`ReadImageInformation`, fast enough to list a whole study): a DICOM file that cannot
be read completely, slices that are not parallel, uneven gaps, slices of different sizes or several series are
refused with an `ImageReadError` naming the folder and the files or positions. Other files (a README) are ignored
with a `DicomNote` warning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from RCSegNeXtCore.errors import ImageReadError, itk_reason

MAX_ANGLE_DEG = 1.0       # orientations further apart are another plane; one series agrees to ~1e-4 deg (6 decimals)
MAX_GAP_DEVIATION = 0.10  # a gap off the median by > 10 % is a missing, doubled or mixed slice; gaps jitter ~1e-5 mm
MAX_SHIFT = 0.10          # in-plane step between slices, fraction of the gap: a sheared stack ITK would read straight
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")  # a file named so that GDCM cannot read is a broken slice, not a note
PLANES = ("sagittal", "coronal", "axial")     # the LPS axis a slice normal points along most: x, y, z
_TAGS = {"position": "0020|0032", "orientation": "0020|0037", "study": "0020|000d", "series": "0020|000e",
         "description": "0008|103e"}
_PIXEL_DATA = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # tag (7FE0,0010), little and big endian


class DicomNote(UserWarning):
    """A file in a series folder that is not part of the series (ignored; the series is read without it)."""


@dataclass(frozen=True)
class SliceHeader:
    """One DICOM image file: its position and orientation (LPS mm, ImagePosition/OrientationPatient) and ids."""

    path: Path
    position: np.ndarray
    row: np.ndarray                 # direction of increasing column index (i)
    column: np.ndarray              # direction of increasing row index (j)
    size: Tuple[int, int]           # (columns, rows)
    pixel_spacing: Tuple[float, float]  # (y, x) mm: DICOM's (between rows, between columns)
    tags: Dict[str, str]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.column)


@dataclass
class SeriesInfo:
    """A checked series: slices sorted along the normal, plane, size and spacing, notes on ignored files."""

    folder: Path
    slices: List[SliceHeader]
    notes: List[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        return self.slices[0].tags.get("description", "")

    @property
    def series_uid(self) -> str:
        return self.slices[0].tags.get("series", "")

    @property
    def plane(self) -> str:
        return PLANES[int(np.argmax(np.abs(self.slices[0].normal)))]

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(z, y, x) voxels."""
        columns, rows = self.slices[0].size
        return len(self.slices), rows, columns

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """(z, y, x) mm; z is the median slice gap."""
        gaps = np.diff([float(s.position @ self.slices[0].normal) for s in self.slices])
        return float(np.median(np.abs(gaps))), *self.slices[0].pixel_spacing


def has_dicom_preamble(path: Path) -> bool:
    """True when bytes 128..131 read 'DICM' (DICOM Part 10 file)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_tags(path: Path) -> Optional[Dict[str, str]]:
    """The header values this module uses (missing ones absent); None when GDCM cannot read the file completely."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    tags = {name: reader.GetMetaData(tag).strip() for name, tag in _TAGS.items() if reader.HasMetaDataKey(tag)}
    size, spacing = reader.GetSize(), reader.GetSpacing()
    tags["size"] = f"{size[0]}\\{size[1]}"
    tags["pixel_spacing"] = f"{spacing[1]!r}\\{spacing[0]!r}"  # (y, x) as GDCM gives it to the series reader
    return tags


def _invalid(path: Path, tags: Dict[str, str], name: str) -> ImageReadError:
    label = {"position": "ImagePositionPatient", "orientation": "ImageOrientationPatient"}.get(name, name)
    return ImageReadError(f"{path.parent}: file {path.name} has no valid {label} ({tags.get(name, 'missing')!r}): "
                          "its place in the volume is unknown; re-export the series")


def _numbers(tags: Dict[str, str], name: str, count: int, path: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in tags[name].split("\\")], float)
    except (KeyError, ValueError):
        values = np.array([])
    if values.size != count or not np.isfinite(values).all():
        raise _invalid(path, tags, name)
    return values


def _slice(path: Path, tags: Dict[str, str]) -> SliceHeader:
    orientation = _numbers(tags, "orientation", 6, path)
    row, column = orientation[:3], orientation[3:]
    if min(np.linalg.norm(row), np.linalg.norm(column), np.linalg.norm(np.cross(row, column))) < 0.5:
        raise _invalid(path, tags, "orientation")  # not two unit directions at right angles
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    columns, rows = (int(v) for v in tags["size"].split("\\"))
    return SliceHeader(path, _numbers(tags, "position", 3, path), row, column, (columns, rows),
                       tuple(float(v) for v in _numbers(tags, "pixel_spacing", 2, path)), tags)


def _unreadable_reason(path: Path) -> str:
    data = path.read_bytes()
    if not data:
        return "is empty (0 bytes)"
    if any(tag in data for tag in _PIXEL_DATA):
        return "cannot be read completely (pixel data cut off?)"
    return "cannot be read completely (header cut off or corrupt?)"


def _names(paths: Sequence[Path], limit: int = 4) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def scan_folder(folder: Path) -> Tuple[List[Tuple[Path, Dict[str, str]]], List[str]]:
    """([(file, tags)] of every DICOM image in `folder`, notes on ignored entries). A file that looks like DICOM
    (DICM preamble or a DICOM suffix) but cannot be read completely is refused: GDCM would drop it silently."""
    images, notes, broken = [], [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            notes.append(f"{folder}: sub-folder {entry.name}/ ignored (a series folder holds its slices directly)")
            continue
        if entry.name.upper() == "DICOMDIR":
            notes.append(f"{folder}: {entry.name} (a DICOM index, not an image) ignored")
            continue
        tags = read_tags(entry) if entry.is_file() else None
        if tags is not None:
            images.append((entry, tags))
        elif entry.is_file() and (has_dicom_preamble(entry) or entry.name.lower().endswith(DICOM_SUFFIXES)):
            broken.append(entry)
        else:
            notes.append(f"{folder}: {entry.name} is not a DICOM image; ignored")
    if broken:
        reasons = "; ".join(f"file {p.name} {_unreadable_reason(p)}" for p in broken[:4])
        more = f"; and {len(broken) - 4} more such file(s)" if len(broken) > 4 else ""
        raise ImageReadError(f"{folder}: {reasons}{more}; re-export the series (a volume without "
                             f"{'this slice' if len(broken) == 1 else 'these slices'} would not fit it)")
    return images, notes


def _check_orientation(folder: Path, slices: List[SliceHeader]) -> None:
    def angle(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), float(a @ b))))

    groups: List[List[SliceHeader]] = []
    for s in slices:
        for group in groups:
            if angle(s.row, group[0].row) <= MAX_ANGLE_DEG and angle(s.column, group[0].column) <= MAX_ANGLE_DEG:
                group.append(s)
                break
        else:
            groups.append([s])
    if len(groups) > 1:
        worst = max(max(angle(s.normal, slices[0].normal), angle(s.row, slices[0].row)) for s in slices)
        parts = [f"{PLANES[int(np.argmax(np.abs(g[0].normal)))]} {len(g)} ({_names([s.path for s in g], 2)})"
                 for g in groups]
        raise ImageReadError(f"{folder}: slices are not parallel ({len(groups)} orientations, up to {worst:.1f} deg "
                             f"apart, tolerance {MAX_ANGLE_DEG:g} deg): {'; '.join(parts)}. A localizer or "
                             "multi-plane series is not one volume; choose another series")


def _check_spacing(folder: Path, slices: List[SliceHeader]) -> None:
    normal = slices[0].normal
    depth = np.array([float(s.position @ normal) for s in slices])
    gaps = np.diff(depth)
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > MAX_GAP_DEVIATION * median) if median > 1e-3 else np.arange(gaps.size)
    if bad.size:
        parts = [f"{gaps[i]:.2f} mm between the slices at {depth[i]:.2f} and {depth[i + 1]:.2f} mm along the normal "
                 f"({slices[i].path.name}, {slices[i + 1].path.name})" for i in bad[:3]]
        more = f" and {bad.size - 3} more" if bad.size > 3 else ""
        raise ImageReadError(f"{folder}: slice gaps are not equal: {'; '.join(parts)}{more}, median gap "
                             f"{median:.2f} mm (tolerance {MAX_GAP_DEVIATION:.0%}). A slice is missing, doubled or "
                             "the spacing is uneven; re-export the complete series")
    steps = np.diff(np.array([s.position for s in slices]), axis=0)
    shift = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if shift.max() > MAX_SHIFT * median:
        i = int(np.argmax(shift))
        raise ImageReadError(f"{folder}: slice {slices[i + 1].path.name} is shifted {shift[i]:.2f} mm in-plane from "
                             f"{slices[i].path.name} (a sheared stack, tolerance {MAX_SHIFT:.0%} of the "
                             f"{median:.2f} mm gap); it cannot be read as a straight volume")


def inspect_series(folder: str | Path) -> SeriesInfo:
    """Check a DICOM series folder from its headers (see the module docstring); raises `ImageReadError`."""
    folder = Path(folder)
    images, notes = scan_folder(folder)
    if not images:
        raise ImageReadError(f"{folder}: folder holds no image file and no DICOM series")
    series = sorted({tags.get("series", "") for _, tags in images})
    if len(series) > 1:
        raise ImageReadError(f"{folder}: folder holds {len(series)} DICOM series ({', '.join(series)}); "
                             "put each series in its own folder")
    if len(images) < 2:
        raise ImageReadError(f"{folder}: DICOM series has {len(images)} slice; a 3D series needs several")
    slices = [_slice(path, tags) for path, tags in images]
    kinds: Dict[Tuple, List[Path]] = {}
    for s in slices:
        kinds.setdefault((s.size, tuple(np.round(s.pixel_spacing, 4))), []).append(s.path)
    if len(kinds) > 1:
        parts = [f"{c}x{r} at {sy:g}x{sx:g} mm ({_names(paths, 2)})" for ((c, r), (sy, sx)), paths in kinds.items()]
        raise ImageReadError(f"{folder}: slices differ in size or pixel spacing: {'; '.join(parts)}; "
                             "they are not one volume")
    _check_orientation(folder, slices)
    normal = slices[0].normal
    slices.sort(key=lambda s: float(s.position @ normal))
    _check_spacing(folder, slices)
    return SeriesInfo(folder, slices, notes)


def read_series(folder: str | Path) -> sitk.Image:
    """A checked DICOM series folder as one 3D SimpleITK image (GDCM's order and ITK's geometry, as before)."""
    folder = Path(folder)
    info = inspect_series(folder)
    for note in info.notes:
        warnings.warn(note, DicomNote, stacklevel=2)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    if len(series_ids) != 1:
        raise ImageReadError(f"{folder}: GDCM finds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
                             "put each series in its own folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    missing = sorted({s.path.name for s in info.slices} - {Path(f).name for f in files})
    if missing:
        raise ImageReadError(f"{folder}: GDCM leaves file(s) {', '.join(missing[:4])} out of the series; "
                             "re-export the series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(f"{folder}: DICOM series cannot be read: {itk_reason(exc)}") from None
    if image.GetDimension() == 3 and image.GetSize()[2] != len(info.slices):
        raise ImageReadError(f"{folder}: read {image.GetSize()[2]} slices from {len(info.slices)} DICOM files; "
                             "re-export the series")
    return image


def study_uid(folder: Path) -> Optional[str]:
    """StudyInstanceUID of the first DICOM image in `folder` (one header read); None when it holds none."""
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not entry.name.startswith(".") and (
                has_dicom_preamble(entry) or entry.name.lower().endswith(DICOM_SUFFIXES)):
            tags = read_tags(entry)
            if tags is not None:
                return tags.get("study") or None
    return None


def series_label(folder: Path) -> Tuple[str, str]:
    """(SeriesDescription, SeriesInstanceUID) of the first readable DICOM image in `folder`, '' when none."""
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not entry.name.startswith("."):
            tags = read_tags(entry)
            if tags is not None:
                return tags.get("description", ""), tags.get("series", "")
    return "", ""
