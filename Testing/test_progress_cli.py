"""Progress bar output and the CLI dispatcher."""
import io
import re
import subprocess
import sys
import time

from RCSegNeXtCore.cli import main
from RCSegNeXtCore.progress import ProgressBar, format_seconds


def test_progress_bar_logs_a_few_lines_when_not_a_terminal():
    stream = io.StringIO()
    with ProgressBar(100, "work", stream=stream) as bar:
        for _ in range(100):
            bar.update(1, loss=0.5)
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 12
    assert lines[-1].startswith("work: 100%") and "100/100" in lines[-1] and "loss=0.5" in lines[-1]


def _rate(line: str) -> float:
    """Passes per second in a tqdm line ('2.50pass/s' or '0.40s/pass')."""
    found = re.search(r"([0-9.]+)(s/pass|pass/s)", line)
    assert found, line
    value = float(found.group(1))
    return value if found.group(2) == "pass/s" else 1.0 / value


def test_progress_bar_rate_counts_from_when_the_work_began():
    stream = io.StringIO()
    began = time.perf_counter() - 2.0  # the first of 4 passes took 2 s before the bar learnt the total
    bar = ProgressBar(4, "predict", stream=stream, unit="pass", start=began)
    bar.update(1)
    line = stream.getvalue().splitlines()[-1]
    assert 0.3 < _rate(line) < 0.55 and "1/4" in line
    assert re.search(r"<00:0[5-6]", line), line  # ETA: 3 passes at ~2 s


def test_tile_progress_bar_starts_when_preprocessing_ends(capsys):
    """The CLI's bar over one case's forward passes is made at the first pass's end (the total is known only
    then) but times from the end of preprocessing: the first line shows the real rate, not thousands per s."""
    from RCSegNeXtCore.inference.runner import JsonProgress, _tile_progress
    on_progress = _tile_progress(JsonProgress(enabled=False), "case", 0, 1, bar=True)
    on_progress("preprocess", 0, 1)
    on_progress("preprocess", 1, 1)
    time.sleep(0.4)
    on_progress("predict", 1, 4)
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("predict case:") and _rate(first) < 5, first


def test_format_seconds():
    assert format_seconds(61) == "01:01" and format_seconds(3725) == "1:02:05"


def test_cli_help_and_version(capsys):
    assert main([]) == 1
    out = subprocess.run([sys.executable, "-m", "RCSegNeXtCore", "--version"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert out.returncode == 0 and out.stdout.startswith("rcsegnext ")
