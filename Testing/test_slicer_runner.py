"""RCSegNeXtLib.runner: the Qt-free PythonSlicer subprocess runner (progress parsing, errors, Cancel kills the tree)."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from slicer_headless import module_on_path

module_on_path()
from RCSegNeXtLib.runner import (FinishedEvent, LogEvent, ProgressEvent, SubprocessRunner,  # noqa: E402
                                 build_predict_command, child_environment, parse_progress_line)

posix_only = pytest.mark.skipif(os.name == "nt", reason="process-group semantics tested on POSIX")


def test_parse_progress_lines_of_the_predict_schema():
    e = parse_progress_line('{"stage": "predict", "case": "input", "done": 0, "total": 2, "tiles_done": 3, '
                            '"tiles_total": 12}')
    assert (e.stage, e.case, e.done, e.total, e.tiles_done, e.tiles_total) == ("predict", "input", 0, 2, 3, 12)
    assert e.fraction == pytest.approx((0 + 3 / 12) / 2) and e.text == "predicting: tile 3/12"
    done = parse_progress_line('{"stage": "done", "case": null, "done": 2, "total": 2, "written": ["a", "b"]}')
    assert done.case == "" and done.fraction == 1.0 and done.raw["written"] == ["a", "b"]
    error = parse_progress_line('{"stage": "error", "case": "x", "done": 0, "total": 1, "message": "bad file"}')
    assert error.text == "error: bad file" and error.fraction == 0.0
    for junk in ["", "loading model", "{not json}", '{"done": 1}', "[1, 2]", '{"stage": "x", "done": "a"}',
                 '{"stage": "predict", "done": 1', "  "]:
        assert parse_progress_line(junk) is None, junk


def test_predict_command_is_accepted_by_the_core_cli():
    """The command the GUI builds parses with `rcsegnext predict`'s real argument parser."""
    from RCSegNeXtCore.cli import build_parser
    command = build_predict_command("/opt/Slicer/bin/PythonSlicer", "in.nrrd", "out.nrrd", "/models/m", "cuda",
                                    tta=True, folds=[0, 2])
    assert command[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "RCSegNeXtCore", "predict"]
    args = build_parser().parse_args(command[3:])
    assert (args.input, args.output, args.model, args.device) == ("in.nrrd", "out.nrrd", "/models/m", "cuda")
    from RCSegNeXtCore.inference.model_folder import parse_fold
    assert args.tta and [parse_fold(f) for f in args.folds] == [0, 2] and args.progress_json
    plain = build_parser().parse_args(build_predict_command("py", "i", "o", "m")[3:])
    assert not plain.tta and plain.folds is None and plain.device == "auto"


def test_python_slicer_is_found_next_to_the_interpreter_or_on_path(tmp_path, monkeypatch):
    from RCSegNeXtLib import runner
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runner.find_python_slicer() == sys.executable  # outside Slicer: this Python stands in
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "PythonSlicer").write_text("#!/bin/sh\n", encoding="utf-8")
    (fake_bin / "PythonSlicer").chmod(0o755)
    monkeypatch.setattr(runner.sys, "executable", str(fake_bin / "SlicerApp-real"))
    assert runner.find_python_slicer() == str(fake_bin / "PythonSlicer")


def run_python(code: str, **kwargs) -> SubprocessRunner:
    return SubprocessRunner([sys.executable, "-c", textwrap.dedent(code)], **kwargs).start()


def test_runner_streams_progress_and_reports_success():
    runner = run_python("""
        import json
        print("loading model")
        for i in range(3):
            print(json.dumps({"stage": "predict", "case": "c", "done": 0, "total": 1, "tiles_done": i + 1,
                              "tiles_total": 3}), flush=True)
        print(json.dumps({"stage": "done", "case": None, "done": 1, "total": 1}))
    """)
    events = runner.wait(timeout=60)
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert [e.tiles_done for e in progress[:3]] == [1, 2, 3] and progress[-1].stage == "done"
    assert any(isinstance(e, LogEvent) and e.line == "loading model" for e in events)
    assert isinstance(events[-1], FinishedEvent) and events[-1] == FinishedEvent(0, False, "")
    assert runner.poll() == []  # finished exactly once


