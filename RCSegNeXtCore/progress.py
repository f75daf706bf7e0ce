"""A small progress bar (no tqdm dependency): live on a terminal, a few plain lines when logged to a file."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """`with ProgressBar(total, "preprocess") as bar: bar.update(1, loss=0.3)`.

    On a terminal it redraws one line; otherwise (CI, log files) it prints at most ~10 lines per bar.
    """

    def __init__(self, total: int, description: str = "", stream: Optional[TextIO] = None,
                 enabled: bool = True, unit: str = "it"):
        self.total = max(int(total), 0)
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.unit = unit
        self.count = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_logged_tenth = -1

    def update(self, n: int = 1, **postfix) -> None:
        self.count += n
        if postfix:
            self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in postfix.items())
        self._draw()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 and self.total else 0.0
        width = 24
        filled = int(width * self.count / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        return (f"{self.description} [{bar}] {self.count}/{self.total} "
                f"[{format_seconds(elapsed)}<{format_seconds(eta)}, {rate:.2f} {self.unit}/s] {self.postfix}").rstrip()

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._interactive:
            if final or now - self._last_draw > 0.1:
                self.stream.write("\r" + self.line() + ("\n" if final else ""))
                self.stream.flush()
                self._last_draw = now
            return
        tenth = int(10 * self.count / self.total) if self.total else 10
        if final or tenth > self._last_logged_tenth:
            self._last_logged_tenth = tenth
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._interactive:
            self._draw(final=True)
        elif self.enabled and self.count and self._last_logged_tenth < 10:
            self._draw(final=True)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
