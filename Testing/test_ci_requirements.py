"""The CI switch: with RCSEGNEXT_REQUIRE_ALL=1 (set by .ci/run) a missing test requirement (slicer-core, slicerio,
MONAI, ../shared ...) fails the test; without it the test is skipped, as on a developer's machine."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REQUIRE_ALL_ENV

TESTING = Path(__file__).resolve().parent

GENERATED = {
    "test_needs.py": """
        from conftest import require_module, require_path

        def test_real_data(real_data):
            assert real_data.is_dir()

        def test_module():
            require_module("rcsegnext_no_such_module", "no-such-package")

        def test_path(tmp_path):
            require_path(tmp_path / "absent", "reference folder")

        def test_plain():
            pass
    """,
    "test_module_level.py": """
        from conftest import require_module

        slicer = require_module("rcsegnext_no_such_module", "slicer-core")

        def test_uses_it():
            pass
    """,
}


def _run_pytest(folder: Path, require: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ALL_ENV}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTING), env.get("PYTHONPATH", "")]),
               RCSEGNEXT_REAL_DATA=str(folder / "no_real_data_here"))
    if require is not None:
        env[REQUIRE_ALL_ENV] = require
    # -p conftest: Testing/conftest.py as a plugin (its real_data fixture) for test files outside Testing/
    cmd = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA", "-q",
           "--continue-on-collection-errors", "--rootdir", str(folder), str(folder)]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=120)


def _outcomes(output: str) -> dict:
    """{test (or module) name: PASSED | FAILED | ERROR} from pytest's -rA short summary."""
    found = {}
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR"):
            found[rest.split(" - ")[0].strip().split("::")[-1]] = word
    return found


@pytest.mark.slow
def test_missing_requirements_skip_locally_and_fail_in_ci(tmp_path):
    for name, text in GENERATED.items():
        (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")

    for local in (None, "0"):
        result = _run_pytest(tmp_path, local)
        assert result.returncode == 0, result.stdout[-3000:]
        assert "1 passed, 4 skipped" in result.stdout, result.stdout[-3000:]
        assert "real MRI folder" in result.stdout and "rcsegnext_no_such_module" in result.stdout

    result = _run_pytest(tmp_path, "1")
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    assert "skipped" not in out.splitlines()[-1], out[-3000:]
    outcomes = _outcomes(out)
    assert outcomes.get("test_plain") == "PASSED", outcomes
    assert outcomes.get("test_module") == "FAILED" and outcomes.get("test_path") == "FAILED", outcomes
    assert outcomes.get("test_real_data") == "ERROR", outcomes          # the fixture fails at set-up
    assert outcomes.get("test_module_level.py") == "ERROR", outcomes    # a module-level import fails collection
    assert out.count(f"[{REQUIRE_ALL_ENV}=1: required, not skipped]") >= 4, out[-3000:]
    assert "install no-such-package" in out and "reference folder" in out and "real MRI folder" in out
