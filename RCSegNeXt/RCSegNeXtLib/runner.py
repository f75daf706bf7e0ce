"""Run prediction or training in a separate Python process (Slicer's `PythonSlicer`) and follow its progress.
Qt-free.

Why a process: the GUI never freezes, a crash or out-of-memory error cannot take Slicer down, and GPU memory is
freed when it ends (as the established AI extensions do). The child prints one JSON object per progress step on
stdout (`--progress-json`); other lines are log text. Prediction (schema in RCSegNeXtCore/inference/runner.py):
stage, case, done, total (cases) and, while predicting, tiles_done/tiles_total (forward passes). Training
(`train --progress-json`): plan, preprocess (done/total cases), one `train` line per epoch (epoch, epochs, loss,
val_loss, pseudo_dice, eta_s), validate, export, done (model), error (message). The child runs in its own
session / process group, so Cancel kills the whole tree (the process, its workers and anything they started).

    runner = SubprocessRunner(build_predict_command(python, "in.nrrd", "out.nii.gz", model_dir))
    runner.start()
    while runner.running: for event in runner.poll(): ...   # the Widget polls from a QTimer
"""
from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, List, Optional, Sequence, Union

PREDICT_MODULE = "RCSegNeXtCore"  # `python -m RCSegNeXtCore predict ...` = `rcsegnext predict ...`


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h', '2.1 days': the panel's time-left wording."""
    if seconds < 90:
        return f"{max(1, int(round(seconds)))} s"
    if seconds < 90 * 60:
        return f"{int(round(seconds / 60))} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass
class ProgressEvent:
    """One `--progress-json` line: stage (prediction: preprocess / predict / export / error / done; training: plan /
    preprocess / train / validate / export / error / done), case, done/total (cases; epochs while training), and
    forward passes (tiles) done/total of the current case while predicting. Other fields stay in `raw`."""

    stage: str
    done: int
    total: int
    case: str = ""
    tiles_done: int = 0
    tiles_total: int = 0
    raw: Dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]: finished cases plus the tile fraction of the current one."""
        if self.total <= 0:
            return 0.0
        within = self.tiles_done / self.tiles_total if self.tiles_total > 0 and self.stage == "predict" else 0.0
        return min(1.0, max(0.0, (self.done + within) / self.total))

    @property
    def text(self) -> str:
        if self.stage == "predict" and self.tiles_total:
            return f"predicting: tile {self.tiles_done}/{self.tiles_total}"
        if self.stage == "train":
            return training_text(self.raw, self.done, self.total)
        if self.stage == "error":
            return f"error: {self.raw.get('message', '')}"
        return f"{self.stage}: {self.done}/{self.total} case(s)"


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN (e.g. a class absent from every patch): not shown


def training_text(raw: Dict, done: int, total: int) -> str:
    """'epoch 3/25, loss 0.41, pseudo-Dice rectum 0.80 tumour 0.55, about 4 min left' from a `train` line."""
    parts = [f"epoch {int(raw.get('epoch') or done)}/{int(raw.get('epochs') or total)}"]
    loss, val_loss = _number(raw.get("loss")), _number(raw.get("val_loss"))
    if loss is not None:
        parts.append(f"loss {loss:.2f}")
    if val_loss is not None:
        parts.append(f"validation loss {val_loss:.2f}")
    dice = raw.get("pseudo_dice")
    if isinstance(dice, dict):
        scores = [f"{name} {_number(value):.2f}" for name, value in dice.items() if _number(value) is not None]
        if scores:
            parts.append("pseudo-Dice " + " ".join(scores))
    eta = _number(raw.get("eta_s"))
    if eta is not None and eta > 0:
        parts.append(f"about {format_duration(eta)} left")
    return ", ".join(parts)


@dataclass
class LogEvent:
    line: str
    stream: str = "stdout"


@dataclass
class FinishedEvent:
    returncode: int
    cancelled: bool
    message: str  # "" on success; otherwise what went wrong, with the tail of stderr


