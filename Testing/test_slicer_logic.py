"""RCSegNeXt/RCSegNeXtLib logic against real MRML (slicer-core, headless): volume node -> segmentation node with
Rectum/Tumor, geometry, terminology, .seg.nrrd round trip (also slicerio), the subprocess path, the Dice panel and
"save as training case"."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from conftest import require_module, require_path
from slicer_headless import headless_scene, load_volume, put_in_study

slicer = require_module("slicer", "slicer-core")
import slicer.util as su  # noqa: E402

from RCSegNeXtCore.data.io import read_image, write_image  # noqa: E402
from RCSegNeXtCore.errors import DatasetError  # noqa: E402

# random-weight test models are "far from the training data's spacing": expected, not what these tests check
pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")

RECTUM_CODE, TUMOR_CODE = "34402009", "86049000"
REAL_SAGITTAL = "prostatex/ProstateX-0001/ProstateX-0001_t2_tse_sag.mha"
REAL_DICOM = "prostatex/ProstateX-0000/t2_tse_sag_dicom"  # a sagittal DICOM series (Slicer reads it from one file)


@pytest.fixture
def scene():
    """The process-wide headless scene, with slicer.mrmlScene / slicer.modules pointed at it for this test."""
    return headless_scene()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from RCSegNeXtCore.planning import make_plans_from_values
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    plans = make_plans_from_values([5.0, 5.0, 5.0], [16, 32, 32], base_channels=4)  # coarse: fast on 2 CPU cores
    return init_model_folder(plans, tmp_path_factory.mktemp("model") / "tiny", seed=1)


@pytest.fixture(scope="session")
def phantom_file(tmp_path_factory):
    """A small phantom case (oblique sagittal grid) written with SimpleITK: (image path, label array)."""
    from RCSegNeXtCore.phantom import make_phantom_case
    image, label = make_phantom_case(np.random.default_rng(3), size="small", tumour=True)
    path = tmp_path_factory.mktemp("phantom") / "phantom_t2.nrrd"
    write_image(image.array.astype(np.int16), image.geometry, path)
    return path, label


@pytest.fixture(scope="session")
def expected_labels(tiny_model, phantom_file):
    """Independent path: the core predictor on the phantom file itself (no MRML)."""
    from RCSegNeXtCore.inference.predictor import Predictor
    labels = Predictor(tiny_model, device="cpu").predict(read_image(phantom_file[0], np.float32)).labels
    assert (labels == 1).any() and (labels == 2).any()  # random weights still give both classes on this case
    return labels


@pytest.fixture
def logic(scene):
    from RCSegNeXtLib.logic import RCSegNeXtLogic
    return RCSegNeXtLogic()


def ijk_to_ras(node) -> np.ndarray:
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return su.arrayFromVTKMatrix(m)


def reference_geometry_matrix(segmentation_node) -> np.ndarray:
    text = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    return np.array([float(v) for v in text.split(";") if v.strip()][:16]).reshape(4, 4)


def segment(node, name):
    seg = node.GetSegmentation()
    return seg.GetSegment(seg.GetSegmentIdBySegmentName(name))


def mask(node, name, volume):
    return su.arrayFromSegmentBinaryLabelmap(node, node.GetSegmentation().GetSegmentIdBySegmentName(name), volume) > 0


# -- conversion -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["phantom", "real", "real DICOM"])
def test_volume_node_to_image_matches_simpleitk(scene, phantom_file, request, source):
    """Slicer's reader + our IJK->RAS conversion give the voxels and LPS geometry SimpleITK reads from the file."""
    from RCSegNeXtLib.convert import ijk_to_ras_from_geometry, volume_to_image
    if source == "phantom":
        path = load_path = phantom_file[0]
    else:
        real_data = request.getfixturevalue("real_data")  # skips when the real-data folder is absent
        path = real_data / (REAL_SAGITTAL if source == "real" else REAL_DICOM)
        load_path = path / "1-01.dcm" if source == "real DICOM" else path
    require_path(load_path, "real MRI file")
    volume = load_volume(load_path, f"T2 {source}")
    image, reference = volume_to_image(volume, dtype=None), read_image(path)
    assert image.geometry.differences(reference.geometry, 1e-5) == []
    assert np.array_equal(image.array, reference.array)
    assert np.allclose(ijk_to_ras_from_geometry(image.geometry), ijk_to_ras(volume), atol=1e-5)
    if source == "phantom":  # the phantom's grid is oblique: direction is not a permutation matrix
        assert not np.allclose(np.abs(image.geometry.direction_matrix).round(), np.abs(image.geometry.direction_matrix))


