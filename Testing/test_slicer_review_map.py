"""The review map in the Slicer panel (RCSegNeXtLib against real MRML, slicer-core headless): `predict --uncertainty`
asked for by the run controller and loaded as "<volume> review map" on the input's grid, coloured for 0..1 and drawn
over the volume; the per-case score on the segmentation node and in the report; the same from the in-process Logic;
nothing of it when the checkbox is off."""
from __future__ import annotations

import ast
import io
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import require_module
from slicer_headless import MODULE_DIR, headless_scene, load_volume, module_on_path

slicer = require_module("slicer", "slicer-core")
module_on_path()
import slicer.util as su  # noqa: E402

from RCSegNeXtCore.data.io import read_image  # noqa: E402
from test_slicer_logic import ijk_to_ras, phantom_file, tiny_model  # noqa: E402,F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")


@pytest.fixture
def scene():
    return headless_scene()


@pytest.fixture
def logic(scene):
    from RCSegNeXtLib.logic import RCSegNeXtLogic
    return RCSegNeXtLogic()


@pytest.fixture(scope="session")
def core_review(tiny_model, phantom_file, tmp_path_factory):
    """Independent path: the core's `predict --uncertainty` run (run_prediction, no MRML) on the phantom file:
    (the review map file's array and geometry, the core's score, its region)."""
    from RCSegNeXtCore.inference.config import PredictionConfig
    from RCSegNeXtCore.inference.export import uncertainty_path
    from RCSegNeXtCore.inference.runner import run_prediction
    out = tmp_path_factory.mktemp("core_review") / "phantom.nrrd"
    result = run_prediction(PredictionConfig(model=str(tiny_model), input=str(phantom_file[0]), output=str(out),
                                             device="cpu", uncertainty=True), stream=io.StringIO())
    review = read_image(uncertainty_path(out), np.float32)
    from RCSegNeXtLib.logic import read_review_score
    (score,) = result.uncertainty_scores.values()
    header_score, region = read_review_score(uncertainty_path(out))
    assert header_score == pytest.approx(score, abs=1e-6) and region in ("tumour", "foreground", "volume")
    assert 0 < review.array.max() <= 1 and review.array.min() >= 0
    return review, score, region


def review_maps(scene):
    from RCSegNeXtLib.convert import REVIEW_MAP_ATTRIBUTE
    return [n for n in su.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute(REVIEW_MAP_ATTRIBUTE)]


def check_review_map(node, volume, expected: np.ndarray, score: float, region: str, segmentation):
    """The map node: the expected voxels on the volume's exact grid, displayed for 0..1; the score on the
    segmentation node."""
    from RCSegNeXtLib.convert import REVIEW_MAP_THRESHOLD, volume_to_geometry
    from RCSegNeXtLib.logic import REVIEW_REGION_ATTRIBUTE, REVIEW_SCORE_ATTRIBUTE
    assert node.GetName() == f"{volume.GetName()} review map" and node.IsA("vtkMRMLScalarVolumeNode")
    assert np.array_equal(su.arrayFromVolume(node), expected)
    assert np.allclose(ijk_to_ras(node), ijk_to_ras(volume), atol=1e-6)
    assert volume_to_geometry(node).differences(volume_to_geometry(volume)) == []
    display = node.GetDisplayNode()
    # slicer-core has no file colour tables: the built-in purple-to-red one; the app's ColdToHotRainbow comes first
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeReverseRainbow"
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))  # 0..1
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(REVIEW_MAP_THRESHOLD)
    assert float(segmentation.GetAttribute(REVIEW_SCORE_ATTRIBUTE)) == pytest.approx(score, abs=1e-6)
    assert segmentation.GetAttribute(REVIEW_REGION_ATTRIBUTE) == region


# -- fast --------------------------------------------------------------------------------------------------------
def test_predict_command_asks_for_the_review_map():
    from RCSegNeXtCore.cli import build_parser
    from RCSegNeXtLib.runner import build_predict_command
    asked = build_parser().parse_args(build_predict_command("py", "i.nrrd", "o.nrrd", "m", uncertainty=True)[3:])
    plain = build_parser().parse_args(build_predict_command("py", "i.nrrd", "o.nrrd", "m")[3:])
    assert asked.uncertainty and asked.progress_json and not plain.uncertainty


