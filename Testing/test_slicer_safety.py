"""The radiologist's loop is safe: no lost corrections, no segmentation paired with another patient's volume, warnings
reach the panel, no torch in Slicer's process, a guided first run, and a run controller that never leaks or lies.
Real MRML (slicer-core, headless) and real subprocess runs of `python -m RCSegNeXtCore predict`."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from conftest import require_module
from slicer_headless import headless_scene, module_on_path, put_in_study

slicer = require_module("slicer", "slicer-core")
import slicer.util as su  # noqa: E402

from RCSegNeXtCore.data.io import read_image  # noqa: E402
from test_slicer_logic import mask, tiny_model  # noqa: E402,F401 (tiny_model: a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")

LABELS = {"background": 0, "rectum": 1, "tumour": 2}


@pytest.fixture
def scene():
    return headless_scene()


@pytest.fixture
def logic(scene):
    from RCSegNeXtLib.logic import RCSegNeXtLogic
    return RCSegNeXtLogic()


@pytest.fixture
def private_temp(tmp_path, monkeypatch):
    """tempfile's folder for this test only, so leaked run folders can be counted."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="session")
def sagittal_model(tmp_path_factory):
    """A tiny model that records its training plane (sagittal), so an axial volume draws a warning."""
    from RCSegNeXtCore.planning import make_plans_from_values
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    plans = make_plans_from_values([4.0, 1.0, 1.0], [16, 32, 32], base_channels=4, slice_orientation="sagittal")
    return init_model_folder(plans, tmp_path_factory.mktemp("model") / "sagittal", seed=2)


def volume(name, shape=(8, 24, 24), spacing=(1.0, 1.0, 4.0), origin=(0.0, 0.0, 0.0), seed=0):
    """A scalar volume node (IJK->RAS diagonal: slices stacked along S, i.e. an axial series)."""
    ijk = np.diag([*spacing, 1.0])
    ijk[:3, 3] = origin
    array = np.random.default_rng(seed).normal(300, 40, shape).astype(np.float32)
    return su.addVolumeFromArray(array, ijk, name=name)


def corrected_segmentation(scene, logic, vol, name):
    """A hand-made Rectum/Tumor segmentation of `vol` (as a radiologist's corrected result)."""
    labels = np.zeros(su.arrayFromVolume(vol).shape, np.uint8)
    labels[2:5, 5:15, 5:15] = 1
    labels[3, 8:10, 8:10] = 2
    node = logic.segmentationFromLabels(vol, labels, LABELS)
    node.SetName(name)
    return node, labels


def snapshot(node, vol):
    """Everything a silent overwrite would change: name, reference volume, study parent, both masks."""
    from RCSegNeXtLib.ownership import reference_volume
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    return (node.GetName(), reference_volume(node).GetID(), sh.GetItemParent(sh.GetItemByDataNode(node)),
            mask(node, "Rectum", vol).tobytes(), mask(node, "Tumor", vol).tobytes())


# -- 1. corrections are never overwritten by the next patient's run -----------------------------------------------
def test_next_patient_never_writes_into_the_previous_patients_segmentation(scene, logic, tiny_model, private_temp):
    from RCSegNeXtLib.controller import RunController
    from RCSegNeXtLib.ownership import SegmentationMismatchError
    patient_a, patient_b = volume("patient A", seed=1), volume("patient B", seed=2, origin=(5.0, 0.0, 0.0))
    put_in_study(patient_a, "A", "study A")
    put_in_study(patient_b, "B", "study B")
    corrected, _ = corrected_segmentation(scene, logic, patient_a, "A corrected")
    before = snapshot(corrected, patient_a)

    controller = RunController(logic, python=sys.executable)
    assert controller.outputForInput(patient_b, corrected) is None       # a new input resets the output
    assert controller.outputForInput(patient_a, corrected) is corrected  # the same patient keeps it
    with pytest.raises(SegmentationMismatchError, match="made on volume 'patient A', not on 'patient B'"):
        controller.start(patient_b, tiny_model, device="cpu", outputNode=corrected)
    with pytest.raises(SegmentationMismatchError, match="Create new segmentation"):
        logic.segment(patient_b, tiny_model, device="cpu", segmentationNode=corrected)
    with pytest.raises(SegmentationMismatchError):
        logic.segmentationFromLabels(patient_b, np.zeros((8, 24, 24), np.uint8), LABELS, corrected)
    assert snapshot(corrected, patient_a) == before and list(private_temp.iterdir()) == []

    # "create new": a new node for patient B, in B's study; A's corrections untouched
    new = logic.segment(patient_b, tiny_model, device="cpu")
    assert new is not corrected and new.GetName() == "patient B segmentation"
    assert snapshot(corrected, patient_a) == before