Event = Union[ProgressEvent, LogEvent, FinishedEvent]


def parse_progress_line(line: str) -> Optional[ProgressEvent]:
    """A ProgressEvent for a JSON progress line, None for any other text (log lines, partial lines, bad JSON)."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "stage" not in data:
        return None
    try:
        counts = [int(data.get(key) or 0) for key in ("done", "total", "tiles_done", "tiles_total")]
    except (TypeError, ValueError):
        return None
    return ProgressEvent(str(data["stage"]), counts[0], counts[1], str(data.get("case") or ""), counts[2],
                         counts[3], data)


def find_python_slicer() -> str:
    """Slicer's `PythonSlicer` next to the running interpreter (inside Slicer), else on PATH, else this Python."""
    here = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (here / name).is_file():
            return str(here / name)
    return shutil.which("PythonSlicer") or sys.executable


def core_search_path() -> str:
    """The folder that holds the RCSegNeXtCore package (it ships inside the extension, not in site-packages)."""
    import RCSegNeXtCore
    return str(Path(RCSegNeXtCore.__file__).resolve().parent.parent)


def build_predict_command(python: str, input_path: str | os.PathLike, output_path: str | os.PathLike,
                          model_dir: str | os.PathLike, device: str = "auto", tta: bool = False,
                          folds: Optional[Sequence[int]] = None, module: str = PREDICT_MODULE,
                          backend: str = "auto", uncertainty: bool = False) -> List[str]:
    """`PythonSlicer -m RCSegNeXtCore predict -i IN -o OUT -m MODEL --device D --backend B [--tta] [--folds ..]
    [--uncertainty] --progress-json`. `uncertainty`: also the review map OUT's CASE_uncertainty file and the per-case
    score in the "export" progress line."""
    command = [str(python), "-m", module, "predict", "-i", str(input_path), "-o", str(output_path), "-m", str(model_dir),
               "--device", str(device), "--backend", str(backend or "auto")]
    if tta:
        command.append("--tta")
    if folds:
        command += ["--folds", *[str(int(f)) for f in folds]]
    if uncertainty:
        command.append("--uncertainty")
    return command + ["--progress-json"]


def build_train_command(python: str, dataset_dir: str | os.PathLike, run_dir: str | os.PathLike,
                        init_from: Optional[str | os.PathLike] = None, init_fold: Optional[object] = None,
                        device: str = "auto", epochs: Optional[int] = None, resume: bool = False,
                        extra_args: Sequence[str] = (), module: str = PREDICT_MODULE) -> List[str]:
    """`PythonSlicer -m RCSegNeXtCore train DATASET -o RUN --fold all [--init-from MODEL [--init-fold K]] [--resume]
    [--epochs N] --device D [extra_args] --progress-json`: every case trains one model (the panel's model has no
    held-out fold). `extra_args`: further `train` options (scripts, tests)."""
    command = [str(python), "-m", module, "train", str(dataset_dir), "-o", str(run_dir), "--fold", "all"]
    if init_from:
        command += ["--init-from", str(init_from)]
        if init_fold is not None:
            command += ["--init-fold", str(init_fold)]
    elif init_fold is not None:
        raise ValueError("init_fold needs init_from (the model whose fold is fine-tuned)")
    if resume:
        command.append("--resume")
    if epochs:
        command += ["--epochs", str(int(epochs))]
    command += ["--device", str(device or "auto"), *[str(a) for a in extra_args]]
    return command + ["--progress-json"]


def child_environment(extra_path: Optional[str] = None) -> Dict[str, str]:
    """This process's environment + the core on PYTHONPATH + unbuffered output (progress arrives live)."""
    env = dict(os.environ)
    path = extra_path or core_search_path()
    env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"  # Slicer runs with the C locale; progress lines are UTF-8
    return env


