"""Outputs: label maps and .seg.nrrd on the input's exact grid, read back by SimpleITK, slicerio and Slicer's MRML."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import require_module

from RCSegNeXtCore.data.io import Geometry, read_geometry, read_image
from RCSegNeXtCore.inference.export import provenance, write_labelmap, write_probabilities, write_segmentation
from RCSegNeXtCore.inference.segments import RECTUM, TUMOR, segment_styles, style_for

LABELS = {"background": 0, "rectum": 1, "tumour": 2}
# an oblique, permuted direction (sagittal-like: k along L, rotated 20 degrees)
_c, _s = np.cos(np.radians(20)), np.sin(np.radians(20))
OBLIQUE = Geometry((6, 9, 7), (3.6, 0.5625, 0.6), (12.5, -40.0, 7.25),
                   tuple(np.array([[0, 0, 1], [_c, -_s, 0], [_s, _c, 0]], float).ravel()))


def _labels(geometry=OBLIQUE):
    lab = np.zeros(geometry.shape, np.uint8)
    lab[1:5, 2:7, 1:6] = 1
    lab[2:4, 3:5, 2:4] = 2
    return lab


def test_labelmap_keeps_exact_geometry_and_provenance(tmp_path):
    meta = provenance("MyModel", "ab" * 32)
    for name in ("pred.nii.gz", "pred.nrrd"):
        write_labelmap(_labels(), OBLIQUE, tmp_path / name, meta)
        image = read_image(tmp_path / name)
        assert image.geometry.matches(OBLIQUE, 1e-6), image.geometry.differences(OBLIQUE)
        assert image.array.dtype == np.uint8 and np.array_equal(image.array, _labels())
    nrrd = sitk.ReadImage(str(tmp_path / "pred.nrrd"))
    assert nrrd.GetMetaData("RCSegNeXt_Model") == "MyModel"
    assert nrrd.GetMetaData("RCSegNeXt_WeightsSHA256") == "ab" * 32
    assert nrrd.GetMetaData("RCSegNeXt_SoftwareVersion").startswith("rcsegnext ")
    nii = sitk.ReadImage(str(tmp_path / "pred.nii.gz"))
    assert nii.GetMetaData("descrip").startswith("rcsegnext ") and "MyModel" in nii.GetMetaData("descrip")
    assert ("ab" * 8) in nii.GetMetaData("descrip")


def test_seg_nrrd_round_trips_through_slicerio(tmp_path):
    slicerio = require_module("slicerio")
    path = write_segmentation(_labels(), OBLIQUE, tmp_path / "case.seg.nrrd", LABELS, provenance("M", "cd" * 32))
    seg = slicerio.read_segmentation(str(path))
    segments = {s["name"]: s for s in seg["segments"]}
    assert list(segments) == ["Rectum", "Tumor"]
    assert segments["Rectum"]["color"] == pytest.approx([0.85, 0.25, 0.25])
    assert segments["Tumor"]["color"] == pytest.approx([0.25, 0.80, 0.25])
    assert segments["Rectum"]["labelValue"] == 1 and segments["Tumor"]["labelValue"] == 2
    rectum, tumor = segments["Rectum"]["terminology"], segments["Tumor"]["terminology"]
    assert rectum["type"] == ["SCT", "34402009", "Rectum"]
    assert rectum["category"] == ["SCT", "123037004", "Anatomical Structure"]
    assert tumor["type"] == ["SCT", "86049000", "Neoplasm, Primary"]
    assert tumor["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert tumor["anatomicRegion"] == ["SCT", "34402009", "Rectum"]
    # voxels: slicerio gives (i, j, k); ours are (z, y, x)
    for name, value in (("Rectum", 1), ("Tumor", 2)):
        mask = slicerio.segment_mask(seg, name).transpose(2, 1, 0)
        assert np.array_equal(mask > 0, _labels() == value)
    np.testing.assert_allclose(seg["ijkToLPS"], OBLIQUE.index_to_physical(), atol=1e-6)


def test_seg_nrrd_is_read_by_slicer_mrml(tmp_path):
    slicer = require_module("slicer", "slicer-core")
    vtk = require_module("vtk", "slicer-core")
    from vtk.util.numpy_support import vtk_to_numpy
    path = write_segmentation(_labels(), OBLIQUE, tmp_path / "case.seg.nrrd", LABELS)
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)   # registers the converter rules
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    for index, (style, value) in enumerate(((RECTUM, 1), (TUMOR, 2))):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == style.name
        assert segment.GetColor() == pytest.approx(style.color)
        tag = vtk.mutable("")
        assert segment.GetTag("TerminologyEntry", tag) and str(tag) == style.terminology
        image = slicer.vtkOrientedImageData()
        assert node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(index), image)
        x0, x1, y0, y1, z0, z1 = image.GetExtent()
        voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
        full = np.zeros(OBLIQUE.shape, np.uint8)
        full[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = voxels
        assert np.array_equal(full > 0, _labels() == value)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ ras, OBLIQUE.index_to_physical(), atol=1e-6)


def test_probabilities_are_a_vector_image_on_the_grid(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=OBLIQUE.shape).transpose(3, 0, 1, 2).astype(np.float32)
    path = write_probabilities(probs, OBLIQUE, tmp_path / "p.nrrd", LABELS, provenance("M", "00"))
    image = sitk.ReadImage(str(path))
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetMetaData("RCSegNeXt_Classes") == \
        "background rectum tumour"
    np.testing.assert_allclose(np.moveaxis(sitk.GetArrayFromImage(image), -1, 0), probs)
    assert read_geometry(path).matches(OBLIQUE, 1e-6)


def test_segment_styles_from_dataset_labels():
    styles = segment_styles({"background": 0, "tumor": 2, "Rectum": 1, "bladder": 3})
    assert [s.name for s in styles] == ["Rectum", "Tumor", "Bladder"]
    assert [s.label_value for s in styles] == [1, 2, 3]
    assert styles[1].terminology == TUMOR.terminology and styles[2].terminology == ""
    assert style_for("tumour", 5).name == "Tumor" and style_for("tumour", 5).label_value == 5


def test_segment_style_imports_without_torch_or_simpleitk():
    import subprocess
    import sys
    code = ("import sys; from RCSegNeXtCore.inference.segments import SEGMENT_STYLE; "
            "print('torch' in sys.modules or 'SimpleITK' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