def test_rerun_into_own_segmentation_keeps_its_name_and_place(scene, logic, tiny_model):
    """Overwriting a segmentation the user picked (of this volume) replaces the segments but never renames or moves
    it; a blank node from the selector's 'Create new...' is accepted too."""
    vol = volume("patient C", seed=3)
    study = put_in_study(vol, "C", "study C")
    node, _ = corrected_segmentation(scene, logic, vol, "C reviewed by Dr X")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = sh.CreateFolderItem(study, "reviewed")
    sh.SetItemParent(sh.GetItemByDataNode(node), folder)
    again = logic.segment(vol, tiny_model, device="cpu", segmentationNode=node)
    assert again is node and node.GetName() == "C reviewed by Dr X"
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == folder
    blank = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my new segmentation")
    assert logic.segment(vol, tiny_model, device="cpu", segmentationNode=blank) is blank
    assert blank.GetName() == "my new segmentation" and logic.listSegmentNames(blank) == ["Rectum", "Tumor"]


# -- 2. a training pair or a Dice score never mixes two patients ---------------------------------------------------
def test_save_as_training_case_refuses_another_volumes_segmentation(scene, logic, tmp_path):
    from RCSegNeXtLib.logic import RCSegNeXtLogic
    from RCSegNeXtLib.ownership import SegmentationMismatchError
    patient_a, patient_b = volume("patient A2", seed=4), volume("patient B2", seed=5)  # same grid, other patient
    seg_a, labels_a = corrected_segmentation(scene, logic, patient_a, "A2 corrected")
    dataset = tmp_path / "Dataset901_Corrections"
    with pytest.raises(SegmentationMismatchError, match="made on volume 'patient A2', not on 'patient B2'"):
        RCSegNeXtLogic().saveAsTrainingCase(patient_b, seg_a, dataset)
    assert not dataset.exists()  # nothing written, not even the folder

    assert logic.saveAsTrainingCase(patient_a, seg_a, dataset) == "patient_A2"
    # explicitly asked: resampled onto B's grid (e.g. a registered copy of the same patient)
    assert logic.saveAsTrainingCase(patient_b, seg_a, dataset, resample=True) == "patient_B2"
    assert np.array_equal(read_image(dataset / "labelsTr" / "patient_B2.nii.gz").array, labels_a)


def test_segmentation_from_disk_belongs_by_its_grid(scene, logic, tmp_path):
    """A .seg.nrrd loaded from disk names no volume: it belongs to a volume exactly when its grid equals the
    volume's (within 1e-4)."""
    from RCSegNeXtLib.ownership import SegmentationMismatchError, belongs_to, ownership_problem
    vol = volume("patient D", shape=(6, 20, 22), spacing=(0.5625, 0.5625, 3.6), origin=(-80.123456, 12.5, 33.0))
    moved = volume("patient D shifted", shape=(6, 20, 22), spacing=(0.5625, 0.5625, 3.6),
                   origin=(-80.123456, 12.5, 36.6))
    seg, _ = corrected_segmentation(scene, logic, vol, "D corrected")
    path = tmp_path / "D.seg.nrrd"
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(seg)
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "D from disk")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    from RCSegNeXtLib.ownership import reference_volume
    assert reference_volume(loaded) is None
    assert belongs_to(loaded, vol) and not belongs_to(loaded, moved)
    assert "origin" in ownership_problem(loaded, moved)
    with pytest.raises(SegmentationMismatchError, match="another grid"):
        logic.saveAsTrainingCase(moved, loaded, tmp_path / "ds")
    assert logic.saveAsTrainingCase(vol, loaded, tmp_path / "ds") == "patient_D"


