"""The progress bar of every long loop: tqdm on a terminal, a few plain lines (tqdm's format) when logged to a file.

Rate and ETA are the average since the work began (`start`), so they are right from the first update on: a bar
made only when the first of several slow steps has finished (as the predictor's tile callback does) is given the
time its work started, instead of reporting that step as done in no time.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from tqdm import tqdm


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """`with ProgressBar(total, "preprocess") as bar: bar.update(1, loss=0.3)`.

    On a terminal it is a tqdm bar (one line, redrawn); otherwise (CI, log files, a GUI reading stderr) it prints at
    most ~10 lines per bar, in tqdm's format with an ASCII bar. `start`: `time.perf_counter()` when the work began
    (default: now).
    """

    def __init__(self, total: int, description: str = "", stream: Optional[TextIO] = None,
                 enabled: bool = True, unit: str = "it", start: Optional[float] = None):
        self.total = max(int(total), 0)
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.unit = unit
        self.count = 0
        self.postfix = ""
        self.start = time.perf_counter() if start is None else float(start)
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_logged_tenth = -1
        self._bar: Optional[tqdm] = None
        if enabled and self._interactive:
            # smoothing=0: the average rate since the start (tile and iteration times are even; no jumpy ETA)
            self._bar = tqdm(total=self.total or None, desc=description, file=self.stream, unit=unit,
                             dynamic_ncols=True, mininterval=0.1, smoothing=0, leave=True)
            already = time.perf_counter() - self.start  # tqdm's clock is time.time; shift its start by as much
            self._bar.start_t -= already
            self._bar.last_print_t -= already
            self._bar.refresh()

    def update(self, n: int = 1, **postfix) -> None:
        self.count += n
        if postfix:
            self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in postfix.items())
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.update(n)
            return
        self._log()

    def line(self) -> str:
        """The bar as one plain line: description, percentage, count, elapsed < ETA, average rate, postfix."""
        return tqdm.format_meter(self.count, self.total or None, time.perf_counter() - self.start,
                                 prefix=self.description, unit=self.unit, ascii=True, ncols=None,
                                 postfix=self.postfix or None)

    def _log(self, final: bool = False) -> None:
        if not self.enabled:
            return
        tenth = int(10 * self.count / self.total) if self.total else 10
        if final or tenth > self._last_logged_tenth:
            self._last_logged_tenth = tenth
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.count and self._last_logged_tenth < 10:
            self._log(final=True)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
