"""Reading and writing 3D images with their exact scanner geometry.

Arrays are handled in (z, y, x) order, i.e. numpy order of SimpleITK's (k, j, i); `Geometry.spacing` uses the
same order. `origin` and `direction` are ITK's physical (LPS) values, unchanged: origin is (x, y, z) in mm and
direction is the 3x3 matrix (row-major) whose columns are the i, j, k axes. Nothing here resamples.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from zlib import error as zlib_error

from RCSegNeXtCore.data.dicom import read_series
from RCSegNeXtCore.errors import ImageReadError, itk_reason
from RCSegNeXtCore.files import atomic_path, split_extension  # noqa: F401 (split_extension re-exported)

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".seg.nrrd")


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

    def slice_orientation(self) -> Optional[str]:
        """'sagittal' | 'coronal' | 'axial': the plane of the slices, i.e. the patient (LPS) axis the thickest voxel
        axis points along most; None for a near-isotropic grid (no slice axis)."""
        spacing = np.asarray(self.spacing, float)
        if spacing.max() / spacing.min() < 1.5:
            return None
        column = self.direction_matrix[:, 2 - int(np.argmax(spacing))]  # array axis (z,y,x) -> ITK index 2 - axis
        return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(column)))]

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
    return "(" + ", ".join(f"{v:.6g}" for v in np.ravel(values)) + ")"


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


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy float type


def _scan_nifti(path: Path) -> Tuple[Optional[str], Optional[Tuple[np.ndarray, np.ndarray]]]:
    """For .nii/.nii.gz: (problem, non-finite voxels) read from the raw bytes.

    ITK 5.4's NIfTI reader silently zero-fills a truncated file and turns NaN/inf voxels into 0 (fixed only in
    ITK 6, InsightSoftwareConsortium/ITK#6683). `problem` reports truncation; for float data the flat indices and
    values of non-finite voxels are returned so `read_sitk` can put them back, and validation can report them.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            if len(header) < 348:
                return f"header is {len(header)} bytes, a NIfTI header needs 348", None
            for endian in "<>":
                size = struct.unpack(endian + "i", header[:4])[0]
                if size in (348, 540):
                    break
            else:
                return None, None  # not NIfTI-1/2: let ITK decide
            if size == 348:
                dim = struct.unpack(endian + "8h", header[40:56])
                datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
                offset = int(struct.unpack(endian + "f", header[108:112])[0])
                slope, inter = struct.unpack(endian + "2f", header[112:120])
            else:
                dim = struct.unpack(endian + "8q", header[16:80])
                datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
                offset = struct.unpack(endian + "q", header[168:176])[0]
                slope, inter = struct.unpack(endian + "2d", header[176:192])
            offset = max(offset, size)
            count = int(np.prod([max(1, d) for d in dim[1:1 + max(0, min(dim[0], 7))]]))
            expected = offset + count * bitpix // 8
            chunks, received = [header], len(header)
            while received < expected:
                chunk = stream.read(min(1 << 24, expected - received))
                if not chunk:
                    break
                received += len(chunk)
                if datatype in _NIFTI_FLOATS:
                    chunks.append(chunk)
    except (EOFError, OSError, struct.error, zlib_error) as exc:
        return f"compressed data is cut off or corrupt ({exc})", None
    if received < expected:
        return f"holds {received} bytes of header and voxels, its header promises {expected}", None
    if datatype not in _NIFTI_FLOATS:
        return None, None
    voxels = np.frombuffer(b"".join(chunks), dtype=endian + _NIFTI_FLOATS[datatype], count=count, offset=offset)
    bad = np.flatnonzero(~np.isfinite(voxels))
    if not bad.size:
        return None, None
    values = voxels[bad] * (slope if slope and np.isfinite(slope) else 1.0) + (inter if np.isfinite(inter) else 0)
    return None, (bad, values)


def _restore_non_finite(image: sitk.Image, bad: np.ndarray, values: np.ndarray) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.floating) or bad.max() >= array.size:
        return image
    array.reshape(-1)[bad] = values
    restored = sitk.GetImageFromArray(array, isVector=False)
    restored.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        restored.SetMetaData(key, image.GetMetaData(key))
    return restored


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read a file (NIfTI, NRRD, MHA, ...) or a DICOM series folder as a 3D scalar SimpleITK image.

    A DICOM folder is checked file by file first (`data/dicom.py`): an unreadable slice, non-parallel slices or
    uneven gaps raise `ImageReadError`; other files beside the series are ignored with a `DicomNote` warning."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    non_finite = None
    if path.is_dir():
        image = read_series(path)  # every file checked: no silently dropped slice, no multi-plane stack
    else:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: file is empty (0 bytes)")
        if path.name.lower().endswith(".nii.gz") and path.with_name(path.name[:-3]).exists():
            # ITK 5.4 would take the header from X.nii.gz but the voxels from X.nii: refuse instead
            raise ImageReadError(f"{path}: {path.name[:-3]} lies beside it and ITK would read that file's voxels "
                                 "with this file's header; keep only one of them")
        if path.name.lower().endswith((".nii", ".nii.gz")):
            problem, non_finite = _scan_nifti(path)
            if problem:
                raise ImageReadError(f"{path}: file is truncated or corrupt: {problem}")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageReadError(f"{path}: cannot be read as an image (corrupt or truncated?): "
                                 f"{itk_reason(exc)}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "a scalar (grey-level) 3D image is needed")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ImageReadError(f"{path}: is {image.GetDimension()}D with size {image.GetSize()}; "
                             "a 3D volume is needed (one file per channel, one volume per case)")
    if non_finite is not None:
        image = _restore_non_finite(image, *non_finite)
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
    if path.is_dir() or not path.exists() or path.stat().st_size == 0:
        return Geometry.from_sitk(read_sitk(path))  # DICOM folder, or raises the missing/empty error
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image header: {itk_reason(exc)}") from None
    size = reader.GetSize()
    if len(size) != 3:
        return Geometry.from_sitk(read_sitk(path))  # raises the dimensionality error
    return Geometry((size[2], size[1], size[0]), tuple(reversed(reader.GetSpacing())), reader.GetOrigin(),
                    reader.GetDirection())


def write_sitk(image: sitk.Image, path: str | os.PathLike, metadata: Optional[Mapping[str, str]] = None,
               compress: bool = True) -> Path:
    """Write atomically (temporary file + rename): a crash never leaves a half-written file under `path`."""
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return Path(path)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike,
                metadata: Optional[Mapping[str, str]] = None, compress: bool = True) -> Path:
    """Write a (z, y, x) array on `geometry` (NIfTI / NRRD / MHA by extension), atomically."""
    return write_sitk(array_to_sitk(array, geometry), path, metadata, compress)