def test_dice_refuses_a_segmentation_of_another_volume(scene, logic):
    from RCSegNeXtLib.ownership import SegmentationMismatchError
    patient_a, patient_b = volume("patient E", seed=6), volume("patient F", seed=7)
    seg_a, _ = corrected_segmentation(scene, logic, patient_a, "E reference")
    seg_b, _ = corrected_segmentation(scene, logic, patient_b, "F prediction")
    with pytest.raises(SegmentationMismatchError, match="cannot compute Dice"):
        logic.computeDice(seg_a, seg_b)
    with pytest.raises(SegmentationMismatchError):
        logic.compareSegmentations(seg_a, seg_a, patient_b)
    assert logic.computeDice(seg_a, seg_b, resample=True) == {"Rectum": 1.0, "Tumor": 1.0}  # same masks, asked
    assert logic.computeDice(seg_a, seg_a) == {"Rectum": 1.0, "Tumor": 1.0}


# -- 3. warnings reach the panel, the node and the console ---------------------------------------------------------
def test_in_process_warnings_are_returned_and_recorded(scene, logic, sagittal_model, caplog):
    from RCSegNeXtLib.logic import WARNINGS_ATTRIBUTE
    axial = volume("axial series", shape=(16, 32, 32), spacing=(1.0, 1.0, 4.0))
    with caplog.at_level("WARNING"):
        node = logic.segment(axial, sagittal_model, device="cpu")
    assert any("axial series given to a model trained on sagittal" in w for w in logic.lastWarnings)
    assert node.GetAttribute(WARNINGS_ATTRIBUTE) == "\n".join(logic.lastWarnings)
    assert any("trained on sagittal" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_subprocess_run_reports_warnings_progress_and_log_lines(scene, logic, sagittal_model, private_temp):
    from RCSegNeXtLib.controller import DONE, RunController
    from RCSegNeXtLib.logic import WARNINGS_ATTRIBUTE
    axial = volume("axial series 2", shape=(16, 32, 32), spacing=(1.0, 1.0, 4.0))
    lines, statuses = [], []
    controller = RunController(logic, python=sys.executable, log=lines.append)
    take = controller._take

    def take_and_record(event):  # the status after every event, however the polls fall
        take(event)
        statuses.append(controller.report.status)
    controller._take = take_and_record
    controller.start(axial, sagittal_model, device="cpu")
    report = controller.wait(timeout=120)
    assert report.state == DONE, report.message
    assert any("trained on sagittal" in w for w in report.warnings)
    assert report.status.startswith("Done with 1 warning(s)")
    assert report.segmentation.GetAttribute(WARNINGS_ATTRIBUTE) == report.warnings[0]
    assert any("-m RCSegNeXtCore predict" in line for line in lines)    # the command, for the console
    assert any(line.startswith("warning:") for line in lines)            # the child's stderr reaches the console
    assert any(s.startswith("Segmenting on openvino") and ": tile" in s for s in statuses), set(statuses)
    assert list(private_temp.iterdir()) == []                            # temp folder removed


# -- 4. no torch in Slicer's process -----------------------------------------------------------------------------
@pytest.mark.slow
def test_panel_code_paths_do_not_import_torch(tiny_model):
    """What the panel does before a run (readiness, models, device line, guidance) leaves torch unimported; the GPU
    is probed in a child process."""
    from slicer_headless import MODULE_DIR
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from RCSegNeXtLib import binding, compare, controller, convert, dependencies, logic, models, ownership, runner
        assert controller.RunController.readiness(object(), {str(tiny_model)!r}) == ""
        models.list_models({str(tiny_model.parent)!r}); models.model_guidance()
        dependencies.describe_device(None); dependencies.ensure_torch()
        probe = dependencies.DeviceProbe(sys.executable).start()
        import time
        while not probe.poll():
            time.sleep(0.05)
        assert probe.info["torch"] and probe.info["cuda"] in (True, False), probe.info
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_device_line_texts():
    module_on_path()
    from RCSegNeXtLib.dependencies import describe_device
    assert "no PyTorch needed" in describe_device(None)              # the CPU engine: no torch download
    assert "first Apply" in describe_device(None, "cuda")             # a GPU run installs PyTorch then
    gpu = {"torch": "2.13", "cuda": True, "name": "NVIDIA H200", "free_gb": 130.2, "total_gb": 143.8}
    assert describe_device(gpu) == "CUDA GPU: NVIDIA H200, 130.2 of 143.8 GB free: seconds per volume."
    assert "not used" in describe_device(gpu, "cpu")
    assert "would fail" in describe_device({"torch": "2.13", "cuda": False}, "cuda")
    assert "CPU" in describe_device({"torch": "2.13", "cuda": False}, "auto")


# -- 5. the first run leads somewhere -------------------------------------------------------------------------------
def test_no_model_explains_where_models_come_from(scene, tmp_path):
    from RCSegNeXtCore.cli import build_parser
    from RCSegNeXtLib.controller import RunController
    from RCSegNeXtLib.models import NO_MODEL_HINT, model_guidance
    vol = volume("no model yet")
    assert RunController.readiness(vol, "") == NO_MODEL_HINT and "Models" in NO_MODEL_HINT
    assert "not a model folder" in RunController.readiness(vol, str(tmp_path))
    assert "Choose the sagittal T2" in RunController.readiness(None, "")
    text = model_guidance("/opt/Slicer/bin/PythonSlicer")
    for expected in ("Install zip...", "Install folder...", "Save as training case", "not published"):
        assert expected in text, expected
    commands = [line.strip() for line in text.splitlines() if "-m RCSegNeXtCore" in line]
    assert len(commands) == 3
    for command in commands:  # each shown command parses with the real CLI (the extension ships the core)
        words = command.split(", then")[0].split()
        assert words[:3] == ["/opt/Slicer/bin/PythonSlicer", "-m", "RCSegNeXtCore"]
        build_parser().parse_args(words[3:])


# -- 6. the run lifecycle never lies or leaks -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_that_finished_before_cancel_is_kept(scene, logic, tiny_model, private_temp):
    from RCSegNeXtLib.controller import DONE, RunController
    vol = volume("finished early", shape=(16, 32, 32))
    controller = RunController(logic, python=sys.executable)
    controller.start(vol, tiny_model, device="cpu")
    controller._runner.process.wait(timeout=120)  # the child has ended; the panel has not polled yet
    report = controller.cancel()
    assert report.state == DONE and report.segmentation is not None
    assert logic.listSegmentNames(report.segmentation) == ["Rectum", "Tumor"]
    assert list(private_temp.iterdir()) == []


def test_cancel_and_timeout_stop_the_child_and_remove_the_temp_folder(scene, logic, tiny_model, private_temp):
    from RCSegNeXtLib.controller import CANCELLED, FAILED, RunController
    vol = volume("cancelled", shape=(16, 32, 32))
    controller = RunController(logic, python=sys.executable)
    controller.start(vol, tiny_model, device="cpu")
    process = controller._runner.process
    report = controller.cancel()
    assert report.state == CANCELLED and report.segmentation is None and process.poll() is not None
    assert list(private_temp.iterdir()) == []

    idle_calls = []
    controller.start(vol, tiny_model, device="cpu")
    report = controller.wait(timeout=0.3, idle=lambda: idle_calls.append(1))  # the self-test's wait, GUI kept live
    assert report.state == FAILED and "did not finish within" in report.message and idle_calls
    assert not controller.running and list(private_temp.iterdir()) == []


def test_failed_input_write_leaves_no_temp_folder(scene, logic, tiny_model, private_temp):
    from RCSegNeXtCore.errors import ImageReadError
    from RCSegNeXtLib.controller import RunController
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")
    with pytest.raises(ImageReadError):
        RunController(logic, python=sys.executable).start(empty, tiny_model)
    assert list(private_temp.iterdir()) == []


def test_status_line_counts_tiles_and_estimates_the_time_left():
    module_on_path()
    from RCSegNeXtLib.controller import ProgressText, format_duration
    from RCSegNeXtLib.runner import parse_progress_line
    now = [100.0]
    text = ProgressText(clock=lambda: now[0])

    def line(stage, tiles_done=0, tiles_total=0):
        return parse_progress_line(f'{{"stage": "{stage}", "case": "input", "done": 0, "total": 1, '
                                   f'"tiles_done": {tiles_done}, "tiles_total": {tiles_total}}}')
    assert text(line("preprocess")) == "Reading and preparing the volume..."
    assert text(line("predict", 0, 8)) == "Segmenting: tile 0 of 8"
    now[0] += 6.0
    assert text(line("predict", 2, 8)) == "Segmenting: tile 2 of 8, about 18 s left"  # 3 s per tile, 6 tiles left
    now[0] += 60.0
    assert text(line("predict", 4, 40)) == "Segmenting: tile 4 of 40, about 10 min left"  # 16.5 s x 36
    assert text(line("export")) == "Writing the result..."
    assert format_duration(0.2) == "1 s" and format_duration(150) == "2 min"


def test_models_live_outside_the_roaming_profile_on_windows(tmp_path):
    module_on_path()
    from RCSegNeXtLib.models import default_models_root, install_model, list_models, move_legacy_models
    settings = tmp_path / "AppData" / "Roaming" / "slicer.org"
    local = tmp_path / "AppData" / "Local"
    assert default_models_root(settings, "win32", {"LOCALAPPDATA": str(local)}) == local / "RCSegNeXt" / "models"
    assert default_models_root(settings, "linux", {"LOCALAPPDATA": str(local)}) == settings / "RCSegNeXt" / "models"
    assert default_models_root(settings, "win32", {}) == settings / "RCSegNeXt" / "models"

    from RCSegNeXtCore.planning import make_plans_from_values
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    source = init_model_folder(make_plans_from_values([5.0, 5.0, 5.0], [16, 32, 32], base_channels=4),
                               tmp_path / "trained")
    legacy = settings / "RCSegNeXt" / "models"
    install_model(source, legacy, name="site-model")
    new_root = local / "RCSegNeXt" / "models"
    assert move_legacy_models(legacy, new_root) == ["site-model"]
    assert [m.name for m in list_models(new_root)] == ["site-model"] and list_models(legacy) == []
    assert move_legacy_models(legacy, new_root) == []


class OldSlicerWrapper:
    """The parameter node wrapper's GUI contract as Slicer 5.6/5.8 implement it: `connectGui` returns None, every
    call adds a connection, `disconnectGui(tag)` removes the connection stored under `tag`."""

    def __init__(self, node, returns_tag=False):
        self.parameterNode = node
        self._parameterGUIs = {}
        self._next = 0
        self.returns_tag = returns_tag

    def connectGui(self, gui):
        self._parameterGUIs[self._next] = gui
        self._next += 1
        return self._next - 1 if self.returns_tag else None

    def disconnectGui(self, tag):
        self._parameterGUIs.pop(tag, None)


@pytest.mark.parametrize("returns_tag", [False, True], ids=["Slicer 5.6/5.8", "Slicer 5.10"])
def test_reentering_the_module_does_not_pile_up_connections(scene, returns_tag):
    from RCSegNeXtLib.binding import ParameterNodeBinding
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "RCSegNeXt")
    calls = []
    binding = ParameterNodeBinding(on_modified=lambda caller, event: calls.append(event))
    for _ in range(5):  # enter() five times: the panel asks for (a new wrapper of) the same parameter node
        binding.bind(OldSlicerWrapper(node, returns_tag), gui="ui")
    wrapper = binding.wrapper
    assert len(wrapper._parameterGUIs) == 1
    node.Modified()
    assert len(calls) == 1  # one observation, not five
    other = OldSlicerWrapper(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "after scene close"), returns_tag)
    assert binding.bind(other, gui="ui") and wrapper._parameterGUIs == {}
    node.Modified()
    assert len(calls) == 1
    binding.unbind()
    assert other._parameterGUIs == {}
