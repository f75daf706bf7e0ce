"""The reference environments of the parity benchmarks, each a virtual environment of its own with torch pinned to
the version of the environment that runs this (a constraints file: unpinned, pip would pull a 6 GB CUDA build of a
newer torch) and this repository's core installed editable; nnunetv2 and batchgenerators stay out of the runtime and
test dependencies.

- "2.1.2" (benchmarks/.parity-env/): nnunetv2 2.1.2 and batchgenerators 0.25.5 (what nnunetv2 2.1.2 installs; the
  official RCSegNeXt trainer's v1 transforms): the pipeline the paper's numbers come from. Every part runs here.
- "latest" (benchmarks/.parity-env-latest/): the newest nnunetv2 release on PyPI (pinned below), for the inference
  check against nnUNetPredictor as shipped today (2.1.2's predictor has two numerical defects later releases fixed;
  docs/nnunet_parity.md).

    from benchmarks.parity import environment
    python = environment.ensure()                    # created once (git-ignored; ~2 GB, minutes)
    python = environment.ensure(reference="latest")
    result = environment.run("benchmarks.parity.augmentation", ["--draws", "10000"])   # its --json output, parsed

`RCSEGNEXT_PARITY_ENV` / `RCSEGNEXT_PARITY_ENV_LATEST=/path/to/venv` (or `ensure(folder=...)`) use other folders;
an existing environment is reused when its record (parity-env.json: the pinned packages and torch) matches.

    python -m benchmarks.parity.environment [--reference latest]   # create / check one and print its python
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "benchmarks" / ".parity-env"
# reference -> (default folder, environment variable naming another, pinned packages)
REFERENCES = {
    "2.1.2": (DEFAULT_DIR, "RCSEGNEXT_PARITY_ENV", ["nnunetv2==2.1.2", "batchgenerators==0.25.5"]),
    "latest": (REPO / "benchmarks" / ".parity-env-latest", "RCSEGNEXT_PARITY_ENV_LATEST", ["nnunetv2==2.8.1"]),
}
PACKAGES = REFERENCES["2.1.2"][2]
RECORD = "parity-env.json"


def torch_version() -> str:
    """The torch release of this environment, without a local label (2.13.0+cpu -> 2.13.0)."""
    return metadata.version("torch").split("+")[0]


def env_dir(reference: str = "2.1.2") -> Path:
    folder, variable, _ = REFERENCES[reference]
    return Path(os.environ.get(variable) or folder)


def python_of(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def wanted(reference: str = "2.1.2") -> Dict[str, object]:
    return {"packages": REFERENCES[reference][2], "torch": torch_version(), "core": str(REPO)}


def _pip(python: Path, args: Sequence[str], log) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(command), file=log, flush=True)
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def ensure(folder: Optional[Path] = None, log=sys.stderr, reference: str = "2.1.2") -> Path:
    """The reference environment's python, creating the environment first when it is missing or stale."""
    folder = Path(folder) if folder else env_dir(reference)
    python = python_of(folder)
    record = folder / RECORD
    packages = REFERENCES[reference][2]
    if python.is_file() and record.is_file() and json.loads(record.read_text()) == wanted(reference):
        return python
    print(f"creating the parity environment in {folder} ({', '.join(packages)}, torch {torch_version()}; once, a "
          "few minutes)", file=log, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    constraints = folder / "constraints.txt"
    constraints.write_text(f"torch=={torch_version()}\n")
    _pip(python, [f"torch=={torch_version()}"], log)
    _pip(python, ["-c", str(constraints), *packages], log)
    _pip(python, ["-c", str(constraints), "-e", str(REPO)], log)
    record.write_text(json.dumps(wanted(reference), indent=1))
    return python


def installed(python: Path) -> Dict[str, str]:
    """Versions of the reference packages in that environment (for the report)."""
    code = ("import json; from importlib import metadata as m; print(json.dumps({p: m.version(p) for p in "
            "['nnunetv2', 'batchgenerators', 'torch', 'numpy', 'scipy', 'scikit-image']}))")
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def run(module: str, args: Sequence[str] = (), python: Optional[Path] = None, timeout: Optional[float] = None,
        log=sys.stderr) -> dict:
    """`python -m module args --json FILE` in the reference environment (from the repository root); its JSON.
    The module's printed table goes to `log`."""
    python = python or ensure(log=log)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([str(python), "-m", module, *args, "--json", str(out)], check=True, cwd=REPO, env=env,
                       stdout=log, stderr=log, timeout=timeout)
        return json.loads(out.read_text())


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="create / check the parity environment")
    parser.add_argument("--reference", choices=list(REFERENCES), default="2.1.2")
    parser.add_argument("--env", type=Path, default=None, help="its folder (default: the reference's, "
                        f"{', '.join(str(v[0]) for v in REFERENCES.values())})")
    args = parser.parse_args(argv)
    python = ensure(args.env, reference=args.reference)
    print(python)
    print(json.dumps(installed(python)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
