"""`train --progress-json`: one JSON object per line on stdout, flushed, for a GUI (the Slicer module) to parse.

Lines, in order (a GUI keeps exactly these keys):
  {"stage": "plan"}
  {"stage": "preprocess", "done": I, "total": N}          at the start (I = 0) and the end (I = N) of preprocessing
  {"stage": "train", "fold": "all" | K, "epoch": E, "epochs": N, "done": E, "total": N, "loss": L,
   "val_loss": V | null, "pseudo_dice": {CLASS: D, ...}, "seconds": S, "eta_s": T}       after every epoch
  {"stage": "validate", "fold": K}                        the held-out prediction of fold K starts
  {"stage": "export"}                                     a fold's ONNX export starts
  {"stage": "done", "model": RUN, "done": N, "total": N}
  {"stage": "error", "message": TEXT}                     then a non-zero exit (2 for a refused input)
E is 1-based; N is the number of epochs the fold trains (fewer than asked when a time budget shortens the run);
"pseudo_dice" comes from the held-out cases, for fold "all" from its training cases (empty with
--val-iterations 0), and T is the time left for this fold at the median
epoch time so far. A value that is not a finite number is null. While the lines are written, everything else the
run prints (log lines, progress bars, notes) goes to stderr (`json_stdout`), so stdout stays parseable.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Any, Iterator, Optional, TextIO


def _finite(value: Any) -> Any:
    """float NaN / inf -> None (strict JSON parsers refuse NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrainingEvents:
    """Writes the lines of this module's docstring to `stream` (default stdout); does nothing when disabled."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.last_total: Optional[int] = None     # N of the latest "train" line (the "done" line repeats it)

    def emit(self, stage: str, **fields: Any) -> None:
        if not self.enabled:
            return
        stream = self.stream if self.stream is not None else sys.stdout
        line = {"stage": stage, **{k: _finite(v) for k, v in fields.items()}}
        stream.write(json.dumps(line, allow_nan=False) + "\n")
        stream.flush()

    def epoch_hook(self, trainer, fold):
        """A `Trainer.fit(on_epoch_end=...)` hook writing the "train" line of each epoch."""
        import numpy as np

        def on_epoch_end(epoch: int, record: dict) -> None:
            budget = trainer.budget
            done, total = int(record["epoch"]), int(budget.epochs)
            self.last_total = total
            eta = float(np.median(budget.epoch_times)) * max(0, total - done) if budget.epoch_times else None
            dice = {k[len("dice_"):]: _finite(float(v)) for k, v in record.items() if k.startswith("dice_")}
            self.emit("train", fold=fold, epoch=done, epochs=total, done=done, total=total,
                      loss=float(record["train_loss"]), val_loss=record.get("val_loss"), pseudo_dice=dice,
                      seconds=float(record["seconds"]), eta_s=eta)
        return on_epoch_end

    def error(self, exc: BaseException) -> None:
        """The "error" line for an exception that ends the run."""
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        elif isinstance(exc, ModuleNotFoundError) and exc.name == "torch":
            message = "this needs PyTorch, which is not installed: pip install torch"
        else:
            from RCSegNeXtCore.errors import first_line
            message = first_line(exc) or type(exc).__name__
        self.emit("error", message=message)


@contextlib.contextmanager
def json_stdout() -> Iterator[TextIO]:
    """A stream on the process's stdout for the JSON lines only; inside the block everything else written to stdout
    goes to stderr: Python's prints, and, when stdout is a real file descriptor, what libraries and child processes
    write to descriptor 1 as well."""
    sys.stdout.flush()
    try:
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):    # a captured stream (tests): Python's level only
        original = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            yield original
        return
    saved = os.dup(out_fd)
    stream = os.fdopen(saved, "w", encoding="utf-8", buffering=1)
    os.dup2(err_fd, out_fd)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield stream
    finally:
        sys.stdout.flush()
        stream.flush()
        os.dup2(saved, out_fd)
        stream.close()
