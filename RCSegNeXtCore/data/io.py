"""Reading and writing 3D images with their exact scanner geometry.

Arrays are handled in (z, y, x) order, i.e. numpy order of SimpleITK's (k, j, i); `Geometry.spacing` uses the
same order. `origin` and `direction` are ITK's physical (LPS) values, unchanged: origin is (x, y, z) in mm and
direction is the 3x3 matrix (row-major) whose columns are the i, j, k axes. Nothing here resamples.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from RCSegNeXtCore.errors import ImageReadError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".seg.nrrd")
_COMPOUND_EXTENSIONS = (".seg.nrrd", ".nii.gz")


def split_extension(path: str | os.PathLike) -> Tuple[str, str]:
    """'case_0000.nii.gz' -> ('case_0000', '.nii.gz'); knows the compound endings .nii.gz and .seg.nrrd."""
    name = Path(path).name
    for ext in _COMPOUND_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, ext = os.path.splitext(name)
    return stem, ext


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a 3D image: shape and spacing in (z, y, x); origin and direction as ITK stores them."""

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]  # 9 values, row-major 3x3

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        size = image.GetSize()
        return cls(shape=(int(size[2]), int(size[1]), int(size[0])),
                   spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
                   origin=tuple(float(o) for o in image.GetOrigin()),
                   direction=tuple(float(d) for d in image.GetDirection()))

    @classmethod
    def identity(cls, shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Sequence[float] = (0.0, 0.0, 0.0)) -> "Geometry":
        return cls(tuple(int(s) for s in shape), tuple(float(s) for s in spacing),
                   tuple(float(o) for o in origin), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry's spacing, origin and direction on a SimpleITK image of the same shape."""
        image.SetSpacing(tuple(reversed(self.spacing)))
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical(self) -> np.ndarray:
        """4x4 matrix mapping a homogeneous (i, j, k, 1) index to LPS (x, y, z, 1) millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix * np.asarray(list(reversed(self.spacing)))[None, :]
        matrix[:3, 3] = self.origin
        return matrix

    def differences(self, other: "Geometry", tolerance: float = 1e-4) -> list[str]:
        """Human-readable list of what differs from `other` (empty when the grids match)."""
        found = []
        if tuple(self.shape) != tuple(other.shape):
            found.append(f"size (z,y,x) {tuple(self.shape)} vs {tuple(other.shape)}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = 1.0 if name == "direction" else max(1.0, float(np.abs(a).max(initial=0)))
            if a.shape != b.shape or not np.allclose(a, b, atol=tolerance * scale, rtol=0):
                found.append(f"{name} {_fmt(a)} vs {_fmt(b)}")
        return found

    def matches(self, other: "Geometry", tolerance: float = 1e-4) -> bool:
        return not self.differences(other, tolerance)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Geometry":
        return cls(tuple(int(v) for v in data["shape"]), tuple(float(v) for v in data["spacing"]),
                   tuple(float(v) for v in data["origin"]), tuple(float(v) for v in data["direction"]))


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in np.ravel(values)) + ")"


@dataclass
class Image:
    """A 3D image: `array` is (z, y, x) (or (C, z, y, x) for several channels) on `geometry`'s grid."""

    array: np.ndarray
    geometry: Geometry


def array_to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """(z, y, x) numpy array -> SimpleITK image carrying `geometry`."""
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {tuple(array.shape)} does not match geometry shape {tuple(geometry.shape)}")
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False))


def _read_dicom_series(folder: Path) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []
    if not series_ids:
        raise ImageReadError(f"{folder}: folder holds no image file and no DICOM series")
    if len(series_ids) > 1:
        raise ImageReadError(f"{folder}: folder holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
                             "put each series in its own folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    if len(files) < 2:
        raise ImageReadError(f"{folder}: DICOM series has {len(files)} slice; a 3D series needs several")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    return reader.Execute()


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read a file (NIfTI, NRRD, MHA, ...) or a DICOM series folder as a 3D scalar SimpleITK image."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: file is empty")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise ImageReadError(f"{path}: cannot be read as an image (corrupt or truncated?): {reason}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "a scalar (grey-level) 3D image is needed")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ImageReadError(f"{path}: is {image.GetDimension()}D with size {image.GetSize()}; "
                             "a 3D volume is needed (one file per channel, one volume per case)")
    return image


def read_image(path: str | os.PathLike, dtype: Optional[np.dtype] = None) -> Image:
    """Read a 3D image (file or DICOM series folder) as an `Image` with (z, y, x) array and exact geometry."""
    image = read_sitk(path)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: voxel data cannot be decoded (truncated file?): {exc}") from None
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Image(array, Geometry.from_sitk(image))


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Geometry from the header only (fast); DICOM folders are read fully."""
    path = Path(path)
    if path.is_dir():
        return Geometry.from_sitk(read_sitk(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image header: {str(exc).strip().splitlines()[-1]}") from None
    size = reader.GetSize()
    if len(size) != 3:
        return Geometry.from_sitk(read_sitk(path))  # raises the dimensionality error
    return Geometry((size[2], size[1], size[0]), tuple(reversed(reader.GetSpacing())), reader.GetOrigin(),
                    reader.GetDirection())


def atomic_path(path: Path) -> Path:
    """A temporary sibling of `path` with the same extension (so writers pick the right format)."""
    stem, ext = split_extension(path)
    return path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.part{ext}")


def write_sitk(image: sitk.Image, path: str | os.PathLike, metadata: Optional[Mapping[str, str]] = None,
               compress: bool = True) -> Path:
    """Write atomically (temporary file + rename): a crash never leaves a half-written file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    tmp = atomic_path(path)
    try:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike,
                metadata: Optional[Mapping[str, str]] = None, compress: bool = True) -> Path:
    """Write a (z, y, x) array on `geometry` (NIfTI / NRRD / MHA by extension), atomically."""
    return write_sitk(array_to_sitk(array, geometry), path, metadata, compress)
