"""One segmentation run of the panel, from Apply to the segments: start, poll, finish, cancel. Qt-free.

The Widget binds buttons to `start` / `cancel`, calls `poll` from a timer and shows the `RunReport` it returns; it
holds no run state. The controller owns the run's temp folder (always removed), the PythonSlicer subprocess
(`runner.SubprocessRunner`), the progress text (tiles and time left), the warnings the child reports (another slice
plane, far-off spacing), the child's log lines (to the Python console) and which node receives the result:

- a new segmentation unless the user picked one; a picked one must belong to the input volume or be blank
  (`RCSegNeXtLogic.checkOutputNode`), so another patient's corrected segments are never replaced;
- `outputForInput`: when the input volume changes, the output selection is kept only if it belongs to the new
  volume, else reset to "create new".

With `uncertainty=True` the child also writes the review map (`predict --uncertainty`: CASE_uncertainty beside the
label map in the temp folder); it is loaded as the volume node "<volume> review map" on the input's grid
(`RCSegNeXtLogic.loadReviewMap`) and the per-case score goes on the segmentation node and into the report.

    controller = RunController(logic)
    controller.start(volumeNode, modelDir, device="auto")
    report = controller.poll()            # from a timer, until report.state != "running"
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from RCSegNeXtCore.errors import RCSegNeXtError

from RCSegNeXtLib import ownership, runner as runner_module
from RCSegNeXtLib.logic import model_labels, review_score_text
from RCSegNeXtLib.models import NO_MODEL_HINT

_LOG = logging.getLogger("RCSegNeXt")

IDLE, RUNNING, DONE, FAILED, CANCELLED = "idle", "running", "done", "failed", "cancelled"


@dataclass
class RunReport:
    """What the panel shows about the current or last run."""

    state: str = IDLE
    fraction: float = 0.0
    status: str = ""
    warnings: List[str] = field(default_factory=list)
    segmentation: object = None  # the segmentation node a finished run wrote
    message: str = ""            # details of a failure (stderr tail, exception text)
    reviewMap: object = None     # the review-map volume node (a run with uncertainty=True)
    reviewScore: Optional[float] = None  # its per-case score (higher = look closer)

    @property
    def running(self) -> bool:
        return self.state == RUNNING


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, int(round(seconds)))} s"
    return f"{int(round(seconds / 60))} min"


def poll_until_done(run, what: str, timeout: Optional[float], idle: Optional[Callable[[], None]] = None,
                    interval: float = 0.1):
    """Poll a run controller (`running`, `poll`, `cancel`, `report`, `clock`) until its run ends, calling `idle()`
    between polls; after `timeout` s (None: no limit) cancel it and report it failed. Returns its report."""
    deadline = None if timeout is None else run.clock() + timeout
    while run.running:
        run.poll()
        if not run.running:
            break
        if deadline is not None and run.clock() > deadline:
            run.cancel()
            run.report.state = FAILED
            run.report.message = f"the {what} did not finish within {timeout:.0f} s and was cancelled"
            break
        if idle is not None:
            idle()
        time.sleep(interval)
    return run.report


class ProgressText:
    """Status line from progress events: stage, tile count and, once tiles are timed, the time left."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, engine: str = ""):
        self.clock = clock
        self.engine = engine  # what runs the network; the child's own description replaces it when it sends one
        self._first = None  # (time, tiles done) at the first tile event of the current case

    def __call__(self, event: runner_module.ProgressEvent) -> str:
        if event.raw.get("engine"):
            self.engine = str(event.raw["engine"])
        if event.stage == "preprocess":
            self._first = None
            return "Reading and preparing the volume..."
        if event.stage == "predict" and event.tiles_total:
            now = self.clock()
            if self._first is None or event.tiles_done < self._first[1]:
                self._first = (now, event.tiles_done)
            on = f" on {self.engine}" if self.engine else ""
            text = f"Segmenting{on}: tile {event.tiles_done} of {event.tiles_total}"
            start, start_tiles = self._first
            if event.tiles_done > start_tiles and now > start:
                left = (event.tiles_total - event.tiles_done) * (now - start) / (event.tiles_done - start_tiles)
                text += f", about {format_duration(left)} left" if left > 0 else ""
            return text
        if event.stage == "export":
            return "Writing the result..."
        if event.stage == "done":
            return "Loading the segments..."
        return event.text


