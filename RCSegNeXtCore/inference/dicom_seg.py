"""A prediction of a DICOM series as a DICOM Segmentation (SEG) object, for PACS and DICOM viewers.

The SEG (highdicom, an optional extra: `pip install rcsegnext[dicom]`) is BINARY with one segment per foreground
label, named and coded as in the .seg.nrrd (inference/segments.py: label, SNOMED-CT category / type / anatomic
region, colour). It belongs to the source series' study (Study Instance UID, patient, Frame of Reference UID copied
by highdicom from the source headers) and is a new series ("RCSegNeXt segmentation"). Each frame references the
source instance it lies on: label slice k is matched to the instance whose ImagePositionPatient is the position of
slice k on the grid SimpleITK read (not the file order, which GDCM and the file names need not share), and the
in-plane axes and spacing are checked against that instance, so a label map on another grid is refused.

Empty segments (no tumour predicted) are kept, and every segment has a frame for every source slice (highdicom's
`omit_empty_frames=False`): the file says "Tumor: none" explicitly and readers that expect each segment to have
frames (some PACS viewers, dcmqi in Slicer) load it; bit-packed frames cost 1/8 byte per pixel.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from RCSegNeXtCore.errors import RCSegNeXtError
from RCSegNeXtCore.files import atomic_path
from RCSegNeXtCore.inference.segments import SegmentStyle, segment_styles

if TYPE_CHECKING:
    from RCSegNeXtCore.data.io import Geometry

SERIES_DESCRIPTION = "RCSegNeXt segmentation"
CONTENT_LABEL = "RCSEGNEXT"          # DICOM CS: upper case, at most 16 characters
SERIES_NUMBER_OFFSET = 1000          # the SEG's series number: the source's + 1000 (sorts after it in a PACS list)
# labels without a known style: Slicer's default terminology for a new segment (category and type "Tissue")
TISSUE = ("SCT", "85756007", "Tissue")
INSTALL_HINT = "pip install rcsegnext[dicom] (or pip install highdicom)"
_POSITION_TOLERANCE = 0.25           # of the smallest voxel spacing: a slice lies on an instance when this close
_ANGLE_TOLERANCE_DEG = 1.0           # as data/dicom.py: in-plane axes further apart are another grid

Code = Tuple[str, str, str]          # (coding scheme, value, meaning)


def require_highdicom():
    """The highdicom module; a clear RCSegNeXtError naming the extra when it is not installed."""
    try:
        import highdicom
    except ImportError as exc:
        raise RCSegNeXtError(f"DICOM SEG output needs the highdicom package, which is not installed ({exc}); "
                             f"install it with: {INSTALL_HINT}") from None
    return highdicom


def terminology_codes(style: SegmentStyle) -> Tuple[Code, Code, Optional[Code]]:
    """(category, type, anatomic region or None) of a segment, read from its Slicer terminology string (the one
    place the codes live, inference/segments.py); labels without one get category and type "Tissue"."""
    if not style.terminology:
        return TISSUE, TISSUE, None
    parts = style.terminology.split("~")

    def code(text: str) -> Optional[Code]:
        scheme, value, meaning = (text.split("^") + ["", "", ""])[:3]
        return (scheme, value, meaning) if scheme and value else None

    category, type_ = code(parts[1]), code(parts[2])
    if category is None or type_ is None:
        raise ValueError(f"segment {style.name}: terminology {style.terminology!r} has no category or type code")
    return category, type_, code(parts[5]) if len(parts) > 5 else None


def _source_headers(folder: Path):
    """(checked slice headers sorted along the normal, their pydicom datasets without pixel data)."""
    import pydicom

    from RCSegNeXtCore.data.dicom import inspect_series
    info = inspect_series(folder)
    return info.slices, [pydicom.dcmread(s.path, stop_before_pixels=True) for s in info.slices]


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), float(a @ b))))


def match_instances(geometry: Geometry, slices: Sequence, folder: Path) -> List[int]:
    """For each label slice k of `geometry`, the index in `slices` (data.dicom.SliceHeader) of the source instance
    at that position; RCSegNeXtError when the grid is not the series' own (other size, spacing, axes or slices)."""
    where = f"the label map is not on the grid of the DICOM series {folder}"
    hint = "a DICOM SEG needs the prediction on the series' own grid (do not use --resize-to)"
    z, y, x = geometry.shape
    first = slices[0]
    columns, rows = first.size
    if (y, x) != (rows, columns) or z != len(slices):
        raise RCSegNeXtError(f"{where}: size (z,y,x) {(z, y, x)} vs {(len(slices), rows, columns)}; {hint}")
    if not np.allclose(geometry.spacing[1:], first.pixel_spacing, rtol=1e-3, atol=1e-4):
        raise RCSegNeXtError(f"{where}: pixel spacing (y,x) {geometry.spacing[1:]} vs {first.pixel_spacing}; {hint}")
    matrix = geometry.index_to_physical()
    axes = geometry.direction_matrix
    if _angle(axes[:, 0], first.row) > _ANGLE_TOLERANCE_DEG or _angle(axes[:, 1], first.column) > _ANGLE_TOLERANCE_DEG:
        raise RCSegNeXtError(f"{where}: its rows and columns run along other directions than the series' "
                             f"ImageOrientationPatient; {hint}")
    positions = np.array([s.position for s in slices])
    tolerance = _POSITION_TOLERANCE * min(geometry.spacing)
    order: List[int] = []
    for k in range(z):
        centre = (matrix @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        distance = np.linalg.norm(positions - centre, axis=1)
        nearest = int(np.argmin(distance))
        if distance[nearest] > tolerance or nearest in order:
            raise RCSegNeXtError(f"{where}: label slice {k} at LPS ({', '.join(f'{v:.2f}' for v in centre)}) mm "
                                 f"lies on no instance of the series (nearest {slices[nearest].path.name}, "
                                 f"{distance[nearest]:.2f} mm away); {hint}")
        order.append(nearest)
    return order


def _description(hd, number: int, style: SegmentStyle, algorithm):
    category, type_, region = terminology_codes(style)
    concept = lambda c: hd.sr.CodedConcept(value=c[1], scheme_designator=c[0], meaning=c[2])  # noqa: E731
    rgb = [min(255, max(0, round(255 * c))) for c in style.color]
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=style.name, segmented_property_category=concept(category),
        segmented_property_type=concept(type_), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[concept(region)] if region else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb))


