"""RCSegNeXtLogic: the Slicer module's logic, Qt-free, usable from Slicer's Python console, scripts and tests.

It only translates between MRML nodes and the core (`RCSegNeXtCore`): the segmentation science (prediction,
metrics, dataset layout) lives in the core. torch is imported only inside `segment`, and only when the torch backend
runs (a GPU, or `backend="torch"`): on the CPU an inference engine runs the model folder's ONNX files without it.

    logic = RCSegNeXtLogic()
    seg = logic.segment(volumeNode, "/path/to/model", device="auto", tta=False)   # backend="auto"
    logic.lastEngine                                         # e.g. 'openvino 2026.4.1 (CPU, f32, 2 threads)'
    logic.lastWarnings                                       # why the input may be far from the training data
    seg = logic.segment(volumeNode, "/path/to/model", uncertainty=True)  # + the review map and the case's score
    logic.lastReviewMap, seg.GetAttribute(REVIEW_SCORE_ATTRIBUTE)        # '<volume> review map', '0.231...'
    logic.computeDice(referenceSegmentationNode, seg)        # {"Rectum": 0.91, "Tumor": 0.78}
    logic.saveAsTrainingCase(volumeNode, seg, "/data/Dataset001_Rectal")
    logic.datasetSummary("/data/Dataset001_Rectal").text                 # '12 training cases; check: no problems'
    run = logic.fineTune("/data/Dataset001_Rectal", "/models/rectal-v1", modelsRoot)   # a training subprocess
    run.wait(timeout=None).model                                           # installed, with its provenance

A segmentation is only ever paired with the volume it belongs to (`ownership`): writing a prediction into, saving a
training case from or scoring Dice on another volume's segmentation raises `SegmentationMismatchError` and writes
nothing, unless the caller passes `resample=True` (the panel asks the user first).
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from RCSegNeXtCore.data.io import Image, read_image
from RCSegNeXtCore.errors import DatasetError, ModelError, RCSegNeXtError

from RCSegNeXtLib import convert, ownership
from RCSegNeXtLib.compare import SegmentationComparison, compare_segmentations

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total), as the core predictor
WARNINGS_ATTRIBUTE = "RCSegNeXt.Warnings"  # on the segmentation node: the input warnings of the run that made it
# on the segmentation node, from a run with the review map (the core's uncertainty.case_score; a worklist sorts by it)
REVIEW_SCORE_ATTRIBUTE = "RCSegNeXt.UncertaintyScore"
REVIEW_REGION_ATTRIBUTE = "RCSegNeXt.UncertaintyRegion"  # where it was taken: tumour | foreground | volume
REVIEW_MAP_REFERENCE = "RCSegNeXt.ReviewMap"  # node reference: segmentation -> its review map (reused by a rerun)
SCORE_HEADER_KEY, REGION_HEADER_KEY = "RCSegNeXt_UncertaintyScore", "RCSegNeXt_UncertaintyRegion"  # the core's


def review_score_text(score: Optional[float]) -> str:
    """The panel's line for a case's review score ('' without one)."""
    return "" if score is None else f"Review score {score:.2f} (higher = look closer)."


def read_review_score(path: str | os.PathLike) -> Tuple[Optional[float], str]:
    """(score, region) from a review map's or label map's NRRD/MHA header (the core writes them there with
    --uncertainty); (None, "") when the file has none (e.g. NIfTI)."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    if SCORE_HEADER_KEY not in keys:
        return None, ""
    region = reader.GetMetaData(REGION_HEADER_KEY) if REGION_HEADER_KEY in keys else ""
    return float(reader.GetMetaData(SCORE_HEADER_KEY)), region


def model_labels(modelDir: str | os.PathLike) -> Dict[str, int]:
    """Class name -> label value of a model folder (its dataset.json, else plans.json); no torch needed."""
    from RCSegNeXtCore.plans import Plans
    folder = Path(modelDir)
    dataset_json = folder / "dataset.json"
    if dataset_json.is_file():
        try:
            labels = json.loads(dataset_json.read_text(encoding="utf-8")).get("labels")
        except (ValueError, AttributeError):
            labels = None
        if isinstance(labels, dict) and all(isinstance(v, int) for v in labels.values()):
            return {str(k): int(v) for k, v in labels.items()}
    if not (folder / "plans.json").is_file():
        raise ModelError(f"{folder}: not a model folder (no plans.json); choose a training run folder or an "
                         "installed model")
    return dict(Plans.load(folder / "plans.json").labels)