# -- segmentation in-process and via the subprocess ----------------------------------------------------------------
def check_segmentation(node, volume):
    assert [node.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)] == ["Rectum", "Tumor"]
    from RCSegNeXtLib.convert import segment_type_code
    assert segment_type_code(segment(node, "Rectum")) == RECTUM_CODE
    assert segment_type_code(segment(node, "Tumor")) == TUMOR_CODE
    from RCSegNeXtLib.convert import segment_tag
    tumor_terms = segment_tag(segment(node, "Tumor"), slicer.vtkSegment.GetTerminologyEntryTagName())
    assert "SCT^86049000^Neoplasm, Primary" in tumor_terms and tumor_terms.split("~")[5].split("^")[1] == RECTUM_CODE
    r, g, b = segment(node, "Rectum").GetColor()
    assert r > 0.7 and g < 0.4 and b < 0.4  # red rectum, green tumour (the paper's figures)
    r, g, b = segment(node, "Tumor").GetColor()
    assert g > 0.7 and r < 0.4 and b < 0.4
    assert np.allclose(reference_geometry_matrix(node), ijk_to_ras(volume), atol=1e-4)
    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    assert node.GetDisplayNode() is not None and node.GetDisplayNode().GetVisibility2D()


def test_segment_in_process_matches_core_predictor(scene, logic, tiny_model, phantom_file, expected_labels,
                                                   tmp_path):
    path, expected = phantom_file[0], expected_labels
    volume = load_volume(path, "phantom T2")
    study = put_in_study(volume)
    stages = []
    node = logic.segment(volume, tiny_model, device="cpu", progress=lambda s, d, t: stages.append(s))
    check_segmentation(node, volume)
    assert node.GetName() == "phantom T2 segmentation" and "predict" in stages
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    for name, value in (("Rectum", 1), ("Tumor", 2)):
        assert np.array_equal(mask(node, name, volume), expected == value), name

    # .seg.nrrd written by Slicer's storage node, read back by slicerio and by Slicer
    import slicerio
    seg_path = tmp_path / "prediction.seg.nrrd"
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(seg_path))
    assert storage.WriteData(node)
    data = slicerio.read_segmentation(str(seg_path))
    assert [(s["name"], s["terminology"]["type"][1]) for s in data["segments"]] == \
        [("Rectum", RECTUM_CODE), ("Tumor", TUMOR_CODE)]
    for name, value in (("Rectum", 1), ("Tumor", 2)):
        assert np.array_equal(slicerio.segment_mask(data, name).transpose(2, 1, 0) > 0, expected == value)
    ijk_to_lps = np.asarray(data["ijkToLPS"], float)
    assert np.allclose(np.diag([-1, -1, 1, 1]) @ ijk_to_lps, ijk_to_ras(volume), atol=1e-4)
    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(seg_path))
    assert reader.ReadData(reloaded)
    assert logic.computeDice(node, reloaded) == {"Rectum": 1.0, "Tumor": 1.0}

    # segmenting again into the same node replaces the segments in place (IDs kept, no duplicates)
    ids = [node.GetSegmentation().GetNthSegmentID(i) for i in range(2)]
    swapped = np.where(expected == 1, 2, np.where(expected == 2, 1, 0)).astype(np.uint8)
    again = logic.segmentationFromLabels(volume, swapped, {"background": 0, "rectum": 1, "tumour": 2}, node)
    assert again is node and [node.GetSegmentation().GetNthSegmentID(i) for i in range(2)] == ids
    assert node.GetSegmentation().GetNumberOfSegments() == 2
    assert np.array_equal(mask(node, "Tumor", volume), expected == 1)


def test_segment_real_sagittal_volume(scene, logic, tiny_model, real_data):
    path = require_path(real_data / REAL_SAGITTAL, "real MRI file")
    volume = load_volume(path, "ProstateX-0001 sag")
    node = logic.segment(volume, tiny_model, device="cpu")
    check_segmentation(node, volume)
    assert mask(node, "Rectum", volume).shape == (19, 320, 320)


@pytest.mark.slow
def test_segment_through_subprocess_runner(scene, logic, tiny_model, phantom_file, expected_labels, tmp_path):
    """The GUI path: write the volume, run `python -m RCSegNeXtCore predict --progress-json` (this Python standing
    in for PythonSlicer), follow the progress, load the result: same segments as in-process."""
    from RCSegNeXtLib.runner import FinishedEvent, ProgressEvent, SubprocessRunner, build_predict_command
    volume = load_volume(phantom_file[0], "phantom T2 (subprocess)")
    input_path = logic.writeInput(volume, tmp_path / "input.nrrd")
    output = tmp_path / "labels.nrrd"
    runner = SubprocessRunner(build_predict_command(sys.executable, input_path, output, tiny_model, "cpu"))
    try:
        events = runner.start().wait(timeout=120)
    finally:
        runner.cancel()  # no-op when it finished; never leave a child behind on a timeout
    finished = events[-1]
    assert isinstance(finished, FinishedEvent) and finished.returncode == 0, finished.message
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert {"predict", "done"} <= {e.stage for e in progress}
    tiles = [e for e in progress if e.stage == "predict" and e.tiles_total]
    assert tiles and tiles[-1].tiles_done == tiles[-1].tiles_total and progress[-1].fraction == 1.0
    via_subprocess = logic.loadResult(volume, output, tiny_model)
    check_segmentation(via_subprocess, volume)
    for name, value in (("Rectum", 1), ("Tumor", 2)):
        assert np.array_equal(mask(via_subprocess, name, volume), expected_labels == value), name


