"""MRML <-> core conversions: a volume node to a core `Image` and a label map back to a segmentation node.

Slicer stores a volume's grid as an IJK->RAS matrix; the core (ITK) uses LPS origin/direction and (z, y, x) spacing.
The conversion is exact (no resampling): LPS = diag(-1, -1, 1) * RAS. Qt-free; `slicer`/`vtk` are imported inside
the functions, so the pure-numpy geometry helpers work without them.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import numpy as np

from RCSegNeXtCore.data.io import Geometry, Image
from RCSegNeXtCore.errors import ImageReadError, RCSegNeXtError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray, shape_zyx: Iterable[int]) -> Geometry:
    """Core `Geometry` (ITK LPS, spacing (z, y, x)) of a Slicer IJK->RAS 4x4 matrix and an array shape (z, y, x)."""
    lps = RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=float)
    axes = lps[:3, :3]
    spacing_xyz = np.linalg.norm(axes, axis=0)
    if np.any(spacing_xyz <= 0):
        raise ImageReadError(f"volume has a zero voxel spacing {tuple(spacing_xyz)}; fix the volume's geometry "
                             "(Volumes module > Volume Information) before segmenting")
    direction = axes / spacing_xyz[None, :]
    return Geometry(tuple(int(s) for s in shape_zyx), tuple(float(s) for s in spacing_xyz[::-1]),
                    tuple(float(o) for o in lps[:3, 3]), tuple(float(d) for d in direction.ravel()))


def ijk_to_ras_from_geometry(geometry: Geometry) -> np.ndarray:
    """Inverse of `geometry_from_ijk_to_ras`: the 4x4 IJK->RAS matrix of a core geometry."""
    return RAS_TO_LPS @ geometry.index_to_physical()


def volume_ijk_to_ras(volumeNode) -> np.ndarray:
    import slicer.util
    import vtk
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_to_geometry(volumeNode) -> Geometry:
    """Core geometry of a volume node's voxel grid."""
    import slicer.util
    return geometry_from_ijk_to_ras(volume_ijk_to_ras(volumeNode), slicer.util.arrayFromVolume(volumeNode).shape)


def volume_to_image(volumeNode, dtype: Optional[type] = np.float32) -> Image:
    """A scalar volume node as a core `Image`: a copy of the voxels (as `dtype`; None keeps the voxel type) and the
    exact geometry."""
    import slicer.util
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ImageReadError("no input volume (or the volume has no voxels): select a loaded volume")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ImageReadError(f"volume '{volumeNode.GetName()}' is a {volumeNode.GetClassName()}; a grey-level "
                             "(scalar) T2 volume is needed")
    transform = volumeNode.GetParentTransformNode()
    if transform is not None and not transform.IsLinear():
        raise RCSegNeXtError(f"volume '{volumeNode.GetName()}' is under the non-linear transform "
                             f"'{transform.GetName()}'; harden the transform (Data module) before segmenting")
    array = slicer.util.arrayFromVolume(volumeNode)
    if array.ndim != 3:
        raise ImageReadError(f"volume '{volumeNode.GetName()}' has array shape {array.shape}; a 3D scalar volume "
                             "is needed")
    geometry = geometry_from_ijk_to_ras(volume_ijk_to_ras(volumeNode), array.shape)
    return Image(np.array(array, dtype=dtype, copy=True), geometry)


def segment_tag(segment, name: str) -> str:
    """Value of a segment tag ('' when absent)."""
    import vtk
    value = vtk.reference("")
    return str(value) if segment is not None and segment.GetTag(name, value) else ""


def terminology_type_code(entry: str) -> str:
    """SNOMED type code of a Slicer terminology string 'context~category~type~...' ('' when there is none)."""
    parts = (entry or "").split("~")
    return parts[2].split("^")[1] if len(parts) > 2 and parts[2].count("^") >= 2 else ""


def segment_type_code(segment) -> str:
    """SNOMED type code from a segment's terminology tag ('' when it has none)."""
    return terminology_type_code(segment_tag(segment, segment.GetTerminologyEntryTagName()))


def _require_volume_shape(array: np.ndarray, volumeNode, what: str, subject: str) -> None:
    """Refuse an array that is not on the volume's voxel grid (its shape differs)."""
    import slicer.util
    shape = tuple(slicer.util.arrayFromVolume(volumeNode).shape)
    if array.shape != shape:
        raise RCSegNeXtError(f"{what} shape {array.shape} differs from volume '{volumeNode.GetName()}' shape "
                             f"{shape}; {subject} must be on the input grid")


