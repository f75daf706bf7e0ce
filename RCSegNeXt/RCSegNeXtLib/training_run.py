"""One training run of the panel ("Improve the model"): start, poll, cancel, resume, install. Qt-free.

Modelled on `controller.RunController`: the Widget binds Train / Cancel / Resume to `start` / `cancel` / `resume`,
calls `poll` from a timer and shows the `TrainingReport`; it holds no run state. The run is
`PythonSlicer -m RCSegNeXtCore train DATASET -o RUN --fold all --progress-json` (`runner.build_train_command`) in
its own process tree, writing into `<runs root>/<name>` (the runs root is the models root's sibling). A cancelled
or crashed run leaves its folder, so `resume()` continues from `fold_all/checkpoint_latest.pt`; the folder also
holds `panel_run.json` (what the panel started), so a run can be resumed after Slicer restarts. A finished run is
installed into the model list (`models.install_model`, with the run's provenance) and handed to `on_installed`
(the panel selects it).

    run = TrainingRunController(models_root)
    run.start("/data/Dataset501_Rectal", mode="finetune", parentModelDir="/models/rectal-v1")
    report = run.poll()          # from a timer, until report.state != "running"; report.model once installed
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, List, Optional, Sequence

from RCSegNeXtCore.errors import DatasetError, ModelError, RCSegNeXtError

from RCSegNeXtLib import models, runner as runner_module
from RCSegNeXtLib.controller import CANCELLED, DONE, FAILED, IDLE, RUNNING, poll_until_done

_LOG = logging.getLogger("RCSegNeXt")

MODES = ("scratch", "finetune")
RUN_RECORD = "panel_run.json"  # what the panel started in this run folder: resume repeats it with --resume
RESUME_CHECKPOINT = Path("fold_all") / "checkpoint_latest.pt"


def default_runs_root(models_root: str | Path) -> Path:
    """Training runs live beside the installed models (`.../RCSegNeXt/runs` next to `.../RCSegNeXt/models`)."""
    return Path(models_root).parent / "runs"


@dataclass
class TrainingReport:
    """What the panel shows about the current or last training run."""

    state: str = IDLE
    fraction: float = 0.0
    status: str = ""
    message: str = ""          # details of a failure (the child's error line and stderr tail)
    runDir: str = ""
    model: Optional[models.InstalledModel] = None  # the installed model of a finished run
    warnings: List[str] = field(default_factory=list)
    epochs: List[runner_module.ProgressEvent] = field(default_factory=list)  # one `train` event per epoch
    log: Deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))  # the child's last lines

    @property
    def running(self) -> bool:
        return self.state == RUNNING


def stage_text(event: runner_module.ProgressEvent) -> str:
    """The status line for one training progress event."""
    if event.stage == "plan":
        return "Planning the network from the dataset..."
    if event.stage == "preprocess":
        return (f"Preparing the cases: {event.done} of {event.total}" if event.total else "Preparing the cases...")
    if event.stage == "train":
        text = event.text
        return text[:1].upper() + text[1:]
    if event.stage == "validate":
        return "Checking the trained model..."
    if event.stage == "export":
        return "Exporting the model for CPU inference..."
    if event.stage == "done":
        return "Installing the model..."
    return event.text


# CPU time estimate (training_time_warning). Measured, docs/benchmarks.md "Training": 6.70 s per iteration for
# batch 1 x [16, 160, 160] at width 32 on 2 CPU cores; scaled in proportion to the voxels per batch and to the
# width squared (a convolution's work grows with input x output channels). Preprocessing: about 1 s per case
# (benchmarks/results/preprocessing.md). A coarse figure: enough to tell minutes from days.
CPU_SECONDS_PER_ITERATION = 6.70
CPU_REFERENCE_VOXELS = 1 * 16 * 160 * 160
CPU_REFERENCE_WIDTH = 32
PREPROCESS_SECONDS_PER_CASE = 1.0
PAPER_PLAN = {"patch_size": [16, 320, 320], "batch_size": 2, "base_channels": 32}  # Dataset A's; before planning


def cpu_training_seconds(cases: int, epochs: int, iterations_per_epoch: int, patch_size: Sequence[int],
                         batch_size: int, base_channels: int) -> float:
    """Estimated wall time of a training run on the CPU (see the constants above for how)."""
    voxels = batch_size * patch_size[0] * patch_size[1] * patch_size[2]
    per_iteration = (CPU_SECONDS_PER_ITERATION * voxels / CPU_REFERENCE_VOXELS
                     * (base_channels / CPU_REFERENCE_WIDTH) ** 2)
    return epochs * iterations_per_epoch * per_iteration + cases * PREPROCESS_SECONDS_PER_CASE


def _option(args: Sequence[str], flag: str, count: int = 1):
    """The value(s) of `flag` in a list of extra `train` arguments (None when absent or malformed)."""
    args = [str(a) for a in args]
    if flag not in args:
        return None
    values = args[args.index(flag) + 1:args.index(flag) + 1 + count]
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        return None
    return (numbers[0] if count == 1 else numbers) if len(numbers) == count else None


def training_time_warning(cases: int, device: str = "auto", gpu_found: bool = False, mode: str = "scratch",
                          parent_model_dir: Optional[str | Path] = None, epochs: Optional[int] = None,
                          extra_args: Sequence[str] = ()) -> str:
    """'' when the run will use a CUDA GPU; else a warning with the estimated CPU time of this run."""
    device = str(device or "auto").lower()
    if device.startswith("cuda") or (device == "auto" and gpu_found):
        return ""
    plan = dict(PAPER_PLAN)
    if mode == "finetune" and parent_model_dir:
        try:  # a fine-tuned model keeps its parent's plan: its patch, batch and width are known
            from RCSegNeXtCore.plans import Plans
            parent = Plans.load(Path(parent_model_dir) / "plans.json")
            plan = {"patch_size": list(parent.patch_size), "batch_size": int(parent.batch_size),
                    "base_channels": int(parent.architecture.base_channels)}
        except (RCSegNeXtError, OSError, ValueError, AttributeError):
            pass
    plan["patch_size"] = _option(extra_args, "--patch-size", 3) or plan["patch_size"]
    plan["batch_size"] = _option(extra_args, "--batch-size") or plan["batch_size"]
    plan["base_channels"] = _option(extra_args, "--base-channels") or plan["base_channels"]
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.finetune import FINETUNE_EPOCHS
    epochs = epochs or _option(extra_args, "--epochs") or (FINETUNE_EPOCHS if mode == "finetune"
                                                          else TrainingConfig.epochs)
    iterations = _option(extra_args, "--iterations-per-epoch") or TrainingConfig.iterations_per_epoch
    seconds = cpu_training_seconds(cases, epochs, iterations, plan["patch_size"], plan["batch_size"],
                                   plan["base_channels"])
    where = "on the CPU (device cpu)" if device == "cpu" else "on the CPU: no CUDA GPU was found"
    return (f"Training runs {where}; expect about {runner_module.format_duration(seconds)} for {cases} case(s), "
            f"{epochs} epochs x {iterations} iterations of batch {plan['batch_size']} x patch {plan['patch_size']} "
            f"at width {plan['base_channels']} (estimate: {CPU_SECONDS_PER_ITERATION} s per iteration measured "
            f"for batch 1 x [16, 160, 160] at width 32 on 2 CPU cores, scaled by voxels and width squared, plus "
            f"{PREPROCESS_SECONDS_PER_CASE:.0f} s per case to prepare). For comparison, an NVIDIA H200 "
            "takes 0.21 s per iteration at the paper's batch 2 x [16, 320, 320].")


def _run_name(dataset_dir: Path, mode: str, now: datetime.datetime) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", dataset_dir.name).strip("_-") or "dataset"
    return f"{base}-{'finetune' if mode == 'finetune' else 'scratch'}-{now:%Y%m%d-%H%M%S}"


class TrainingRunController:
    """Runs `python -m RCSegNeXtCore train` for the panel and installs the result (see the module docstring)."""

    def __init__(self, models_root: str | Path, runs_root: Optional[str | Path] = None, python: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None,
                 on_installed: Optional[Callable[[models.InstalledModel], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.models_root = Path(models_root)
        self.runs_root = Path(runs_root) if runs_root else default_runs_root(self.models_root)
        self.python = python
        self.log = log or (lambda line: _LOG.info("[train] %s", line))
        self.on_installed = on_installed
        self.clock = clock
        self.report = TrainingReport()
        self.runDir: Optional[Path] = None  # the current or last run folder (what Resume continues)
        self._runner: Optional[runner_module.SubprocessRunner] = None

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def pid(self) -> Optional[int]:
        """The training process's id while it runs."""
        return self._runner.pid if self._runner is not None else None

    @property
    def canResume(self) -> bool:
        """A stopped run whose folder is still there (Resume continues it, from its last epoch when one finished)."""
        return (not self.running and self.runDir is not None and self.report.state in (CANCELLED, FAILED)
                and (self.runDir / RUN_RECORD).is_file())

    # -- starting ----------------------------------------------------------------------------------------------
    def start(self, datasetDir: str | Path, mode: str = "scratch", parentModelDir: Optional[str | Path] = None,
              fold=None, device: str = "auto", epochs: Optional[int] = None, name: Optional[str] = None,
              extra_args: Sequence[str] = (), warnings: Sequence[str] = ()) -> TrainingReport:
        """Start training a new model on `datasetDir` (mode "scratch"), or fine-tuning `parentModelDir` (its fold
        `fold`, default the core's choice) on it (mode "finetune"), in a new run folder `<runs root>/<name>`.
        Raises (starting nothing) when the input cannot work."""
        if self.running:
            raise RCSegNeXtError("a training run is already running; cancel it first")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        dataset = Path(datasetDir)
        if not (dataset / "dataset.json").is_file():
            raise DatasetError(f"{dataset}: no dataset.json; choose the dataset folder that 'Save as training case' "
                               "writes (imagesTr, labelsTr, dataset.json)")
        parent = None
        if mode == "finetune":
            if not parentModelDir:
                raise ModelError("fine-tuning needs a model: select the model to improve first")
            parent = Path(parentModelDir)
            models.check_model_folder(parent)
        elif parentModelDir or fold is not None:
            raise ValueError("parentModelDir and fold are for mode 'finetune'")
        name = name or _run_name(dataset, mode, datetime.datetime.now())
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise RCSegNeXtError(f"run name '{name}': use letters, digits, '.', '_' and '-' only")
        run_dir = self.runs_root / name
        if run_dir.exists():
            raise RCSegNeXtError(f"{run_dir} already exists; choose another run name, or Resume that run")
        run_dir.mkdir(parents=True)
        record = {"dataset": str(dataset.resolve()), "mode": mode, "parent": str(parent.resolve()) if parent else None,
                  "fold": None if fold is None else str(fold), "device": device, "epochs": epochs,
                  "extra_args": [str(a) for a in extra_args], "name": name}
        from RCSegNeXtCore.files import atomic_write_json
        atomic_write_json(run_dir / RUN_RECORD, record)
        return self._launch(run_dir, record, resume=False, warnings=warnings)

    def resume(self, runDir: Optional[str | Path] = None, warnings: Sequence[str] = ()) -> TrainingReport:
        """Continue a cancelled or failed run (default: the last one) from its last finished epoch; a run stopped
        before its first epoch starts its training again (the prepared cases are reused)."""
        if self.running:
            raise RCSegNeXtError("a training run is already running; cancel it first")
        run_dir = Path(runDir) if runDir else self.runDir
        if run_dir is None:
            raise RCSegNeXtError("no training run to resume: start one with Train")
        try:
            record = json.loads((run_dir / RUN_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise RCSegNeXtError(f"{run_dir}: not a run folder the panel started (no readable {RUN_RECORD}); "
                                 "resume it from a terminal with `train ... --resume`") from None
        # `--resume` continues fold_all/checkpoint_latest.pt, or trains from the start when no epoch finished
        return self._launch(run_dir, record, resume=True, warnings=warnings)

    def _launch(self, run_dir: Path, record: dict, resume: bool, warnings: Sequence[str]) -> TrainingReport:
        command = runner_module.build_train_command(
            self.python or runner_module.find_python_slicer(), record["dataset"], run_dir,
            init_from=record.get("parent"), init_fold=record.get("fold"), device=record.get("device") or "auto",
            epochs=record.get("epochs"), resume=resume, extra_args=record.get("extra_args") or ())
        self._runner = runner_module.SubprocessRunner(command, what="training process").start()
        self.runDir = run_dir
        self.report = TrainingReport(RUNNING, 0.0, "Resuming..." if resume else "Starting...", runDir=str(run_dir),
                                     warnings=list(warnings))
        self.log(" ".join(command))
        return self.report

    # -- running -----------------------------------------------------------------------------------------------
    def poll(self) -> TrainingReport:
        """Take in the child's events (non-blocking); installs the model when the child has finished."""
        if self._runner is not None:
            for event in self._runner.poll():
                self._take(event)
        return self.report

    def cancel(self) -> TrainingReport:
        """Stop the run and its whole process tree; the run folder stays for `resume()`. A run that already
        finished is installed, not cancelled."""
        if self._runner is None:
            return self.report
        self.poll()
        if self._runner is not None:
            self._runner.cancel()
            for event in self._runner.wait(timeout=30):
                self._take(event)
        if self._runner is not None:  # not reaped within 30 s: report it stopped anyway
            self._finish(runner_module.FinishedEvent(-1, True, "cancelled"))
        return self.report

    def wait(self, timeout: Optional[float] = None, idle: Optional[Callable[[], None]] = None,
             interval: float = 0.1) -> TrainingReport:
        """Poll until the run ends (scripts, tests, the self-test); after `timeout` s it is cancelled and reported
        as failed (the folder stays for `resume()`)."""
        return poll_until_done(self, "training", timeout, idle, interval)

    # -- events ------------------------------------------------------------------------------------------------
    def _take(self, event) -> None:
        report = self.report
        if isinstance(event, runner_module.ProgressEvent):
            if event.stage == "train":
                report.epochs.append(event)
                report.fraction = event.fraction
            elif event.stage == "done":
                report.fraction = 1.0
            report.status = stage_text(event)
        elif isinstance(event, runner_module.LogEvent):
            if event.line.strip():
                report.log.append(event.line)
                self.log(event.line)
        elif isinstance(event, runner_module.FinishedEvent):
            self._finish(event)

    def _finish(self, event: runner_module.FinishedEvent) -> None:
        report = self.report
        self._runner = None
        resumable = (self.runDir / RESUME_CHECKPOINT).is_file() if self.runDir else False
        where = "from its last finished epoch" if resumable else "(it starts training again)"
        if event.cancelled:
            report.state = CANCELLED
            report.status = f"Cancelled. The run folder is kept: Resume continues it {where}."
            return
        if event.returncode != 0:
            lines = event.message.splitlines()
            cause = lines[1].strip() if len(lines) > 1 else ""  # the child's error line comes first in the tail
            report.state, report.message = FAILED, event.message
            report.status = (f"Training failed{': ' + cause if cause else ''}. The run folder is kept: after fixing "
                             f"the cause, Resume continues it {where}.")
            return
        try:
            model = models.install_model(self.runDir, self.models_root, name=self._free_name(self.runDir.name),
                                         training_run=True)
        except (RCSegNeXtError, OSError, ValueError) as exc:
            report.state, report.status = FAILED, "Training finished, but the model could not be installed."
            report.message = (f"{exc}. The run folder {self.runDir} is a model folder: install it with 'Install "
                              "folder...'")
            return
        report.state, report.fraction, report.model = DONE, 1.0, model
        report.status = f"Done: installed model '{model.name}'."
        if self.on_installed is not None:
            self.on_installed(model)
            report.status = f"Done: installed and selected model '{model.name}'."

    def _free_name(self, name: str) -> str:
        """The run's name, or with _2, _3, ... when a model of that name is installed already."""
        taken = {m.name for m in models.list_models(self.models_root)}
        candidate, n = name, 1
        while candidate in taken or (self.models_root / candidate).exists():
            n += 1
            candidate = f"{name}_{n}"
        return candidate
