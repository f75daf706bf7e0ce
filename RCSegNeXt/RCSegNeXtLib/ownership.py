"""Which volume a segmentation belongs to: the guard between a segmentation and another patient's volume.

A segmentation *belongs to* a volume when its reference-geometry node reference is that volume; without such a
reference (e.g. a `.seg.nrrd` loaded from disk), when its reference image geometry (IJK->RAS and extent) equals
the volume's grid within `GEOMETRY_TOLERANCE`. Saving a training case, scoring Dice or writing a prediction into an
existing segmentation on a volume it does not belong to would silently pair one patient's labels with another's
image, so callers refuse unless asked to resample. Qt-free; `slicer` is imported inside the functions.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from RCSegNeXtCore.data.io import Geometry
from RCSegNeXtCore.errors import RCSegNeXtError

from RCSegNeXtLib import convert

GEOMETRY_TOLERANCE = 1e-4  # as the core's Geometry.matches: spacing/origin relative to their size, directions absolute


class SegmentationMismatchError(RCSegNeXtError):
    """A segmentation was used with a volume it does not belong to (nothing was written)."""


def reference_volume(segmentationNode):
    """The volume node the segmentation was made on (its reference-geometry node reference), or None."""
    import slicer
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    return segmentationNode.GetNodeReference(role)


def reference_geometry(segmentationNode) -> Optional[Geometry]:
    """The segmentation's reference image grid as a core Geometry, or None when it has none."""
    import slicer
    text = segmentationNode.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    try:
        values = np.array([float(v) for v in (text or "").split(";") if v.strip()])
    except ValueError:
        return None
    if values.size != 22:  # 16 matrix values + 6 extent values
        return None
    matrix, extent = values[:16].reshape(4, 4), values[16:].astype(int)
    shape_zyx = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    if min(shape_zyx) < 1:
        return None
    matrix[:3, 3] += matrix[:3, :3] @ extent[0::2]  # an extent not starting at 0 moves the grid's first voxel
    try:
        return convert.geometry_from_ijk_to_ras(matrix, shape_zyx)
    except RCSegNeXtError:
        return None


def ownership_problem(segmentationNode, volumeNode) -> str:
    """'' when the segmentation belongs to the volume, else why not (one sentence a user can act on)."""
    seg_name, vol_name = segmentationNode.GetName(), volumeNode.GetName()
    owner = reference_volume(segmentationNode)
    if owner is not None:
        if owner is volumeNode or owner.GetID() == volumeNode.GetID():
            return ""
        return f"segmentation '{seg_name}' was made on volume '{owner.GetName()}', not on '{vol_name}'"
    geometry = reference_geometry(segmentationNode)
    if geometry is None:
        return f"segmentation '{seg_name}' records no volume or grid, so it cannot be matched to '{vol_name}'"
    differences = convert.volume_to_geometry(volumeNode).differences(geometry, GEOMETRY_TOLERANCE)
    if differences:
        return (f"segmentation '{seg_name}' is on another grid than volume '{vol_name}' ("
                + "; ".join(differences) + ")")
    return ""


def belongs_to(segmentationNode, volumeNode) -> bool:
    return not ownership_problem(segmentationNode, volumeNode)


def require_belongs(segmentationNode, volumeNode, action: str, resample: bool = False) -> None:
    """Raise SegmentationMismatchError (saying what to do) unless the segmentation belongs to the volume or the
    caller explicitly asked to resample it onto the volume's grid."""
    if resample:
        return
    problem = ownership_problem(segmentationNode, volumeNode)
    if problem:
        raise SegmentationMismatchError(
            f"cannot {action}: {problem}. Choose the segmentation of '{volumeNode.GetName()}', or resample "
            f"explicitly (resample=True) if '{segmentationNode.GetName()}' really is this patient's and series'")


def is_blank(segmentationNode) -> bool:
    """An unused segmentation node: no segments and no volume or grid (e.g. just made in a node selector)."""
    return (segmentationNode.GetSegmentation().GetNumberOfSegments() == 0
            and reference_volume(segmentationNode) is None and reference_geometry(segmentationNode) is None)


def same_grid(a, b) -> bool:
    """Do two segmentation nodes share one reference grid (and transform)?"""
    ga, gb = reference_geometry(a), reference_geometry(b)
    if ga is None or gb is None or a.GetTransformNodeID() != b.GetTransformNodeID():
        return False
    return ga.matches(gb, GEOMETRY_TOLERANCE)