def labels_to_segmentation(labels: np.ndarray, volumeNode, styles, segmentationNode=None,
                           name: Optional[str] = None):
    """Write a (z, y, x) label map on `volumeNode`'s grid into a segmentation node, one segment per style.

    `styles` are `RCSegNeXtCore.inference.segments.SegmentStyle`s (name, colour, terminology, label value). Existing
    segments with the same name are replaced in place (their ID kept, so Segment Editor selections survive); other
    segments are left alone. The node gets the volume as reference geometry and the volume's parent transform, and
    is shown in the slice views; a node created here is also put in the volume's study (an existing node keeps its
    name and place: callers check it belongs to the volume, see `ownership`).
    """
    import slicer
    import slicer.util
    labels = np.asarray(labels)
    _require_volume_shape(labels, volumeNode, "label map", "the prediction")
    scene = volumeNode.GetScene()
    created = segmentationNode is None
    if created:
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                   name or f"{volumeNode.GetName()} segmentation")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    segmentation = segmentationNode.GetSegmentation()
    for style in styles:
        segment_id = segmentation.GetSegmentIdBySegmentName(style.name)
        if not segment_id:
            segment_id = segmentation.AddEmptySegment(style.name, style.name, list(style.color))
        segment = segmentation.GetSegment(segment_id)
        segment.SetColor(*style.color)
        if style.terminology:
            segment.SetTag(segment.GetTerminologyEntryTagName(), style.terminology)
        slicer.util.updateSegmentBinaryLabelmapFromArray((labels == style.label_value).astype(np.uint8),
                                                         segmentationNode, segment_id, volumeNode)
    if created:
        place_in_study(segmentationNode, volumeNode)
    display = segmentationNode.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    return segmentationNode


def place_in_study(node, volumeNode) -> None:
    """Put `node` under the same subject-hierarchy parent (the study) as `volumeNode`, when the volume has one."""
    import slicer
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volumeNode)
    parent = sh.GetItemParent(volume_item) if volume_item else 0
    if not parent:
        return
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def segment_names(segmentationNode) -> List[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def segment_mask(segmentationNode, segment_id: str, referenceVolumeNode) -> np.ndarray:
    """Boolean (z, y, x) mask of one segment rasterised on `referenceVolumeNode`'s grid (nearest neighbour)."""
    import slicer.util
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segment_id, referenceVolumeNode) > 0


# -- the review map (predict --uncertainty): a float volume on the input's grid, drawn over it ----------------------
# Colour tables for values 0..1, first present wins: the Slicer application's file tables (blue = a little unsure,
# red = as unsure as it gets); slicer-core without them has the built-in ReverseRainbow (purple to red).
REVIEW_MAP_COLORS = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeFileInferno.txt",
                     "vtkMRMLColorTableNodeReverseRainbow")
REVIEW_MAP_THRESHOLD = 0.05  # below: not drawn, so the T2 stays readable where the model is sure
REVIEW_MAP_OPACITY = 0.4     # of the foreground layer over the T2
REVIEW_MAP_ATTRIBUTE = "RCSegNeXt.ReviewMap"  # on a review-map volume node: what it shows


def review_map_color_id(scene) -> str:
    """The first colour table of REVIEW_MAP_COLORS in `scene` ('' when none is)."""
    return next((c for c in REVIEW_MAP_COLORS if scene.GetNodeByID(c) is not None), "")


def map_to_volume(values: np.ndarray, volumeNode, name: str, mapNode=None):
    """A float (z, y, x) map on `volumeNode`'s grid -> a scalar volume node with the volume's IJK->RAS and parent
    transform (`mapNode` is updated in place when given, else a new node is put in the volume's study), displayed
    as a review map: REVIEW_MAP_COLORS, window 0..1, values under REVIEW_MAP_THRESHOLD transparent."""
    import slicer.util
    import vtk
    values = np.asarray(values, dtype=np.float32)
    _require_volume_shape(values, volumeNode, "review map", "the map")
    scene = volumeNode.GetScene()
    created = mapNode is None
    if created:
        mapNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    mapNode.SetIJKToRASMatrix(matrix)
    mapNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(mapNode, values)
    mapNode.SetAttribute(REVIEW_MAP_ATTRIBUTE, "uncertainty: normalised entropy of the softmax, 0..1")
    mapNode.CreateDefaultDisplayNodes()
    display = mapNode.GetDisplayNode()
    color = review_map_color_id(scene)
    if color:
        display.SetAndObserveColorNodeID(color)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetAutoThreshold(False)
    display.SetThreshold(REVIEW_MAP_THRESHOLD, 1.0)
    display.SetApplyThreshold(True)
    display.SetInterpolate(False)  # one colour per voxel: the map is read voxel by voxel
    if created:
        place_in_study(mapNode, volumeNode)
    return mapNode


def show_review_map(volumeNode, mapNode=None, opacity: float = REVIEW_MAP_OPACITY) -> None:
    """Every slice view: `volumeNode` as background and `mapNode` as foreground at `opacity`. Without a map, a
    review map left in the foreground by an earlier run is taken out (it would be read as this run's)."""
    import slicer
    scene = volumeNode.GetScene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(volumeNode.GetID())
        if mapNode is not None:
            composite.SetForegroundVolumeID(mapNode.GetID())
            composite.SetForegroundOpacity(opacity)
            continue
        shown = scene.GetNodeByID(composite.GetForegroundVolumeID() or "")
        if isinstance(shown, slicer.vtkMRMLNode) and shown.GetAttribute(REVIEW_MAP_ATTRIBUTE) is not None:
            composite.SetForegroundVolumeID(None)