# -- Dice panel ---------------------------------------------------------------------------------------------------
def make_seg(scene, volume, masks: dict, name: str):
    """Segmentation node from boolean masks on `volume`'s grid, built with slicer.util only (independent of ours)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for seg_name, m in masks.items():
        sid = node.GetSegmentation().AddEmptySegment(seg_name, seg_name)
        su.updateSegmentBinaryLabelmapFromArray(m.astype(np.uint8), node, sid, volume)
    return node


def box(shape, z, y, x):
    m = np.zeros(shape, bool)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return m


def test_dice_table_against_hand_computed_values(scene, logic):
    from RCSegNeXtCore.evaluation.metrics import hd95
    shape = (8, 20, 20)
    volume = su.addVolumeFromArray(np.zeros(shape, np.float32), np.diag([1.0, 1.0, 4.0, 1.0]), name="grid 1x1x4")
    ref_rectum = box(shape, (2, 6), (5, 15), (5, 15))    # 4*10*10 = 400 voxels
    test_rectum = box(shape, (2, 6), (5, 15), (8, 18))   # shifted 3 in x: overlap 4*10*7 = 280
    ref = make_seg(scene, volume, {"Rectum": ref_rectum, "Tumor": box(shape, (3, 4), (8, 10), (8, 10)),
                                   "Bladder": np.zeros(shape, bool)}, "reference")
    test = make_seg(scene, volume, {"rectum": test_rectum, "Bladder": np.zeros(shape, bool),
                                    "Lymph node": box(shape, (0, 1), (0, 2), (0, 2))}, "test")
    table = logic.compareSegmentations(ref, test, volume)
    rows = {r.name: r for r in table.rows}
    assert list(rows) == ["Rectum", "Tumor", "Bladder", "Lymph node"]
    assert rows["Rectum"].dice == pytest.approx(2 * 280 / 800)                       # 0.7
    assert rows["Rectum"].reference_ml == pytest.approx(400 * 4 / 1000)              # 1.6 ml
    assert rows["Rectum"].test_ml == pytest.approx(1.6) and rows["Rectum"].difference_ml == pytest.approx(0)
    assert rows["Rectum"].hd95 == pytest.approx(hd95(test_rectum, ref_rectum, (4.0, 1.0, 1.0)))
    assert rows["Tumor"].dice == 0.0 and rows["Tumor"].message == "missing in test segmentation"
    assert rows["Tumor"].reference_ml == pytest.approx(4 * 4 / 1000) and rows["Tumor"].test_ml == 0
    assert math.isnan(rows["Bladder"].dice) and "n/a" in rows["Bladder"].message
    assert rows["Lymph node"].dice == 0.0 and rows["Lymph node"].message == "missing in reference segmentation"
    assert table.geometry_note == ""
    cells = table.as_text_rows()
    assert cells[1][:2] == ["Rectum", "0.700"] and cells[3][1] == "n/a" and cells[2][2] == "inf"
    dice = logic.computeDice(ref, test)  # reference volume found from the segmentation itself
    assert dice["Rectum"] == pytest.approx(0.7) and math.isnan(dice["Bladder"])


def test_dice_matches_segments_by_terminology(scene, logic):
    shape = (4, 10, 10)
    volume = su.addVolumeFromArray(np.zeros(shape, np.float32), np.eye(4), name="grid terms")
    ref = make_seg(scene, volume, {"Tumor": box(shape, (1, 3), (2, 6), (2, 6))}, "ref terms")
    test = make_seg(scene, volume, {"Lesion": box(shape, (1, 3), (2, 6), (2, 4))}, "test terms")
    from RCSegNeXtCore.inference.segments import TUMOR
    for node in (ref, test):
        s = node.GetSegmentation().GetNthSegment(0)
        s.SetTag(s.GetTerminologyEntryTagName(), TUMOR.terminology)
    assert logic.computeDice(ref, test) == {"Tumor": pytest.approx(2 * 16 / (32 + 16))}


def test_dice_on_different_geometry_uses_reference_grid(scene, logic):
    """A test segmentation on a 2x coarser in-plane grid is rasterised on the reference volume's grid."""
    shape = (4, 16, 16)
    fine = su.addVolumeFromArray(np.zeros(shape, np.float32), np.diag([1.0, 1.0, 3.0, 1.0]), name="fine")
    coarse_ijk = np.diag([2.0, 2.0, 3.0, 1.0])
    coarse_ijk[:3, 3] = (0.5, 0.5, 0.0)  # coarse voxel i covers fine voxels 2i, 2i+1 exactly
    coarse = su.addVolumeFromArray(np.zeros((4, 8, 8), np.float32), coarse_ijk, name="coarse")
    ref = make_seg(scene, fine, {"Rectum": box(shape, (1, 3), (4, 12), (4, 12))}, "ref fine")    # 2*8*8 = 128
    test = make_seg(scene, coarse, {"Rectum": box((4, 8, 8), (1, 3), (2, 6), (3, 7))}, "test coarse")
    expected_test = box(shape, (1, 3), (4, 12), (6, 14))                                          # 128, overlap 96
    assert np.array_equal(mask(test, "Rectum", fine), expected_test)
    table = logic.compareSegmentations(ref, test, fine, resample=True)  # test belongs to 'coarse': asked for
    assert table.rows[0].dice == pytest.approx(2 * 96 / 256)
    assert table.rows[0].test_ml == pytest.approx(128 * 3 / 1000)
    assert "different geometry" in table.geometry_note and "'fine'" in table.geometry_note