def segment_styles_for(labels: Dict[str, int]):
    """Segment names, colours and terminology for a model's labels (the core's one style table)."""
    from RCSegNeXtCore.inference.segments import segment_styles
    return segment_styles(labels)


@dataclass
class DatasetSummary:
    """What the panel's 'Improve the model' section says about a dataset folder: case count and check result."""

    folder: str
    cases: int
    problems: List[str] = field(default_factory=list)  # the core check's problems, one line each (what + what to do)
    checked: bool = False                              # every case read (`full`), not only the layout scanned

    @property
    def ok(self) -> bool:
        return self.cases > 0 and not self.problems

    @property
    def text(self) -> str:
        if self.cases == 0 and not self.problems:
            return "No training cases yet: save corrected cases with 'Save as training case'."
        what = "check" if self.checked else "layout"
        head = f"{self.cases} training case(s); {what}: "
        if not self.problems:
            return head + ("no problems." if self.checked else "no problems (the cases are read when training).")
        shown = self.problems[:5]
        more = f"\n... and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        return head + f"{len(self.problems)} problem(s):\n" + "\n".join(shown) + more


class RCSegNeXtLogic:
    """MRML <-> core for 'Segment rectal cancer'. No Qt: every method works headless (slicer-core) too."""

    def __init__(self):
        self.lastWarnings: List[str] = []  # input warnings of the last `segment` / `loadResult`
        self.lastEngine = ""               # what ran the network in the last `segment`
        self.lastReviewMap = None          # the review-map volume node of the last run that asked for one
        self.lastReviewScore = None        # and its per-case score
        self.trainingRun = None            # the TrainingRunController of the last `train` / `fineTune`

    # -- segmentation ------------------------------------------------------------------------------------------
    def segment(self, volumeNode, modelDir: str | os.PathLike, device: str = "auto", tta: bool = False,
                segmentationNode=None, progress: Optional[ProgressCallback] = None, folds=None,
                backend: str = "auto", uncertainty: bool = False):
        """Segment `volumeNode` in this process (blocks) and return the segmentation node with Rectum and Tumor.
        `backend` (auto | torch | openvino | onnxruntime) picks what runs the network, as `predict --backend`;
        `lastEngine` then says which ran. `uncertainty`: also the review map (`addReviewMap`: `lastReviewMap`, the
        score on the node), as `predict --uncertainty`.

        Warnings about the input (another slice plane than the model's, far-off spacing) land in `lastWarnings`,
        on the node (attribute `RCSegNeXt.Warnings`) and in the log (Slicer's Python console)."""
        self.checkOutputNode(volumeNode, segmentationNode)
        from RCSegNeXtCore.inference.config import PredictionConfig
        from RCSegNeXtCore.inference.predictor import Predictor  # torch only for the torch backend
        image = convert.volume_to_image(volumeNode)
        predictor = Predictor.from_config(PredictionConfig(model=str(modelDir), folds=folds, device=device, tta=tta,
                                                           backend=backend))
        self.lastEngine = predictor.engine
        logging.info("RCSegNeXt: %s", self.lastEngine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below, once, instead
            prediction = predictor.predict(image, progress=progress, source=volumeNode.GetName(),
                                           uncertainty=uncertainty)
        node = self.segmentationFromLabels(volumeNode, prediction.labels, predictor.labels, segmentationNode,
                                           prediction_geometry=prediction.geometry,
                                           warningMessages=prediction.warnings)
        if uncertainty:
            self.addReviewMap(volumeNode, node, prediction.uncertainty, prediction.geometry,
                              prediction.uncertainty_score, prediction.uncertainty_region or "")
        return node

    @staticmethod
    def checkOutputNode(volumeNode, segmentationNode) -> None:
        """Refuse to write a prediction into a segmentation made on another volume (it would replace that patient's
        segments and re-reference the node): only a segmentation of this volume, or a blank one, may be reused."""
        if segmentationNode is None or ownership.is_blank(segmentationNode):
            return
        problem = ownership.ownership_problem(segmentationNode, volumeNode)
        if problem:
            raise ownership.SegmentationMismatchError(
                f"will not write the result into '{segmentationNode.GetName()}': {problem}. Choose 'Create new "
                "segmentation' as output (nothing was changed)")

    def segmentationFromLabels(self, volumeNode, labels: np.ndarray, labelValues: Dict[str, int],
                               segmentationNode=None, prediction_geometry=None, warningMessages: Sequence[str] = ()):
        """A label map on the volume's grid -> segmentation node (names/colours/terminology from the core).

        A given `segmentationNode` must belong to the volume (or be blank); a new one is named after the volume and
        placed in its study. `warningMessages` are recorded on the node, in `lastWarnings` and in the log."""
        self.checkOutputNode(volumeNode, segmentationNode)
        if prediction_geometry is not None:
            expected = convert.volume_to_geometry(volumeNode)
            diffs = expected.differences(prediction_geometry)
            if diffs:
                raise RCSegNeXtError(f"prediction grid differs from volume '{volumeNode.GetName()}': "
                                     + "; ".join(diffs) + ". This is a bug: please report it with the volume.")
        node = convert.labels_to_segmentation(labels, volumeNode, segment_styles_for(labelValues), segmentationNode,
                                              name=f"{volumeNode.GetName()} segmentation")
        self.lastWarnings = list(warningMessages)
        node.SetAttribute(WARNINGS_ATTRIBUTE, "\n".join(self.lastWarnings))
        # a new result: an earlier run's score no longer describes it (addReviewMap sets this run's)
        node.RemoveAttribute(REVIEW_SCORE_ATTRIBUTE)
        node.RemoveAttribute(REVIEW_REGION_ATTRIBUTE)
        self.lastReviewMap, self.lastReviewScore = None, None
        for message in self.lastWarnings:
            logging.warning("RCSegNeXt: %s", message)
        return node

    def writeInput(self, volumeNode, path: str | os.PathLike) -> Path:
        """Write the volume (exact geometry, original voxel type) for the subprocess runner."""
        from RCSegNeXtCore.data.io import write_image
        image = convert.volume_to_image(volumeNode, dtype=None)
        return write_image(image.array, image.geometry, path)

    def loadResult(self, volumeNode, resultPath: str | os.PathLike, modelDir: str | os.PathLike,
                   segmentationNode=None, warningMessages: Sequence[str] = ()):
        """Read the subprocess's label map and turn it into the segmentation node (geometry checked)."""
        result: Image = read_image(resultPath)
        return self.segmentationFromLabels(volumeNode, result.array, model_labels(modelDir), segmentationNode,
                                           prediction_geometry=result.geometry, warningMessages=warningMessages)

    def addReviewMap(self, volumeNode, segmentationNode, values: np.ndarray, geometry=None,
                     score: Optional[float] = None, region: str = ""):
        """The review map (float32 in [0, 1] on the volume's grid; geometry checked like the labels) as the volume
        node "<volume> review map" (the one a rerun into `segmentationNode` made is updated instead), and its
        per-case score on the segmentation node (REVIEW_SCORE_ATTRIBUTE, REVIEW_REGION_ATTRIBUTE)."""
        if geometry is not None:
            diffs = convert.volume_to_geometry(volumeNode).differences(geometry)
            if diffs:
                raise RCSegNeXtError(f"review map grid differs from volume '{volumeNode.GetName()}': "
                                     + "; ".join(diffs) + ". This is a bug: please report it with the volume.")
        previous = segmentationNode.GetNodeReference(REVIEW_MAP_REFERENCE)
        if previous is not None and not previous.IsA("vtkMRMLScalarVolumeNode"):
            previous = None
        mapNode = convert.map_to_volume(values, volumeNode, f"{volumeNode.GetName()} review map", previous)
        segmentationNode.SetNodeReferenceID(REVIEW_MAP_REFERENCE, mapNode.GetID())
        if score is not None:
            segmentationNode.SetAttribute(REVIEW_SCORE_ATTRIBUTE, f"{float(score):.6f}")
            segmentationNode.SetAttribute(REVIEW_REGION_ATTRIBUTE, region or "")
            mapNode.SetAttribute(REVIEW_SCORE_ATTRIBUTE, f"{float(score):.6f}")
        self.lastReviewMap, self.lastReviewScore = mapNode, score
        return mapNode

    def loadReviewMap(self, volumeNode, segmentationNode, mapPath: str | os.PathLike,
                      score: Optional[float] = None, region: str = ""):
        """Read a review map written by `predict --uncertainty` (CASE_uncertainty<ext>) onto the volume (grid
        checked) and record its score; without `score`, the one in the file's header."""
        result: Image = read_image(mapPath, np.float32)
        if score is None:
            score, region = read_review_score(mapPath)
        return self.addReviewMap(volumeNode, segmentationNode, result.array, result.geometry, score, region)

    @staticmethod
    def showReviewMap(volumeNode, mapNode=None) -> None:
        """Slice views: the volume in the background, its review map over it (REVIEW_MAP_OPACITY); without a map,
        a review map of an earlier run is taken out of the foreground."""
        convert.show_review_map(volumeNode, mapNode)

    # -- comparison (Dice panel) -------------------------------------------------------------------------------
    def compareSegmentations(self, referenceSegmentationNode, testSegmentationNode,
                             referenceVolumeNode=None, resample: bool = False) -> SegmentationComparison:
        """Per-segment Dice, HD95 and volumes (ml) on the reference volume's grid (default: the one the reference
        segmentation was made on). Refused when a segmentation does not belong to that volume, unless `resample`."""
        return compare_segmentations(referenceSegmentationNode, testSegmentationNode, referenceVolumeNode, resample)

    def computeDice(self, referenceSegmentationNode, testSegmentationNode,
                    referenceVolumeNode=None, resample: bool = False) -> Dict[str, float]:
        """{segment name: Dice}; nan ("n/a") when the segment is empty (or missing) on both sides."""
        table = self.compareSegmentations(referenceSegmentationNode, testSegmentationNode, referenceVolumeNode,
                                          resample)
        return {row.name: row.dice for row in table.rows}

    # -- corrections become training data ----------------------------------------------------------------------
    def saveAsTrainingCase(self, volumeNode, segmentationNode, datasetDir: str | os.PathLike,
                           caseId: Optional[str] = None, labels: Optional[Dict[str, int]] = None,
                           resample: bool = False) -> str:
        """Save the volume and its (corrected) segmentation as a new case of an nnU-Net-layout dataset.

        Writes `imagesTr/<caseId>_0000<ending>` (exact geometry, original voxel type) and `labelsTr/<caseId><ending>`
        (each dataset label's segment rasterised on the volume's grid, by name or terminology), then updates
        `dataset.json` (created with `labels`, default the model's background/rectum/tumour, when absent).
        The segmentation must belong to the volume (else SegmentationMismatchError, nothing written) unless
        `resample=True`. Returns the case ID.
        """
        from RCSegNeXtCore.data.dataset import parse_dataset_json, write_dataset_json
        from RCSegNeXtCore.data.io import write_image
        if volumeNode is None or segmentationNode is None:
            raise RCSegNeXtError("choose both the volume and its segmentation to save a training case")
        ownership.require_belongs(segmentationNode, volumeNode, "save the training case", resample)
        root = Path(datasetDir)
        if (root / "dataset.json").is_file():
            raw, ds_labels, channels, ending, problems = parse_dataset_json(root)
            if problems:
                raise DatasetError(f"{root / 'dataset.json'}: "
                                   + "; ".join(f"{p.message} ({p.hint})" for p in problems))
            if labels is not None and dict(labels) != ds_labels:
                raise DatasetError(f"{root}: dataset.json labels {ds_labels} differ from the requested {labels}")
            if len(channels) != 1:
                raise DatasetError(f"{root}: dataset has {len(channels)} channels; one volume gives one (T2) channel")
            labels = ds_labels
        else:
            from RCSegNeXtCore.data.dataset import DEFAULT_CHANNELS, DEFAULT_LABELS
            raw, labels, channels, ending = {}, dict(labels or DEFAULT_LABELS), dict(DEFAULT_CHANNELS), ".nii.gz"
        segment_of_label = self._segmentsForLabels(segmentationNode, labels)
        caseId = self._newCaseId(root, ending, caseId, volumeNode.GetName())

        image = convert.volume_to_image(volumeNode, dtype=None)
        label_map = np.zeros(image.array.shape, dtype=np.uint8)
        for value, segment_id in segment_of_label.items():
            label_map[convert.segment_mask(segmentationNode, segment_id, volumeNode)] = value
        write_image(image.array, image.geometry, root / "imagesTr" / f"{caseId}_0000{ending}")
        write_image(label_map, image.geometry, root / "labelsTr" / f"{caseId}{ending}")
        extra = {k: v for k, v in raw.items() if k not in ("labels", "channel_names", "file_ending", "numTraining")}
        num_training = len([p for p in (root / "labelsTr").iterdir() if not p.name.startswith(".")])
        write_dataset_json(root, labels, channels, ending, num_training, **extra)
        return caseId

    @staticmethod
    def _segmentsForLabels(segmentationNode, labels: Dict[str, int]) -> Dict[int, str]:
        """label value -> segment ID, matching each foreground label to a segment by name or terminology code."""
        segmentation = segmentationNode.GetSegmentation()
        segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        found, missing = {}, []
        for style in segment_styles_for(labels):
            names = {style.name.lower()} | {n.lower() for n, v in labels.items() if v == style.label_value}
            code = convert.terminology_type_code(style.terminology)
            match = [sid for sid, seg in zip(ids, segments) if seg.GetName().lower() in names]
            by_code = [sid for sid, seg in zip(ids, segments) if code and convert.segment_type_code(seg) == code]
            match = match or (by_code if len(by_code) == 1 else [])
            if match:
                found[style.label_value] = match[0]
            else:
                missing.append(style.name)
        if missing:
            raise DatasetError(f"segmentation '{segmentationNode.GetName()}' has no segment for {', '.join(missing)} "
                               f"(it has: {', '.join(convert.segment_names(segmentationNode)) or 'none'}); add or "
                               "rename the segment in Segment Editor (an empty segment is fine)")
        return found

    @staticmethod
    def _newCaseId(root: Path, ending: str, wanted: Optional[str], volume_name: str) -> str:
        """The case ID: an explicit one must be a safe file name and unused (never overwritten); otherwise the
        volume's name made file-safe, with _001, _002, ... appended when taken."""
        from RCSegNeXtCore.data.dataset import CHANNEL_STEM
        def taken(case_id: str) -> bool:
            return (root / "labelsTr" / f"{case_id}{ending}").exists() or \
                (root / "imagesTr" / f"{case_id}_0000{ending}").exists()
        if wanted:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", wanted) or CHANNEL_STEM.match(wanted):
                raise DatasetError(f"case ID '{wanted}': use letters, digits, '_' and '-' only, not ending in "
                                   "_NNNN (that suffix names the channel)")
            if taken(wanted):
                raise DatasetError(f"{root}: case '{wanted}' already exists; choose another case ID (existing "
                                   "cases are never overwritten)")
            return wanted
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", volume_name).strip("_-") or "case"
        channel = CHANNEL_STEM.match(base)
        if channel:  # a name ending _NNNN would read as a channel suffix
            base = f"{channel['case']}-{channel['channel']}"
        if not taken(base):
            return base
        for n in range(1, 10000):
            if not taken(f"{base}_{n:03d}"):
                return f"{base}_{n:03d}"
        raise DatasetError(f"{root}: no free case ID for '{base}'")

    # -- improving the model: training runs in a PythonSlicer subprocess ----------------------------------------
    @staticmethod
    def datasetSummary(datasetDir: str | os.PathLike, full: bool = True) -> DatasetSummary:
        """Case count and the core `check` result (every problem, each saying what to do) of a dataset folder.
        `full=False` only scans the layout (fast, for every keystroke in the folder field); `full` reads every
        case, as `rcsegnext check` does."""
        from RCSegNeXtCore.data.dataset import scan_dataset
        folder = Path(datasetDir) if datasetDir else None
        if folder is None or not folder.is_dir() or not any(folder.iterdir()):
            return DatasetSummary(str(datasetDir or ""), 0)
        if full:
            from RCSegNeXtCore.data.validation import inspect_dataset
            report = inspect_dataset(folder)
            return DatasetSummary(str(folder), report.num_cases, [str(p) for p in report.problems], True)
        dataset, problems = scan_dataset(folder)
        return DatasetSummary(str(folder), len(dataset.cases), [str(p) for p in problems], False)

    def train(self, datasetDir: str | os.PathLike, modelsRoot: str | os.PathLike, **options):
        """Train a new model from scratch on `datasetDir` in a PythonSlicer subprocess; returns its
        `TrainingRunController` (poll / wait / cancel / resume), or None when `confirm` declined. Options:

        - runsRoot (default: `runs` beside `modelsRoot`), name (of the run folder and the installed model), device
          ("auto"), epochs (None: the core's default), extraArgs (further `train` options), python (PythonSlicer);
        - onInstalled(model): the finished model, installed under `modelsRoot` (the panel selects it);
        - wait, timeout: block until the run ends (cancelled after `timeout` s);
        - gpuFound: whether a CUDA GPU is there (None: asked of a short child process). Without one the report
          carries a warning with the estimated CPU time, and `confirm(warning)` is asked first (False: nothing
          starts); ask(message) confirms a PyTorch download."""
        return self._startTraining(datasetDir, modelsRoot, "scratch", None, None, **options)

    def fineTune(self, datasetDir: str | os.PathLike, parentModelDir: str | os.PathLike,
                 modelsRoot: str | os.PathLike, fold=None, **options):
        """Fine-tune the model `parentModelDir` (its fold `fold`; default its only fold, else fold_all) on
        `datasetDir`: its plan is kept, its weights are the start, the schedule is shorter (the core's
        FINETUNE_EPOCHS). Options as `train`; the installed model records its parent."""
        return self._startTraining(datasetDir, modelsRoot, "finetune", parentModelDir, fold, **options)

    def _startTraining(self, datasetDir, modelsRoot, mode, parentModelDir, fold, runsRoot=None,
                       device: str = "auto", epochs: Optional[int] = None, name: Optional[str] = None,
                       extraArgs: Sequence[str] = (), python: Optional[str] = None, onInstalled=None,
                       wait: bool = False, timeout: Optional[float] = None, gpuFound: Optional[bool] = None,
                       confirm: Optional[Callable[[str], bool]] = None, ask: Optional[Callable[[str], bool]] = None):
        from RCSegNeXtLib import dependencies
        from RCSegNeXtLib.training_run import TrainingRunController, training_time_warning
        if self.trainingRun is not None and self.trainingRun.running:
            raise RCSegNeXtError("a training run is already running; cancel it first")
        summary = self.datasetSummary(datasetDir, full=False)
        if summary.cases == 0:
            raise DatasetError(f"{datasetDir}: no training cases; save corrected cases with 'Save as training "
                               "case' first")
        dependencies.ensure_torch(ask)  # training needs PyTorch (PyTorchUtils inside Slicer)
        if gpuFound is None and not str(device).startswith("cuda"):
            gpuFound = dependencies.probe_cuda(python)
        warning = training_time_warning(summary.cases, device, bool(gpuFound), mode, parentModelDir, epochs,
                                        extraArgs)
        if warning and confirm is not None and not confirm(warning + "\n\nStart the training anyway?"):
            return None
        run = TrainingRunController(modelsRoot, runsRoot, python=python, on_installed=onInstalled)
        run.start(datasetDir, mode, parentModelDir, fold, device, epochs, name, extraArgs,
                  warnings=[warning] if warning else [])
        for message in run.report.warnings:
            logging.warning("RCSegNeXt: %s", message)
        self.trainingRun = run
        if wait:
            run.wait(timeout)
        return run

    # -- helpers for the GUI ------------------------------------------------------------------------------------
    @staticmethod
    def listSegmentNames(segmentationNode) -> List[str]:
        return convert.segment_names(segmentationNode)