def test_runner_reports_failures_with_the_error_output():
    runner = run_python("""
        import json, sys
        print(json.dumps({"stage": "error", "case": "input", "done": 0, "total": 1, "message": "cannot read"}))
        print("Traceback: something broke", file=sys.stderr)
        sys.exit(3)
    """)
    finished = runner.wait(timeout=60)[-1]
    assert finished.returncode == 3 and not finished.cancelled
    assert "exit status 3" in finished.message and "something broke" in finished.message
    assert "input: cannot read" in finished.message
    refused = run_python("import sys; print('rcsegnext predict: error: no plans.json', file=sys.stderr); "
                         "sys.exit(2)").wait(timeout=60)[-1]
    assert "refused the input or model" in refused.message and "no plans.json" in refused.message


def test_runner_reports_a_command_that_cannot_start(tmp_path):
    runner = SubprocessRunner([str(tmp_path / "no-such-PythonSlicer")]).start()
    finished = runner.wait(timeout=5)[-1]
    assert finished.returncode == -1 and "cannot start" in finished.message


def test_child_environment_makes_the_shipped_core_importable(tmp_path):
    """In Slicer the core sits in the extension's folder, not site-packages: the runner puts it on PYTHONPATH."""
    import RCSegNeXtCore
    env = child_environment()
    env.pop("PYTHONHOME", None)
    runner = SubprocessRunner([sys.executable, "-S", "-c", "import sys, RCSegNeXtCore; print(RCSegNeXtCore.__file__)"],
                              env=env, cwd=tmp_path).start()
    events = runner.wait(timeout=60)
    lines = [e.line for e in events if isinstance(e, LogEvent) and e.stream == "stdout"]
    assert events[-1].returncode == 0, events[-1].message
    assert os.path.samefile(lines[-1], RCSegNeXtCore.__file__)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead (awaiting its reaper)
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


TREE = """
    import json, os, signal, subprocess, sys, time
    {ignore}
    sleeper = [sys.executable, "-c", "import signal, time; {ignore}; time.sleep(120)"]
    same_group = subprocess.Popen(sleeper)
    own_session = subprocess.Popen(sleeper, start_new_session=True)   # left the process group on purpose
    print(json.dumps({{"stage": "pids", "done": 0, "total": 1, "pids": [same_group.pid, own_session.pid]}}), flush=True)
    time.sleep(120)
"""


@posix_only
@pytest.mark.parametrize("ignore_term", [False, True])
def test_cancel_kills_the_whole_process_tree(ignore_term):
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_term else "pass"
    runner = run_python(TREE.format(ignore=ignore))
    pids, deadline = None, time.monotonic() + 60
    while pids is None and time.monotonic() < deadline:
        for event in runner.poll():
            if isinstance(event, ProgressEvent) and event.stage == "pids":
                pids = event.raw["pids"]
        time.sleep(0.05)
    assert pids, "the dummy process tree did not start"
    tree = [runner.pid, *pids]
    try:
        time.sleep(0.3)  # let the sleepers install their signal handlers
        assert all(alive(p) for p in tree)
        start = time.monotonic()
        runner.cancel(grace_s=1.0)
        for _ in range(50):
            if not any(alive(p) for p in tree):
                break
            time.sleep(0.1)
        assert [p for p in tree if alive(p)] == []
        assert time.monotonic() - start < 10
    finally:  # never leave the dummy sleepers behind, even when the test fails
        for pid in tree:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    finished = runner.wait(timeout=5)[-1]
    assert isinstance(finished, FinishedEvent) and finished.cancelled and finished.message == "cancelled"
    assert not runner.running


@pytest.mark.slow
def test_progress_json_lines_from_the_real_predict_module(tmp_path):
    """The real `python -m RCSegNeXtCore predict --progress-json` output parses into progress events: a bad input
    gives an 'error' line and a non-zero exit that the runner reports."""
    from RCSegNeXtCore.planning import make_plans_from_values
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    model = init_model_folder(make_plans_from_values([5.0, 5.0, 5.0], [16, 32, 32], base_channels=4), tmp_path / "m")
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n" + b"\0" * 10)
    runner = SubprocessRunner(build_predict_command(sys.executable, broken, tmp_path / "out.nrrd", model, "cpu"))
    try:
        events = runner.start().wait(timeout=120)
    finally:
        runner.cancel()  # no-op when it finished
    stages = [e.stage for e in events if isinstance(e, ProgressEvent)]
    finished = events[-1]
    assert finished.returncode != 0 and not finished.cancelled
    assert "error" in stages and "broken" in finished.message, (stages, finished.message)
    json.dumps([e.raw for e in events if isinstance(e, ProgressEvent)])  # the raw lines stay JSON-able