class RunController:
    """Runs `python -m RCSegNeXtCore predict` for one volume and loads the result (see the module docstring)."""

    def __init__(self, logic, python: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.logic = logic
        self.python = python
        self.log = log or (lambda line: _LOG.info("[predict] %s", line))
        self.clock = clock
        self.report = RunReport()
        self._runner: Optional[runner_module.SubprocessRunner] = None
        self._temp: Optional[Path] = None
        self._run = {}  # volume, model, output node, output path of the current run
        self._progress = ProgressText(clock)
        self.lastVolume = None  # the input of the current or last run

    # -- before a run ------------------------------------------------------------------------------------------
    @staticmethod
    def readiness(volumeNode, modelDir: str) -> str:
        """'' when Apply can run, else what the user has to do first."""
        if volumeNode is None:
            return "Choose the sagittal T2 volume to segment."
        if not modelDir:
            return NO_MODEL_HINT
        try:
            model_labels(modelDir)
        except RCSegNeXtError as exc:
            return str(exc)
        return ""

    @staticmethod
    def outputForInput(volumeNode, outputNode):
        """The output selection after the input changed: kept only when it belongs to the new volume."""
        if outputNode is None or volumeNode is None:
            return None
        return outputNode if ownership.belongs_to(outputNode, volumeNode) else None

    # -- the run -----------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._runner is not None

    def start(self, volumeNode, modelDir: str, device: str = "auto", tta: bool = False, outputNode=None,
              folds=None, backend: str = "auto", uncertainty: bool = False) -> RunReport:
        """Write the volume to a temp folder and start the child; raises (leaving nothing behind) when it cannot.
        `backend`: what runs the network (auto | torch | openvino | onnxruntime, as `predict --backend`);
        `uncertainty`: also the review map and the case's score (see the module docstring)."""
        if self.running:
            raise RCSegNeXtError("a segmentation is already running; cancel it first")
        problem = self.readiness(volumeNode, modelDir)
        if problem:
            raise RCSegNeXtError(problem)
        self.logic.checkOutputNode(volumeNode, outputNode)
        temp = Path(tempfile.mkdtemp(prefix="RCSegNeXt-"))
        try:
            input_path = self.logic.writeInput(volumeNode, temp / "input.nrrd")
            output_path = temp / "labels.nrrd"
            command = runner_module.build_predict_command(self.python or runner_module.find_python_slicer(),
                                                          input_path, output_path, modelDir, device, tta, folds,
                                                          backend=backend, uncertainty=uncertainty)
            run = runner_module.SubprocessRunner(command).start()
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._runner, self._temp, self.lastVolume = run, temp, volumeNode
        self._run = {"volume": volumeNode, "model": str(modelDir), "output_node": outputNode, "output": output_path,
                     "uncertainty": bool(uncertainty)}
        self._progress = ProgressText(self.clock, engine="" if backend == "auto" else backend)
        self.report = RunReport(RUNNING, 0.0, "Starting...")
        self.log(" ".join(command))
        return self.report

    def poll(self) -> RunReport:
        """Take in the child's events (non-blocking); finishes the run when the child has ended."""
        if self._runner is None:
            return self.report
        for event in self._runner.poll():
            self._take(event)
        return self.report

    def cancel(self) -> RunReport:
        """Stop the run. A child that already finished successfully is not cancelled: its result is loaded."""
        if self._runner is None:
            return self.report
        self.poll()  # a run that ended just before Cancel finishes normally here
        if self._runner is not None:
            self._runner.cancel()
            for event in self._runner.wait(timeout=30):
                self._take(event)
        if self._runner is not None:  # the child could not be reaped: give up on it, never on the temp folder
            self._finish(runner_module.FinishedEvent(-1, True, "cancelled"))
        return self.report

    def wait(self, timeout: float, idle: Optional[Callable[[], None]] = None, interval: float = 0.1) -> RunReport:
        """Poll until the run ends, calling `idle()` between polls (e.g. `slicer.app.processEvents`, so the GUI stays
        live); after `timeout` s the run is cancelled and reported as failed. For scripts and the self-test."""
        return poll_until_done(self, "segmentation", timeout, idle, interval)

    # -- events ------------------------------------------------------------------------------------------------
    def _take(self, event) -> None:
        if isinstance(event, runner_module.ProgressEvent):
            self.report.fraction = event.fraction
            self.report.status = self._progress(event)
            if event.stage == "export":
                for message in event.raw.get("warnings") or []:
                    if str(message) not in self.report.warnings:  # logged when the result is loaded
                        self.report.warnings.append(str(message))
        elif isinstance(event, runner_module.LogEvent):
            if event.line.strip():
                self.log(event.line)
        elif isinstance(event, runner_module.FinishedEvent):
            self._finish(event)

    def _finish(self, event: runner_module.FinishedEvent) -> None:
        run, report = self._run, self.report
        try:
            if event.cancelled:
                report.state, report.status = CANCELLED, "Cancelled: nothing was changed."
            elif event.returncode != 0:
                report.state, report.status, report.message = FAILED, "Failed.", event.message
            else:
                report.segmentation = self._load(run)
                report.state, report.fraction = DONE, 1.0
                report.status = "Done: review and correct the segments in Segment Editor."
                if report.warnings:
                    report.status = f"Done with {len(report.warnings)} warning(s): read them before using the result."
                if report.reviewScore is not None:
                    report.status += " " + review_score_text(report.reviewScore)
        except (RCSegNeXtError, OSError, ValueError, RuntimeError) as exc:
            report.state, report.status, report.message = FAILED, "Cannot load the result.", str(exc)
        finally:
            self._runner = None
            self._run = {}
            if self._temp is not None:
                shutil.rmtree(self._temp, ignore_errors=True)
                self._temp = None

    def _load(self, run: dict):
        volume, node = run["volume"], run["output_node"]
        if volume is None or volume.GetScene() is None or not volume.GetScene().IsNodePresent(volume):
            raise RCSegNeXtError("the input volume was removed during the run; nothing was loaded")
        if node is not None and (node.GetScene() is None or not node.GetScene().IsNodePresent(node)):
            node = None  # the chosen output was deleted meanwhile: write a new segmentation instead
        if not os.path.isfile(run["output"]):
            raise RCSegNeXtError("the segmentation process ended without writing a result")
        segmentation = self.logic.loadResult(volume, run["output"], run["model"], node,
                                             warningMessages=self.report.warnings)
        if run.get("uncertainty"):
            from RCSegNeXtCore.inference.export import uncertainty_path
            self.report.segmentation = segmentation  # kept when the map below cannot be loaded
            path = uncertainty_path(run["output"])
            if not path.is_file():
                raise RCSegNeXtError(f"the segmentation process ended without writing the review map {path.name}; "
                                     "the segments were loaded: run again to get the map")
            self.report.reviewMap = self.logic.loadReviewMap(volume, segmentation, path)  # score: its header
            self.report.reviewScore = self.logic.lastReviewScore
        return segmentation
