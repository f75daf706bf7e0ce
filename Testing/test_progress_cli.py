"""Progress bar output and the CLI dispatcher."""
import io
import subprocess
import sys

from RCSegNeXtCore.cli import main
from RCSegNeXtCore.progress import ProgressBar, format_seconds


def test_progress_bar_logs_a_few_lines_when_not_a_terminal():
    stream = io.StringIO()
    with ProgressBar(100, "work", stream=stream) as bar:
        for _ in range(100):
            bar.update(1, loss=0.5)
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 12
    assert lines[-1].startswith("work [") and "100/100" in lines[-1] and "loss=0.5" in lines[-1]


def test_format_seconds():
    assert format_seconds(61) == "01:01" and format_seconds(3725) == "1:02:05"


def test_cli_help_and_version(capsys):
    assert main([]) == 1
    out = subprocess.run([sys.executable, "-m", "RCSegNeXtCore", "--version"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert out.returncode == 0 and out.stdout.startswith("rcsegnext ")