def test_every_panel_parameter_is_a_parameter_node_field():
    """Each `SlicerParameterName` of the .ui (the review-map checkbox too) names a field of the module's parameter
    node, which the panel's parameter node wrapper would otherwise reject only inside Slicer."""
    bound = {p.find("string").text for p in ET.parse(MODULE_DIR / "Resources" / "UI" / "RCSegNeXt.ui").iter("property")
             if p.get("name") == "SlicerParameterName"}
    tree = ast.parse((MODULE_DIR / "RCSegNeXt.py").read_text(encoding="utf-8"))
    node_class = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "RCSegNeXtParameterNode")
    fields = {s.target.id for s in node_class.body if isinstance(s, ast.AnnAssign)}
    assert "reviewMap" in bound and bound <= fields, bound - fields


def test_review_map_display_and_slice_views(scene, logic):
    """A map on a transformed volume: its grid and transform, the colour/window/threshold, the slice views' layers,
    a rerun into the same segmentation updates the same map node, a run without it clears the score."""
    from RCSegNeXtLib.convert import REVIEW_MAP_OPACITY
    from RCSegNeXtLib.logic import REVIEW_SCORE_ATTRIBUTE
    shape = (4, 10, 12)
    ijk = np.diag([0.8, 0.9, 3.0, 1.0])
    ijk[:3, 3] = (-5.0, 7.0, 11.0)
    volume = su.addVolumeFromArray(np.zeros(shape, np.float32), ijk, name="review grid")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "review shift")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 3:6, 3:7] = 2
    values = np.random.default_rng(0).random(shape).astype(np.float32)
    seg = logic.segmentationFromLabels(volume, labels, {"background": 0, "rectum": 1, "tumour": 2})
    from RCSegNeXtLib.convert import volume_to_geometry
    node = logic.addReviewMap(volume, seg, values, volume_to_geometry(volume), 0.25, "tumour")
    check_review_map(node, volume, values, 0.25, "tumour", seg)
    assert node.GetTransformNodeID() == transform.GetID() and logic.lastReviewScore == 0.25

    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2)]
    try:
        logic.showReviewMap(volume, node)
        for view in views:
            assert (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID()) == (volume.GetID(), node.GetID())
            assert view.GetForegroundOpacity() == pytest.approx(REVIEW_MAP_OPACITY)
        logic.showReviewMap(volume, None)  # a run without the map: the old one leaves the foreground
        assert all(v.GetForegroundVolumeID() is None for v in views)
    finally:
        for view in views:
            scene.RemoveNode(view)

    again = logic.addReviewMap(volume, seg, values[::-1].copy(), score=0.5, region="tumour")
    assert again is node and np.array_equal(su.arrayFromVolume(node), values[::-1])
    assert float(seg.GetAttribute(REVIEW_SCORE_ATTRIBUTE)) == 0.5
    logic.segmentationFromLabels(volume, labels, {"background": 0, "rectum": 1, "tumour": 2}, seg)
    assert seg.GetAttribute(REVIEW_SCORE_ATTRIBUTE) is None and logic.lastReviewMap is None

    from RCSegNeXtCore.data.io import Geometry
    from RCSegNeXtCore.errors import RCSegNeXtError
    g = volume_to_geometry(volume)
    moved = Geometry(g.shape, g.spacing, (g.origin[0] + 1.0, *g.origin[1:]), g.direction)
    with pytest.raises(RCSegNeXtError, match="review map grid differs"):
        logic.addReviewMap(volume, seg, values, moved, 0.1)
    with pytest.raises(RCSegNeXtError, match="review map shape"):
        logic.addReviewMap(volume, seg, values[:, :, :-1], None, 0.1)


def test_review_map_from_a_file_without_score_header(scene, logic, tmp_path):
    """A NIfTI review map (no header keys) loads without a score: no attribute is invented."""
    from RCSegNeXtCore.inference.export import write_uncertainty
    from RCSegNeXtLib.convert import volume_to_geometry
    from RCSegNeXtLib.logic import REVIEW_SCORE_ATTRIBUTE
    shape = (3, 6, 6)
    volume = su.addVolumeFromArray(np.zeros(shape, np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), name="nifti grid")
    seg = logic.segmentationFromLabels(volume, np.zeros(shape, np.uint8), {"background": 0, "rectum": 1})
    values = np.linspace(0, 1, np.prod(shape), dtype=np.float32).reshape(shape)
    path = write_uncertainty(values, volume_to_geometry(volume), tmp_path / "case_uncertainty.nii.gz")
    node = logic.loadReviewMap(volume, seg, path)
    assert np.allclose(su.arrayFromVolume(node), values) and seg.GetAttribute(REVIEW_SCORE_ATTRIBUTE) is None
    assert logic.lastReviewScore is None


