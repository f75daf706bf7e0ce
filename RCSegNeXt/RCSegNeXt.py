"""3D Slicer scripted module "Segment rectal cancer" (RCSegNeXt): Module, Widget and Test.

The Widget only shows and collects; the Qt-free logic lives in RCSegNeXtLib (logic, controller, runner, models,
dependencies, ownership) and the segmentation science in RCSegNeXtCore. torch is never imported into Slicer's
process by the panel: it is installed through the PyTorch extension on first Apply, the GPU is probed and inference
runs in separate PythonSlicer processes.
"""
import logging
import os
import shutil
import tempfile

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import parameterNodeWrapper

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
    reviewMap: bool = False  # also the uncertainty overlay and the case's review score
    datasetPath: str = ""
    trainingDatasetPath: str = ""  # 'Improve the model'; empty: the 'Save as training case' folder


class RCSegNeXtLogic(ScriptedLoadableModuleLogic, QtFreeLogic):
    """The Qt-free RCSegNeXtLib logic plus this module's parameter node (module name 'RCSegNeXt')."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        QtFreeLogic.__init__(self)

    def getParameterNode(self):
        return RCSegNeXtParameterNode(super().getParameterNode())


def settingsFolder():
    return os.path.dirname(slicer.app.slicerUserSettingsFilePath)


def modelsRoot():
    """Installed models: beside Slicer's settings; on Windows in %LOCALAPPDATA% (settings roam with the profile)."""
    from RCSegNeXtLib.models import default_models_root
    return str(default_models_root(settingsFolder()))


def runsRoot():
    """Training runs of 'Improve the model': the models root's sibling (.../RCSegNeXt/runs)."""
    from RCSegNeXtLib.training_run import default_runs_root
    return str(default_runs_root(modelsRoot()))


