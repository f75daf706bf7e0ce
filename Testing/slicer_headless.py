"""Headless MRML for the Slicer-module tests: the `slicer-core` wheel set up the way Slicer's application does.

A scene, an application logic, the Colors/Volumes/Segmentations/SubjectHierarchy module logics (so the segmentation
converter rules exist) and `slicer.mrmlScene` / `slicer.modules.<name>.logic()` / `slicer.app` pointing at them, so
`slicer.util` helpers work without Qt (recipe: ../shared/reference/slicer_headless_recipe.py). Set up once per
process; `RCSegNeXt/` is put on sys.path so `RCSegNeXtLib` imports as it does inside Slicer.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "RCSegNeXt"
_STATE = None  # (scene, modules, app) of this process


def module_on_path() -> None:
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


def headless_scene():
    """The process-wide MRML scene (created on first use). Every call points `slicer.mrmlScene`, `slicer.modules`
    and `slicer.app` at it again, so another test that swapped those globals cannot break the next one."""
    global _STATE
    module_on_path()
    import slicer
    if _STATE is None:
        scene = slicer.vtkMRMLScene()
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)
        app_logic.GetColorLogic().SetMRMLScene(scene)
        app_logic.GetColorLogic().AddDefaultColorNodes()
        app_logic.SetModuleLogic("Colors", app_logic.GetColorLogic())

        def register(logic, name):
            logic.SetMRMLScene(scene)  # Segmentations: registers the converter rules
            logic.SetMRMLApplicationLogic(app_logic)
            app_logic.SetModuleLogic(name, logic)
            return types.SimpleNamespace(logic=lambda: logic)

        modules = types.SimpleNamespace(
            volumes=register(slicer.vtkSlicerVolumesLogic(), "Volumes"),
            segmentations=register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations"),
            subjecthierarchy=register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy"))
        app = types.SimpleNamespace(applicationLogic=lambda: app_logic, testingEnabled=lambda: True,
                                    processEvents=lambda: None)
        _STATE = (scene, modules, app)
    slicer.mrmlScene, slicer.modules, slicer.app = _STATE
    return _STATE[0]


def load_volume(path, name: str):
    """Load a volume file with Slicer's own reader (the Volumes logic), independent of RCSegNeXt's conversion."""
    import slicer
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name)
    if node is None:
        raise RuntimeError(f"Slicer could not load {path}")
    return node


def put_in_study(volume, patient: str = "Patient", study: str = "Study"):
    """Create patient/study subject-hierarchy items and put the volume under the study; returns the study item."""
    import slicer
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume.GetScene())
    patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    study_item = sh.CreateStudyItem(patient_item, study)
    item = sh.GetItemByDataNode(volume)
    if item:
        sh.SetItemParent(item, study_item)
    else:
        sh.CreateItem(study_item, volume)
    return study_item
