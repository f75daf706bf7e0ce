"""3D Slicer scripted module "Segment rectal cancer" (RCSegNeXt): Module, Widget and Test.

The Widget only shows and collects; the Qt-free logic lives in RCSegNeXtLib (logic, runner, models, dependencies)
and the segmentation science in RCSegNeXtCore. torch is never imported at module load: it is installed through the
PyTorch extension on first Apply, and inference runs in a separate PythonSlicer process.
"""
import os
import shutil
import tempfile

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.util import VTKObservationMixin

from RCSegNeXtLib.logic import RCSegNeXtLogic as QtFreeLogic  # Qt-free, imports no torch

RESEARCH_NOTICE = "For research use only, not for clinical decisions."
DEVICES = ("auto", "cuda", "cpu")


class RCSegNeXt(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Segment rectal cancer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["RCSegNeXt contributors"]
        self.parent.helpText = (
            "Segments the rectum and the rectal tumour in sagittal T2-weighted MRI with the RCSegNeXt network "
            "(Wang et al., MIDL 2025). Choose the volume and a model, press Apply, then correct the 'Rectum' and "
            "'Tumor' segments in Segment Editor. " + RESEARCH_NOTICE)
        self.parent.acknowledgementText = (
            "RCSegNeXt: Efficient multi-scale ConvNeXt for rectal cancer segmentation from sagittal MRI scans "
            "(MIDL 2025). No code of the official implementation is included.")


@parameterNodeWrapper
class RCSegNeXtParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    referenceSegmentation: slicer.vtkMRMLSegmentationNode
    testSegmentation: slicer.vtkMRMLSegmentationNode
    modelPath: str = ""
    device: str = "auto"
    tta: bool = False
    datasetPath: str = ""


class RCSegNeXtLogic(ScriptedLoadableModuleLogic, QtFreeLogic):
    """The Qt-free RCSegNeXtLib logic plus this module's parameter node (module name 'RCSegNeXt')."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return RCSegNeXtParameterNode(super().getParameterNode())


def modelsRoot():
    """Installed models live beside Slicer's settings: <settings folder>/RCSegNeXt/models."""
    return os.path.join(os.path.dirname(slicer.app.slicerUserSettingsFilePath), "RCSegNeXt", "models")


class RCSegNeXtWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._runTemp = None
        self._runVolume = None
        self._runModel = None
        self._runOutput = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._pollRunner)

    # -- set-up ------------------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RCSegNeXt.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RCSegNeXtLogic()

        for device in DEVICES:
            self.ui.deviceComboBox.addItem(device)
        self.ui.deviceComboBox.currentTextChanged.connect(self._onDeviceChanged)
        self.ui.modelComboBox.currentIndexChanged.connect(self._onModelChosen)
        self.ui.modelPathLineEdit.currentPathChanged.connect(lambda p: self._setParameter("modelPath", p))
        self.ui.datasetPathLineEdit.currentPathChanged.connect(lambda p: self._setParameter("datasetPath", p))
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.compareButton.clicked.connect(self.onCompareButton)
        self.ui.saveCaseButton.clicked.connect(self.onSaveCaseButton)
        self.ui.installFolderButton.clicked.connect(lambda: self.onInstallModel(zipFile=False))
        self.ui.installZipButton.clicked.connect(lambda: self.onInstallModel(zipFile=True))
        self.ui.openModelFolderButton.clicked.connect(self.onOpenModelFolder)
        self.ui.removeModelButton.clicked.connect(self.onRemoveModel)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshModels()
        self._showDeviceInfo()
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelRun()
        self.removeObservers()
        self._disconnectParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self.cancelRun()
        self._disconnectParameterNode()
        self._parameterNode = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        node = self.logic.getParameterNode()
        if not node.inputVolume:
            node.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._disconnectParameterNode()
        self._parameterNode = node
        self._parameterNodeGuiTag = node.connectGui(self.ui)
        self.ui.deviceComboBox.setCurrentText(node.device)
        self.ui.modelPathLineEdit.currentPath = node.modelPath
        self.ui.datasetPathLineEdit.currentPath = node.datasetPath
        self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _disconnectParameterNode(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._parameterNodeGuiTag = None

    def _setParameter(self, name, value):
        if self._parameterNode:
            setattr(self._parameterNode, name, value)

    def _updateButtons(self, caller=None, event=None):
        p = self._parameterNode
        running = self._runner is not None
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or bool(p and p.inputVolume and p.modelPath)
        self.ui.applyButton.toolTip = "" if self.ui.applyButton.enabled else "Choose an input volume and a model"
        self.ui.compareButton.enabled = bool(p and p.referenceSegmentation and p.testSegmentation)
        self.ui.saveCaseButton.enabled = bool(p and p.inputVolume and p.outputSegmentation and p.datasetPath)

    def _onDeviceChanged(self, text):
        self._setParameter("device", text)
        self._showDeviceInfo()

    def _showDeviceInfo(self):
        from RCSegNeXtLib.dependencies import cuda_status
        info = cuda_status()
        device = self.ui.deviceComboBox.currentText
        if device == "cpu" or (device == "auto" and not info):
            info = (info + "\n" if info else "") + "CPU: expect minutes per volume (a GPU takes seconds)."
        if device == "cuda" and not info:
            info = "No CUDA GPU detected (or torch not installed yet); the run will fail: choose auto or cpu."
        self.ui.deviceInfoLabel.text = info

    # -- models ------------------------------------------------------------------------------------------------
    def refreshModels(self):
        from RCSegNeXtLib.models import list_models
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem("(model folder below)", "")
        self.ui.modelsListWidget.clear()
        for model in list_models(modelsRoot()):
            self.ui.modelComboBox.addItem(model.name, str(model.path))
            item = qt.QListWidgetItem(model.name)
            item.setToolTip(model.description)
            item.setData(qt.Qt.UserRole, model.name)
            self.ui.modelsListWidget.addItem(item)
        self.ui.modelComboBox.blockSignals(False)

    def _onModelChosen(self, index):
        path = self.ui.modelComboBox.itemData(index)
        if path:
            self.ui.modelPathLineEdit.currentPath = path

    def onInstallModel(self, zipFile):
        from RCSegNeXtLib.models import install_model
        if zipFile:
            source = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Model archive", "", "Zip (*.zip)")
            sha = qt.QInputDialog.getText(slicer.util.mainWindow(), "SHA-256",
                                          "Published SHA-256 of the archive (leave empty to skip the check):")
        else:
            source = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model folder")
            sha = ""
        if not source:
            return
        with slicer.util.tryWithErrorDisplay("Model installation failed.", waitCursor=True):
            model = install_model(source, modelsRoot(), sha256=sha or None)
            self.refreshModels()
            self.ui.modelPathLineEdit.currentPath = str(model.path)

    def _selectedModelName(self):
        item = self.ui.modelsListWidget.currentItem()
        return item.data(qt.Qt.UserRole) if item else None

    def onOpenModelFolder(self):
        from RCSegNeXtLib.models import model_path
        name = self._selectedModelName()
        path = model_path(modelsRoot(), name) if name else modelsRoot()
        os.makedirs(path, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(path)))

    def onRemoveModel(self):
        from RCSegNeXtLib.models import remove_model
        name = self._selectedModelName()
        if not name or not slicer.util.confirmYesNoDisplay(f"Delete the installed model '{name}'?"):
            return
        with slicer.util.tryWithErrorDisplay("Could not remove the model.", waitCursor=True):
            remove_model(modelsRoot(), name)
            self.refreshModels()

    # -- segmentation (subprocess) -----------------------------------------------------------------------------
    def onApplyButton(self):
        if self._runner is not None:
            self.cancelRun()
            self.ui.statusLabel.text = "Cancelled."
            return
        from RCSegNeXtLib import dependencies, runner
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Cannot start the segmentation.", waitCursor=True):
            dependencies.ensure_requirements(ask=slicer.util.confirmOkCancelDisplay)
            self._runTemp = tempfile.mkdtemp(prefix="RCSegNeXt-")
            inputPath = self.logic.writeInput(p.inputVolume, os.path.join(self._runTemp, "input.nrrd"))
            self._runOutput = os.path.join(self._runTemp, "labels.nrrd")
            self._runVolume, self._runModel = p.inputVolume, p.modelPath
            command = runner.build_predict_command(runner.find_python_slicer(), inputPath, self._runOutput,
                                                   p.modelPath, p.device, p.tta)
            self._runner = runner.SubprocessRunner(command).start()
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting..."
            self._timer.start()
        self._updateButtons()

    def _pollRunner(self):
        from RCSegNeXtLib.runner import FinishedEvent, ProgressEvent
        if self._runner is None:
            self._timer.stop()
            return
        for event in self._runner.poll():
            if isinstance(event, ProgressEvent):
                self.ui.progressBar.value = int(100 * event.fraction)
                self.ui.statusLabel.text = f"{event.stage}: {event.done}/{event.total}"
            elif isinstance(event, FinishedEvent):
                self._finishRun(event)

    def _finishRun(self, event):
        self._timer.stop()
        self._runner = None
        self.ui.progressBar.visible = False
        try:
            if event.cancelled:
                self.ui.statusLabel.text = "Cancelled."
            elif event.returncode != 0:
                self.ui.statusLabel.text = "Failed."
                slicer.util.errorDisplay("Segmentation failed.", detailedText=event.message)
            else:
                with slicer.util.tryWithErrorDisplay("Cannot load the result.", waitCursor=True):
                    seg = self.logic.loadResult(self._runVolume, self._runOutput, self._runModel,
                                                self._parameterNode.outputSegmentation)
                    self._parameterNode.outputSegmentation = seg
                    self._parameterNode.testSegmentation = seg
                    slicer.util.setSliceViewerLayers(background=self._runVolume, fit=True)
                    self.ui.statusLabel.text = "Done: correct the segments in Segment Editor. " + RESEARCH_NOTICE
        finally:
            shutil.rmtree(self._runTemp, ignore_errors=True)
            self._runTemp = None
            self._updateButtons()

    def cancelRun(self):
        if self._runner is not None:
            self._runner.cancel()
            self._finishRun(_cancelledEvent())

    # -- Dice panel and training case --------------------------------------------------------------------------
    def onCompareButton(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Comparison failed.", waitCursor=True):
            table = self.logic.compareSegmentations(p.referenceSegmentation, p.testSegmentation, p.inputVolume)
            cells = table.as_text_rows()
            widget = self.ui.diceTable
            widget.clear()
            widget.setColumnCount(len(cells[0]))
            widget.setRowCount(len(cells) - 1)
            widget.setHorizontalHeaderLabels(cells[0])
            for r, row in enumerate(cells[1:]):
                for c, text in enumerate(row):
                    widget.setItem(r, c, qt.QTableWidgetItem(text))
            widget.resizeColumnsToContents()
            self.ui.diceNoteLabel.text = table.geometry_note or f"Both rasterised on '{table.reference_volume}'."

    def onSaveCaseButton(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not save the training case.", waitCursor=True):
            caseId = self.logic.saveAsTrainingCase(p.inputVolume, p.outputSegmentation, p.datasetPath,
                                                   self.ui.caseIdLineEdit.text.strip() or None)
            slicer.util.infoDisplay(f"Saved case '{caseId}' in {p.datasetPath}.")


def _cancelledEvent():
    from RCSegNeXtLib.runner import FinishedEvent
    return FinishedEvent(-1, True, "cancelled")


class RCSegNeXtTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Developer mode > Reload and Test): Logic in-process and the Widget's runner."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentAndCompare()

    def _tinyModel(self, folder):
        from RCSegNeXtCore.data.planning import make_plans_from_values
        from RCSegNeXtCore.inference.model_folder import init_model_folder
        plans = make_plans_from_values([4.0, 1.0, 1.0], [16, 32, 32], base_channels=4)
        return init_model_folder(plans, folder)

    def test_SegmentAndCompare(self):
        import numpy as np
        from RCSegNeXtLib.dependencies import ensure_torch
        from RCSegNeXtLib.runner import SubprocessRunner, build_predict_command, find_python_slicer
        self.delayDisplay("Segment a synthetic volume with a tiny random-weight model")
        ensure_torch()
        temp = tempfile.mkdtemp(prefix="RCSegNeXtTest-")
        try:
            model = self._tinyModel(os.path.join(temp, "model"))
            array = np.random.default_rng(0).normal(300, 40, (12, 48, 48)).astype(np.float32)
            volume = slicer.util.addVolumeFromArray(array, np.diag([1.0, 1.0, 4.0, 1.0]), name="T2")
            logic = RCSegNeXtLogic()
            seg = logic.segment(volume, model, device="cpu")
            self.assertEqual(logic.listSegmentNames(seg), ["Rectum", "Tumor"])
            dice = logic.computeDice(seg, seg)
            self.assertTrue(all(v == 1.0 or v != v for v in dice.values()))
            self.delayDisplay("Same through the PythonSlicer process")
            inputPath = logic.writeInput(volume, os.path.join(temp, "input.nrrd"))
            output = os.path.join(temp, "labels.nrrd")
            run = SubprocessRunner(build_predict_command(find_python_slicer(), inputPath, output, model, "cpu"))
            events = run.start().wait(timeout=300)
            self.assertEqual(events[-1].returncode, 0, events[-1].message)
            seg2 = logic.loadResult(volume, output, model)
            same = logic.computeDice(seg, seg2)  # identical segments: 1.0, or n/a (nan) where both are empty
            self.assertTrue(all(v == 1.0 or (v != v and dice[k] != dice[k]) for k, v in same.items()), same)
            self.delayDisplay("Test passed")
        finally:
            shutil.rmtree(temp, ignore_errors=True)