class RCSegNeXtWidget(ScriptedLoadableModuleWidget):
    """Binds the panel's widgets to the Qt-free RunController, DeviceProbe and Logic, and shows what they report."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.controller = None
        self.training = None  # the TrainingRunController of the current or last 'Improve the model' run
        self._parameterNode = None
        self._binding = None
        self._lastInput = None
        self._probe = None
        self._deviceInfo = None
        self._sceneObservers = []
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._onTimer)

    # -- set-up ------------------------------------------------------------------------------------------------
    def setup(self):
        from RCSegNeXtLib.binding import ParameterNodeBinding
        from RCSegNeXtLib.controller import RunController
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RCSegNeXt.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RCSegNeXtLogic()
        self.controller = RunController(self.logic)
        self._binding = ParameterNodeBinding(on_modified=self._onParameterNodeModified)

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
        self.ui.warningsLabel.visible = False
        self.ui.improveDatasetPathLineEdit.currentPathChanged.connect(self._onTrainingDatasetChanged)
        self.ui.checkDatasetButton.clicked.connect(lambda: self.showDatasetSummary(full=True))
        self.ui.finetuneRadioButton.toggled.connect(lambda checked: self._updateButtons())
        self.ui.trainButton.clicked.connect(self.onTrainButton)
        self.ui.cancelTrainingButton.clicked.connect(self.onCancelTraining)
        self.ui.resumeTrainingButton.clicked.connect(self.onResumeTraining)
        self.ui.trainingWarningsLabel.visible = False

        scene = slicer.mrmlScene
        self._sceneObservers = [scene.AddObserver(scene.StartCloseEvent, self.onSceneStartClose),
                                scene.AddObserver(scene.EndCloseEvent, self.onSceneEndClose)]
        self._moveLegacyModels()
        self.refreshModels()
        self.detectDevice()
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelRun()
        if self.training is not None and self.training.running:
            self.training.cancel()  # its folder stays: logic's TrainingRunController.resume(runDir) continues it
        if self._probe is not None:
            self._probe.cancel()
        self._timer.stop()
        for tag in self._sceneObservers:
            slicer.mrmlScene.RemoveObserver(tag)
        self._sceneObservers = []
        self._binding.unbind()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.cancelRun()
        self._binding.unbind()
        self._parameterNode = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        """Bind to this scene's parameter node (once: re-entering the module does not connect again)."""
        node = self.logic.getParameterNode()
        if self._parameterNode is not None and self._binding.is_bound_to(node):
            self._updateButtons()
            return
        if not node.inputVolume:
            node.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._parameterNode = node
        self._lastInput = node.inputVolume
        self._binding.bind(node, self.ui)
        self.ui.deviceComboBox.setCurrentText(node.device)
        self.ui.modelPathLineEdit.currentPath = node.modelPath
        self.ui.datasetPathLineEdit.currentPath = node.datasetPath
        self.ui.improveDatasetPathLineEdit.currentPath = node.trainingDatasetPath or node.datasetPath
        self._updateButtons()

    def _setParameter(self, name, value):
        if self._parameterNode:
            setattr(self._parameterNode, name, value)

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        if p is not None and p.inputVolume is not self._lastInput:
            # another patient's volume: never keep writing into the previous patient's segmentation
            self._lastInput = p.inputVolume
            kept = self.controller.outputForInput(p.inputVolume, p.outputSegmentation)
            if kept is not p.outputSegmentation:
                p.outputSegmentation = kept
        self._updateButtons()

    def _updateButtons(self):
        p = self._parameterNode
        running = self.controller.running
        reason = "" if running else self.controller.readiness(p.inputVolume if p else None, p.modelPath if p else "")
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or not reason
        self.ui.applyButton.toolTip = reason
        if not running and reason:
            self.ui.statusLabel.text = reason
        self.ui.compareButton.enabled = bool(p and p.referenceSegmentation and p.testSegmentation)
        self.ui.saveCaseButton.enabled = bool(p and p.inputVolume and p.outputSegmentation and p.datasetPath)
        training = self.training is not None and self.training.running
        finetune = self.ui.finetuneRadioButton.checked
        self.ui.trainButton.enabled = bool(not training and self.ui.improveDatasetPathLineEdit.currentPath
                                           and (p and p.modelPath or not finetune))
        self.ui.trainButton.toolTip = "Select the model to fine-tune first" if finetune and not (p and p.modelPath) \
            else ""
        self.ui.cancelTrainingButton.enabled = training
        self.ui.resumeTrainingButton.enabled = bool(self.training is not None and self.training.canResume)

    # -- device (probed in a child process: no torch, no CUDA context in Slicer's process) ----------------------
    def detectDevice(self):
        from RCSegNeXtLib.dependencies import DeviceProbe, describe_device, installed_torch_version
        if installed_torch_version() is None:
            self._deviceInfo = None
            self.ui.deviceInfoLabel.text = describe_device(None)
            return
        self.ui.deviceInfoLabel.text = "Checking for a GPU..."
        self._probe = DeviceProbe().start()
        self._timer.start()

    def _onDeviceChanged(self, text):
        from RCSegNeXtLib.dependencies import describe_device
        self._setParameter("device", text)
        if self._probe is None and self._deviceInfo is not None:
            self.ui.deviceInfoLabel.text = describe_device(self._deviceInfo, text)

    # -- models ------------------------------------------------------------------------------------------------
    def _moveLegacyModels(self):
        from RCSegNeXtLib.models import move_legacy_models
        legacy = os.path.join(settingsFolder(), "RCSegNeXt", "models")
        try:
            moved = move_legacy_models(legacy, modelsRoot())
        except OSError as exc:
            logging.warning(f"RCSegNeXt: could not move the models in {legacy} to {modelsRoot()}: {exc}")
            return
        if moved:
            logging.info(f"RCSegNeXt: moved models {', '.join(moved)} to {modelsRoot()}")

    def refreshModels(self):
        from RCSegNeXtLib.models import list_models, model_guidance
        from RCSegNeXtLib.runner import find_python_slicer
        models = list_models(modelsRoot())
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem("(model folder below)" if models else "(no model installed: see Models)", "")
        self.ui.modelsListWidget.clear()
        for model in models:
            self.ui.modelComboBox.addItem(model.name, str(model.path))
            item = qt.QListWidgetItem(model.name)
            item.setToolTip(model.description)
            item.setData(qt.Qt.UserRole, model.name)
            self.ui.modelsListWidget.addItem(item)
        self.ui.modelComboBox.blockSignals(False)
        self.ui.modelsHelpLabel.text = "" if models else model_guidance(find_python_slicer())
        self.ui.modelsHelpLabel.visible = not models
        if not models:
            self.ui.modelsCollapsibleButton.collapsed = False

    def _onModelChosen(self, index):
        path = self.ui.modelComboBox.itemData(index)
        if path:
            self.ui.modelPathLineEdit.currentPath = path

    def onInstallModel(self, zipFile):
        from RCSegNeXtLib.models import install_model
        window = slicer.util.mainWindow()
        if zipFile:
            source = qt.QFileDialog.getOpenFileName(window, "Model archive", "", "Zip (*.zip)")
        else:
            source = qt.QFileDialog.getExistingDirectory(window, "Model folder")
        if not source:
            return
        sha = ""
        if zipFile:
            dialog = qt.QInputDialog(window)
            dialog.setWindowTitle("SHA-256 of the archive")
            dialog.setLabelText("The SHA-256 published with the model (leave empty to install without checking):")
            if not dialog.exec_():
                return  # Cancel cancels the installation
            sha = dialog.textValue().strip()
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

    # -- segmentation (subprocess, driven by the RunController) -------------------------------------------------
    def onApplyButton(self):
        if self.controller.running:
            self.cancelRun()
            return
        from RCSegNeXtLib import dependencies
        p = self._parameterNode
        output = p.outputSegmentation
        if output is not None and not self._confirmReplace(output):
            return
        with slicer.util.tryWithErrorDisplay("Cannot start the segmentation.", waitCursor=True):
            hadTorch = dependencies.installed_torch_version() is not None
            gpu = bool(self._deviceInfo and self._deviceInfo.get("cuda"))
            backend = dependencies.ensure_requirements(ask=slicer.util.confirmOkCancelDisplay, device=p.device,
                                                       gpu_found=gpu, model_dir=p.modelPath)
            if not hadTorch and dependencies.installed_torch_version() is not None:
                self.detectDevice()  # torch was just installed: now the GPU can be probed
            self.ui.deviceInfoLabel.text = dependencies.describe_backend(backend, p.device)
            self._showReport(self.controller.start(p.inputVolume, p.modelPath, p.device, p.tta, output,
                                                   backend=backend, uncertainty=p.reviewMap))
            self._timer.start()
        self._updateButtons()

    def _confirmReplace(self, output):
        names = [n for n in self.logic.listSegmentNames(output) if n.lower() in ("rectum", "tumor", "tumour")]
        if not names:
            return True
        return slicer.util.confirmOkCancelDisplay(
            f"The result replaces the segments {', '.join(names)} of '{output.GetName()}', with any corrections "
            "made in them. To keep them, choose 'Create new segmentation' as output.", windowTitle="Replace segments?")

    def _onTimer(self):
        if self._probe is not None and self._probe.poll():
            from RCSegNeXtLib.dependencies import describe_device
            self._deviceInfo = self._probe.info
            self.ui.deviceInfoLabel.text = describe_device(self._deviceInfo, self.ui.deviceComboBox.currentText)
            if self._probe.error:
                logging.warning(f"RCSegNeXt: GPU check failed: {self._probe.error}")
            self._probe = None
        if self.controller.running:
            report = self.controller.poll()
            self._showReport(report)
            if not report.running:
                self._onRunFinished(report)
        if self.training is not None and self.training.running:
            report = self.training.poll()
            self._showTrainingReport(report)
            if not report.running:
                self._onTrainingFinished(report)
        if self._probe is None and not self.controller.running and not (self.training and self.training.running):
            self._timer.stop()

    def _showReport(self, report):
        self.ui.progressBar.visible = report.running
        self.ui.progressBar.value = int(100 * report.fraction)
        self.ui.statusLabel.text = report.status
        self.ui.warningsLabel.text = "\n".join("Warning: " + w for w in report.warnings)
        self.ui.warningsLabel.visible = bool(report.warnings)

    def _onRunFinished(self, report):
        from RCSegNeXtLib.controller import DONE, FAILED
        self._showReport(report)
        if report.state == DONE:
            self._parameterNode.outputSegmentation = report.segmentation
            self._parameterNode.testSegmentation = report.segmentation
            slicer.util.setSliceViewerLayers(background=self.controller.lastVolume, fit=True)
            self.logic.showReviewMap(self.controller.lastVolume, report.reviewMap)  # None: an old map is taken off
            self.ui.statusLabel.text = report.status + " " + RESEARCH_NOTICE
        elif report.state == FAILED:
            slicer.util.errorDisplay(f"Segmentation failed. {report.status}", detailedText=report.message)
        self._updateButtons()

    def cancelRun(self):
        if self.controller is not None and self.controller.running:
            report = self.controller.cancel()
            self._onRunFinished(report)

    # -- Dice panel and training case --------------------------------------------------------------------------
    def _withResampleConsent(self, action):
        """Run `action(resample)`; when a segmentation belongs to another volume, ask before resampling it."""
        from RCSegNeXtLib.ownership import SegmentationMismatchError
        try:
            return action(False)
        except SegmentationMismatchError as exc:
            if not slicer.util.confirmYesNoDisplay(
                    f"{exc}.\n\nOnly if they are the same patient and series (e.g. a registered copy): resample the "
                    "segmentation onto that volume's grid?", windowTitle="Segmentation of another volume"):
                return None
            return action(True)

    def onCompareButton(self):
        from RCSegNeXtLib.ownership import reference_volume
        p = self._parameterNode
        ref, test = p.referenceSegmentation, p.testSegmentation
        volume = reference_volume(ref) or reference_volume(test) or p.inputVolume
        with slicer.util.tryWithErrorDisplay("Comparison failed.", waitCursor=True):
            table = self._withResampleConsent(lambda resample: self.logic.compareSegmentations(
                ref, test, volume, resample=resample))
            if table is None:
                return
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
            caseId = self._withResampleConsent(lambda resample: self.logic.saveAsTrainingCase(
                p.inputVolume, p.outputSegmentation, p.datasetPath, self.ui.caseIdLineEdit.text.strip() or None,
                resample=resample))
            if caseId is None:
                return
            if not self.ui.improveDatasetPathLineEdit.currentPath:
                self.ui.improveDatasetPathLineEdit.currentPath = p.datasetPath
            self.showDatasetSummary(full=False)
            slicer.util.infoDisplay(
                f"Saved case '{caseId}' in {p.datasetPath}.\n\nNext step: section 'Improve the model' trains on "
                "the saved cases (fine-tuning the selected model, or from scratch).")

    # -- improve the model (training subprocess, driven by logic.train / fineTune's TrainingRunController) -------
    def _onTrainingDatasetChanged(self, path):
        self._setParameter("trainingDatasetPath", path)
        self.showDatasetSummary(full=False)

    def showDatasetSummary(self, full):
        path = self.ui.improveDatasetPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay("Cannot read the dataset folder.", waitCursor=full):
            self.ui.datasetSummaryLabel.text = self.logic.datasetSummary(path, full=full).text if path else ""
        self._updateButtons()

    def onTrainButton(self):
        p = self._parameterNode
        dataset = self.ui.improveDatasetPathLineEdit.currentPath
        gpu = self._deviceInfo.get("cuda") if self._deviceInfo and self._deviceInfo.get("torch") else None
        options = dict(runsRoot=runsRoot(), device=p.device, gpuFound=gpu, onInstalled=self._onModelTrained,
                       ask=slicer.util.confirmOkCancelDisplay, confirm=slicer.util.confirmOkCancelDisplay)
        with slicer.util.tryWithErrorDisplay("Cannot start the training.", waitCursor=True):
            if self.ui.finetuneRadioButton.checked:
                run = self.logic.fineTune(dataset, p.modelPath, modelsRoot(), **options)
            else:
                run = self.logic.train(dataset, modelsRoot(), **options)
            if run is not None:
                self._startTraining(run)
        self._updateButtons()

    def onResumeTraining(self):
        with slicer.util.tryWithErrorDisplay("Cannot resume the training.", waitCursor=True):
            self.training.resume()
            self._startTraining(self.training)
        self._updateButtons()

    def _startTraining(self, run):
        self.training = run
        self._showTrainingReport(run.report)
        self._timer.start()

    def onCancelTraining(self):
        if self.training is not None and self.training.running:
            self._onTrainingFinished(self.training.cancel())

    def _showTrainingReport(self, report):
        self.ui.trainingProgressBar.visible = report.running
        self.ui.trainingProgressBar.value = int(100 * report.fraction)
        self.ui.trainingStatusLabel.text = report.status
        self.ui.trainingWarningsLabel.text = "\n".join(report.warnings)
        self.ui.trainingWarningsLabel.visible = bool(report.warnings)

    def _onTrainingFinished(self, report):
        from RCSegNeXtLib.controller import FAILED
        self._showTrainingReport(report)
        if report.state == FAILED:
            slicer.util.errorDisplay(f"Training failed. {report.status}", detailedText=report.message)
        self._updateButtons()

    def _onModelTrained(self, model):
        """The finished run is installed: list it and make it the selected model."""
        self.refreshModels()
        self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(str(model.path)))
        self.ui.modelPathLineEdit.currentPath = str(model.path)


class RCSegNeXtTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Developer mode > Reload and Test, and CTest): the Logic in-process and the
    Widget's RunController (subprocess), keeping the GUI live while it waits."""

    TIMEOUT_S = 120  # a 4-channel model on a 12x48x48 volume takes seconds; more means something is wrong

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentAndCompare()
        self.setUp()
        self.test_ImproveTheModel()

    def _tinyModel(self, folder):
        from RCSegNeXtCore.planning import make_plans_from_values
        from RCSegNeXtCore.inference.model_folder import init_model_folder
        plans = make_plans_from_values([4.0, 1.0, 1.0], [16, 32, 32], base_channels=4)
        return init_model_folder(plans, folder)

    def test_SegmentAndCompare(self):
        import numpy as np
        from RCSegNeXtLib.controller import DONE, RunController
        from RCSegNeXtLib.dependencies import ensure_torch
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
            controller = RunController(logic)
            controller.start(volume, model, device="cpu", uncertainty=True)
            report = controller.wait(timeout=self.TIMEOUT_S, idle=slicer.app.processEvents)
            self.assertEqual(report.state, DONE, f"{report.status} {report.message}")
            self.assertIsNotNone(report.reviewScore)  # the review map: on the volume's grid, shown over it
            self.assertEqual(slicer.util.arrayFromVolume(report.reviewMap).shape, array.shape)
            logic.showReviewMap(volume, report.reviewMap)
            same = logic.computeDice(seg, report.segmentation)  # identical: 1.0, or n/a (nan) where both are empty
            self.assertTrue(all(v == 1.0 or (v != v and dice[k] != dice[k]) for k, v in same.items()), same)
            self.delayDisplay("Test passed")
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def test_ImproveTheModel(self):
        from RCSegNeXtCore.phantom import make_phantom_dataset
        from RCSegNeXtLib.controller import DONE
        from RCSegNeXtLib.models import list_models
        self.delayDisplay("Train a tiny model on 4 phantom cases, then fine-tune it, through PythonSlicer")
        temp = tempfile.mkdtemp(prefix="RCSegNeXtTest-")
        try:
            dataset = make_phantom_dataset(os.path.join(temp, "Dataset900_Test"), 4, seed=0, size="small",
                                           progress=False)
            models = os.path.join(temp, "models")
            logic = RCSegNeXtLogic()
            tiny = ["--iterations-per-epoch", "2", "--val-iterations", "1", "--num-workers", "0"]
            run = logic.train(dataset, models, device="cpu", epochs=2, name="tiny", gpuFound=False,
                              extraArgs=tiny + ["--base-channels", "4", "--patch-size", "16", "32", "32"])
            report = run.wait(timeout=self.TIMEOUT_S, idle=slicer.app.processEvents)
            self.assertEqual(report.state, DONE, f"{report.status} {report.message}")
            tuned = logic.fineTune(dataset, report.model.path, models, device="cpu", epochs=1, name="tuned",
                                   gpuFound=False, extraArgs=tiny)
            report = tuned.wait(timeout=self.TIMEOUT_S, idle=slicer.app.processEvents)
            self.assertEqual(report.state, DONE, f"{report.status} {report.message}")
            installed = {m.name: m for m in list_models(models)}
            self.assertEqual(installed["tuned"].parent, "tiny")
            self.delayDisplay("Test passed")
        finally:
            shutil.rmtree(temp, ignore_errors=True)