# -- with a model ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_in_process_segment_gives_the_cores_review_map(scene, logic, tiny_model, phantom_file, core_review):
    from RCSegNeXtLib.logic import REVIEW_SCORE_ATTRIBUTE
    review, score, region = core_review
    volume = load_volume(phantom_file[0], "phantom T2 review")
    seg = logic.segment(volume, tiny_model, device="cpu", uncertainty=True)
    check_review_map(logic.lastReviewMap, volume, review.array, score, region, seg)
    assert logic.lastReviewScore == pytest.approx(score, abs=1e-12)   # the in-process float, not the header's text
    assert review.geometry.differences(read_image(phantom_file[0]).geometry) == []

    before = len(review_maps(scene))
    plain = logic.segment(volume, tiny_model, device="cpu")  # box off: no map, no score
    assert len(review_maps(scene)) == before and plain.GetAttribute(REVIEW_SCORE_ATTRIBUTE) is None


@pytest.mark.slow
def test_subprocess_run_with_the_box_on_and_off(scene, logic, tiny_model, phantom_file, core_review, tmp_path,
                                                monkeypatch):
    """The panel's path: RunController(uncertainty=True) -> `predict --uncertainty` child -> the map node equal to
    the core's file, on the input's grid; the score on the node, in the report and the status. Off: none of it."""
    import tempfile
    from RCSegNeXtLib.controller import DONE, RunController
    from RCSegNeXtLib.logic import REVIEW_SCORE_ATTRIBUTE
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    review, score, region = core_review
    volume = load_volume(phantom_file[0], "phantom T2 review (subprocess)")
    lines = []
    controller = RunController(logic, python=sys.executable, log=lines.append)
    controller.start(volume, tiny_model, device="cpu", uncertainty=True)
    report = controller.wait(timeout=120)
    assert report.state == DONE, report.message
    assert any("--uncertainty" in line for line in lines)
    check_review_map(report.reviewMap, volume, review.array, score, region, report.segmentation)
    assert report.reviewScore == pytest.approx(score, abs=1e-6)
    assert f"Review score {score:.2f} (higher = look closer)." in report.status
    assert list(tmp_path.iterdir()) == []   # the child's files went with the temp folder

    before = len(review_maps(scene))
    controller.start(volume, tiny_model, device="cpu")
    report = controller.wait(timeout=120)
    assert report.state == DONE, report.message
    assert report.reviewMap is None and report.reviewScore is None and "Review score" not in report.status
    assert len(review_maps(scene)) == before
    assert report.segmentation.GetAttribute(REVIEW_SCORE_ATTRIBUTE) is None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script stands in for PythonSlicer")
def test_a_child_that_writes_no_review_map_is_reported(scene, logic, tiny_model, tmp_path):
    """A child that ignores --uncertainty (e.g. an older core): the segments are loaded and kept in the report, the
    run is reported failed with the missing file named, and no map node is made."""
    from RCSegNeXtLib.controller import FAILED, RunController
    older = tmp_path / "older-python"
    older.write_text("#!/bin/sh\nfor a; do shift; [ \"$a\" = --uncertainty ] || set -- \"$@\" \"$a\"; done\n"
                     f"exec {sys.executable} \"$@\"\n", encoding="utf-8")
    older.chmod(0o755)
    volume = su.addVolumeFromArray(np.random.default_rng(1).normal(300, 40, (8, 24, 24)).astype(np.float32),
                                   np.diag([1.0, 1.0, 4.0, 1.0]), name="older child")
    before = len(review_maps(scene))
    controller = RunController(logic, python=str(older), log=lambda line: None)
    controller.start(volume, tiny_model, device="cpu", uncertainty=True)
    report = controller.wait(timeout=120)
    assert report.state == FAILED and "without writing the review map labels_uncertainty.nrrd" in report.message
    assert report.segmentation is not None and report.reviewMap is None and len(review_maps(scene)) == before