def write_dicom_seg(labels: np.ndarray, geometry: Geometry, path: str | os.PathLike, label_names: Mapping[str, int],
                    metadata: Optional[Mapping[str, str]] = None, source: str | os.PathLike | None = None) -> Path:
    """Write the (z, y, x) label map `labels` on `geometry` (the grid read from the DICOM series folder `source`)
    as a DICOM SEG at `path`, atomically. `metadata`: the provenance keys (export.provenance) that name the model,
    version and weights in the algorithm identification."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    from RCSegNeXtCore import __version__
    if source is None or not Path(source).is_dir():
        raise RCSegNeXtError(f"{path}: a DICOM SEG is written only for a DICOM series input (a folder of DICOM "
                             f"files); {source} is not one. Write .seg.nrrd or a label map instead")
    folder = Path(source)
    labels = np.asarray(labels)
    if labels.shape != tuple(geometry.shape):
        raise ValueError(f"labels {labels.shape} do not match the grid {geometry.shape}")
    slices, datasets = _source_headers(folder)
    order = match_instances(geometry, slices, folder)
    styles = segment_styles(label_names)
    if not styles:
        raise ValueError(f"{path}: the model has no foreground label; a DICOM SEG needs at least one segment")
    meta = dict(metadata or {})
    model = meta.get("RCSegNeXt_Model", "") or "RCSegNeXt"
    parameters = {"model": model}
    for key, name in (("RCSegNeXt_WeightsSHA256", "weights_sha256"), ("RCSegNeXt_Engine", "engine")):
        if meta.get(key):
            parameters[name] = meta[key]
    algorithm = hd.AlgorithmIdentificationSequence(name="RCSegNeXt", family=codes.cid7162.ArtificialIntelligence,
                                                   version=__version__, parameters=parameters)
    # (frames, rows, columns, segments): segment s is label value styles[s].label_value, frame k lies on order[k]
    stacked = np.stack([labels == style.label_value for style in styles], axis=-1).astype(np.uint8)
    series_number = int(getattr(datasets[0], "SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
    with warnings.catch_warnings():
        # the source's PatientName copied as it is (anonymised series often hold one component): not ours to fix
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name",
                                category=UserWarning)
        seg = hd.seg.Segmentation(
            source_images=[datasets[i] for i in order], pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_description(hd, n, s, algorithm) for n, s in enumerate(styles, start=1)],
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="RCSegNeXt", manufacturer_model_name=model[:64], software_versions=f"rcsegnext {__version__}",
            device_serial_number=(meta.get("RCSegNeXt_WeightsSHA256", "")[:16] or "none"),
            series_description=SERIES_DESCRIPTION, content_label=CONTENT_LABEL,
            content_description=f"RCSegNeXt {__version__}, model {model}"[:64], omit_empty_frames=False)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