# -- corrections become training data ------------------------------------------------------------------------------
def test_save_as_training_case_passes_check_dataset(scene, logic, phantom_file, tmp_path):
    from RCSegNeXtCore.data.dataset import load_dataset
    from RCSegNeXtCore.data.validation import check_dataset
    from RCSegNeXtLib.convert import labels_to_segmentation
    from RCSegNeXtCore.inference.segments import segment_styles
    path, label = phantom_file
    volume = load_volume(path, "Case 7/corrected")
    styles = segment_styles({"background": 0, "rectum": 1, "tumour": 2})
    node = labels_to_segmentation(label, volume, styles)
    dataset = tmp_path / "Dataset900_Corrections"
    case_id = logic.saveAsTrainingCase(volume, node, dataset)
    assert case_id == "Case_7_corrected"
    assert check_dataset(dataset) == []
    ds = load_dataset(dataset)
    assert ds.labels == {"background": 0, "rectum": 1, "tumour": 2} and ds.dataset_json["numTraining"] == 1
    saved_label = read_image(ds.cases[0].label_path)
    saved_image = read_image(ds.cases[0].image_paths[0])
    original = read_image(path)
    assert np.array_equal(saved_label.array, label) and np.array_equal(saved_image.array, original.array)
    assert saved_label.geometry.differences(original.geometry) == [] and saved_image.array.dtype == np.int16

    assert logic.saveAsTrainingCase(volume, node, dataset) == "Case_7_corrected_001"
    assert load_dataset(dataset).dataset_json["numTraining"] == 2 and check_dataset(dataset) == []
    with pytest.raises(DatasetError, match="already exists"):
        logic.saveAsTrainingCase(volume, node, dataset, caseId="Case_7_corrected")
    with pytest.raises(DatasetError, match="case ID"):
        logic.saveAsTrainingCase(volume, node, dataset, caseId="../escape")
    only_rectum = make_seg(scene, volume, {"Rectum": label == 1}, "rectum only")
    with pytest.raises(DatasetError, match="no segment for Tumor"):
        logic.saveAsTrainingCase(volume, only_rectum, dataset)


def test_segments_follow_the_volume_transform_and_bad_inputs_are_refused(scene, logic):
    from RCSegNeXtCore.errors import ImageReadError, RCSegNeXtError
    from RCSegNeXtLib.convert import volume_to_image
    shape = (3, 8, 8)
    volume = su.addVolumeFromArray(np.zeros(shape, np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), name="moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    labels = np.zeros(shape, np.uint8)
    labels[1, 2:5, 2:6] = 2
    node = logic.segmentationFromLabels(volume, labels, {"background": 0, "rectum": 1, "tumour": 2})
    assert node.GetTransformNodeID() == transform.GetID()
    assert mask(node, "Tumor", volume).sum() == 12 and mask(node, "Rectum", volume).sum() == 0
    with pytest.raises(RCSegNeXtError, match=r"label map shape \(3, 8, 9\)"):
        logic.segmentationFromLabels(volume, np.zeros((3, 8, 9), np.uint8), {"background": 0, "rectum": 1})
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a label map")
    su.updateVolumeFromArray(labelmap, np.zeros(shape, np.uint8))
    with pytest.raises(ImageReadError, match="grey-level"):
        volume_to_image(labelmap)
    with pytest.raises(ImageReadError, match="no input volume"):
        volume_to_image(None)