def _descendants(pid: int) -> List[int]:
    """All descendant PIDs of `pid` (Linux /proc; empty elsewhere), children first."""
    children: Dict[int, List[int]] = collections.defaultdict(list)
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                stat = handle.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children[ppid].append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class SubprocessRunner:
    """Start a command in its own process group, stream its progress, cancel it with its whole process tree."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str | os.PathLike] = None, stderr_lines: int = 40, what: str = "segmentation process"):
        self.command = [str(c) for c in command]
        self.what = what  # names the child in failure messages ("training process failed with ...")
        self.env = env if env is not None else child_environment()
        self.cwd = str(cwd) if cwd else None
        self.process: Optional[subprocess.Popen] = None
        self.cancelled = False
        self._events: "queue.Queue[Event]" = queue.Queue()
        self._stderr: Deque[str] = collections.deque(maxlen=stderr_lines)
        self._errors: List[str] = []  # messages of "error" progress lines (a case the child could not segment)
        self._threads: List[threading.Thread] = []
        self._finished = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "SubprocessRunner":
        if self.process is not None:
            raise RuntimeError("runner already started; make a new SubprocessRunner for another run")
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own session and process group: killpg reaches the whole tree
        try:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd, text=True,
                                            encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as exc:
            self._finished = True
            self._events.put(FinishedEvent(-1, False, f"cannot start {self.command[0]}: {exc}"))
            return self
        for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            thread = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, stream, name: str) -> None:
        for line in iter(stream.readline, ""):
            line = line.rstrip("\r\n")
            event = parse_progress_line(line) if name == "stdout" else None
            if name == "stderr" and line.strip():
                self._stderr.append(line)
            if event is not None and event.stage == "error":
                message = str(event.raw.get("message", ""))
                self._errors.append(f"{event.case}: {message}" if event.case else message)
            self._events.put(event or LogEvent(line, name))
        stream.close()

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self) -> List[Event]:
        """Every event since the last call (non-blocking); the last one is a FinishedEvent once the child ended."""
        events: List[Event] = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        if not self._finished and self.process is not None and self.process.poll() is not None:
            for thread in self._threads:
                thread.join(timeout=2.0)  # drain the pipes so no line is lost
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            self._finished = True
            events.append(self._finished_event())
        return events

    def _finished_event(self) -> FinishedEvent:
        code = self.process.returncode
        if self.cancelled:
            return FinishedEvent(code, True, "cancelled")
        if code == 0:
            return FinishedEvent(0, False, "")
        tail = "\n".join(self._errors + list(self._stderr)) or "(no error output)"
        if code < 0:
            reason = f"was killed by signal {-code}"
            if -code == getattr(signal, "SIGKILL", 9):
                reason += " (often: out of memory; try the CPU, no TTA, or close other programs)"
        elif code == 2:
            reason = "refused the input or model (exit status 2)"
        else:
            reason = f"failed with exit status {code}"
        return FinishedEvent(code, False, f"{self.what} {reason}:\n{tail}")

    def wait(self, timeout: Optional[float] = None) -> List[Event]:
        """Block until the child ends (or `timeout` s); returns all events (for scripts and tests). On a timeout the
        child keeps running (no FinishedEvent yet): call `cancel()` to stop it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: List[Event] = []
        while not self._finished:
            events += self.poll()
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return events + self.poll()

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the child and everything it started: SIGTERM to the process group, SIGKILL after `grace_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.cancelled = True
        pid = self.process.pid
        if os.name == "nt":
            # no console window flashes up: taskkill is a console program started from a GUI process
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            self.process.wait(timeout=30)
            return
        tree = _descendants(pid)  # also those that left the process group (e.g. their own setsid)
        self._signal(pid, tree, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self._signal(pid, tree + _descendants(pid), signal.SIGKILL)
        self.process.wait(timeout=30)

    @staticmethod
    def _signal(pid: int, tree: List[int], sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for child in tree:
            try:
                os.kill(child, sig)
            except (ProcessLookupError, PermissionError):
                pass
