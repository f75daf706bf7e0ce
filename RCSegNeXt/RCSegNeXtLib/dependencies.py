"""Python dependencies inside Slicer, installed on first Apply (never at module load, so Slicer always starts).

- On the CPU the network runs on an inference engine (`ENGINE_REQUIREMENTS`, OpenVINO first: the core's
  `backends.ENGINE_ORDER`), tens of MB through `slicer.util.pip_install` after asking; no PyTorch is needed.
- torch comes from the PyTorch extension's `PyTorchUtils` (it picks the build for the GPU and CUDA driver), only
  when the run needs it (`needs_torch`: a CUDA/MPS device, an installed torch that found a GPU under "auto", or a
  model folder whose ONNX file must be made first); torch is never pip-installed by name here: that would pull a
  multi-GB default build that may not fit the machine.
- numpy and SimpleITK are Slicer's own and are never replaced or upgraded.
- anything else in `EXTRA_REQUIREMENTS` goes through `slicer.util.pip_install`: tqdm (the core's progress bars;
  pure Python, under 1 MB).
- torch is never imported into Slicer's process here: its version is read from the package metadata, and the GPU
  is probed in a short child process (`DeviceProbe`), so no CUDA context holds GPU memory for the whole session.
All imports are inside functions.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from typing import Callable, Dict, List, Optional, Sequence

MIN_TORCH = (2, 1)
PROTECTED = ("numpy", "simpleitk", "vtk")  # Slicer's own: never install or upgrade from here
EXTRA_REQUIREMENTS: List[str] = ["tqdm>=4.50"]
# CPU engines by the core's order (RCSegNeXtCore/inference/backends.py ENGINE_ORDER), with their download sizes
ENGINE_REQUIREMENTS: Dict[str, str] = {"openvino": "openvino>=2024.0", "onnxruntime": "onnxruntime>=1.16"}
ENGINE_DOWNLOAD = {"openvino": "about 60 MB", "onnxruntime": "about 15 MB"}


class DependencyError(RuntimeError):
    """A dependency is missing and cannot (or may not) be installed automatically."""


def is_importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def installable_requirements(requirements: Sequence[str]) -> List[str]:
    """Requirements that may be pip-installed; refuses any that would replace Slicer's own packages or torch."""
    bad = [r for r in requirements if requirement_name(r) in PROTECTED + ("torch",)]
    if bad:
        raise DependencyError(f"refusing to pip-install {', '.join(bad)}: numpy/SimpleITK/VTK are Slicer's own and "
                              "torch comes from the PyTorch extension")
    return list(requirements)


def torch_version_ok(version: str) -> bool:
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= MIN_TORCH


def installed_torch_version() -> Optional[str]:
    """torch's version from its package metadata (None when absent), without importing it."""
    if not is_importable("torch"):
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_torch(ask: Optional[Callable[[str], bool]] = None) -> str:
    """Make torch importable through PyTorchUtils; returns its version. `ask(message)` confirms a download.
    An installed, recent torch is accepted without importing it."""
    version = installed_torch_version()
    if version and torch_version_ok(version):
        return version
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError("the PyTorch extension is not installed: install 'PyTorch' from the Extensions "
                              "Manager, restart Slicer, then press Apply again") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        if ask is not None and not ask("RCSegNeXt needs PyTorch (about 1-3 GB download). Install it now?"):
            raise DependencyError("PyTorch installation was declined; it is needed to segment")
        torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=f">={MIN_TORCH[0]}.{MIN_TORCH[1]}")
        if torch is None:
            raise DependencyError("PyTorch could not be installed; see the Python console, or install it from the "
                                  "PyTorch Utils module")
    importlib.invalidate_caches()  # a package installed by this process must be found
    version = installed_torch_version()
    if not version or not torch_version_ok(version):
        raise DependencyError(f"torch {version or '(missing)'} is too old (need >= {MIN_TORCH[0]}.{MIN_TORCH[1]}); "
                              "update it in the PyTorch Utils module")
    return version


def installed_engine() -> Optional[str]:
    """The CPU engine `predict --backend auto` would take (the first installed of the core's order), or None."""
    from RCSegNeXtCore.inference.backends import ENGINE_ORDER, engine_installed
    return next((name for name in ENGINE_ORDER if engine_installed(name)), None)


def ensure_engine(ask: Optional[Callable[[str], bool]] = None) -> str:
    """An installed CPU inference engine, pip-installing the first of the core's order after asking; its name."""
    from RCSegNeXtCore.inference.backends import ENGINE_ORDER
    engine = installed_engine()
    if engine:
        return engine
    engine = ENGINE_ORDER[0]
    if ask is not None and not ask(f"RCSegNeXt runs on the CPU with {engine} ({ENGINE_DOWNLOAD.get(engine, 'a few')} "
                                   "download, no PyTorch needed). Install it now?"):
        raise DependencyError(f"{engine} installation was declined; it is needed to segment on the CPU (or choose "
                              "device cuda, which uses PyTorch)")
    import slicer.util
    slicer.util.pip_install(ENGINE_REQUIREMENTS[engine])
    importlib.invalidate_caches()
    if installed_engine() is None:
        raise DependencyError(f"{engine} could not be installed; see the Python console")
    return engine


def needs_torch(device: str = "auto", gpu_found: Optional[bool] = None, onnx_missing: bool = False) -> bool:
    """Whether a run needs PyTorch: a GPU device, "auto" where an installed torch found a GPU (`gpu_found`, from
    the DeviceProbe), or a model folder without a usable ONNX file (PyTorch exports it once)."""
    device = str(device or "auto").lower()
    return device.startswith("cuda") or device == "mps" or (device == "auto" and bool(gpu_found)) or onnx_missing


def onnx_missing(model_dir: str, folds: Optional[Sequence] = None) -> List[str]:
    """The folds of a model folder whose fold_K/model.onnx is missing or stale (the reason per fold); no torch."""
    from pathlib import Path

    from RCSegNeXtCore.inference.onnx_export import onnx_status
    folder = Path(model_dir)
    names = [str(f) for f in folds] if folds else sorted(p.name[len("fold_"):] for p in folder.glob("fold_*")
                                                         if (p / "checkpoint_final.pt").is_file())
    problems = []
    for name in names:
        status = onnx_status(folder, "all" if name == "all" else int(name))
        if not status.ok:
            problems.append(f"fold {name}: {status.reason}")
    return problems


def ensure_requirements(ask: Optional[Callable[[str], bool]] = None, device: str = "auto",
                        gpu_found: Optional[bool] = None, model_dir: Optional[str] = None) -> str:
    """What a segmentation run on `device` needs: PyTorch via PyTorchUtils when `needs_torch`, else a CPU engine
    via pip; then the extra pure-Python requirements. Returns the backend the run will take ("torch" or the engine).
    """
    missing_onnx = bool(model_dir) and not needs_torch(device, gpu_found) and bool(onnx_missing(model_dir))
    if needs_torch(device, gpu_found, missing_onnx):
        ensure_torch(ask)
        backend = "torch" if needs_torch(device, gpu_found) else ensure_engine(ask)
    else:
        backend = ensure_engine(ask)
    missing = [r for r in installable_requirements(EXTRA_REQUIREMENTS) if not is_importable(requirement_name(r))]
    if missing:
        import slicer.util
        for requirement in missing:
            slicer.util.pip_install(requirement)
        importlib.invalidate_caches()
    return backend


DEVICE_PROBE = """
import json
try:
    import torch
except ImportError:
    print(json.dumps({"stage": "device", "torch": None}), flush=True)
    raise SystemExit(0)
info = {"stage": "device", "torch": torch.__version__, "cuda": bool(torch.cuda.is_available())}
if info["cuda"]:
    free, total = torch.cuda.mem_get_info()
    info.update(name=torch.cuda.get_device_name(0), free_gb=free / 1e9, total_gb=total / 1e9)
print(json.dumps(info), flush=True)
"""


def probe_cuda(python: Optional[str] = None, timeout: float = 60.0) -> Optional[bool]:
    """Whether the child process's torch sees a CUDA GPU (blocking, for scripts; the panel uses DeviceProbe from its
    timer). None when torch is missing or the probe failed or timed out."""
    import time
    probe = DeviceProbe(python).start()
    deadline = time.monotonic() + timeout
    while not probe.poll():
        if time.monotonic() > deadline:
            probe.cancel()
            return None
        time.sleep(0.05)
    return bool(probe.info["cuda"]) if probe.info and probe.info.get("torch") else None


def describe_device(info: Optional[Dict], choice: str = "auto") -> str:
    """The panel's device line for a probe result (None: torch not installed yet) and the device choice."""
    if not info or not info.get("torch"):
        if str(choice).startswith("cuda"):
            return "PyTorch is installed on the first Apply (a 1-3 GB download) to run on the GPU."
        engine = installed_engine() or "OpenVINO (installed on the first Apply, about 60 MB)"
        return (f"CPU: runs on {engine}, no PyTorch needed. For a CUDA GPU choose device cuda (installs "
                "PyTorch, 1-3 GB).")
    if info.get("cuda"):
        gpu = (f"CUDA GPU: {info.get('name', '?')}, {info.get('free_gb', 0):.1f} of {info.get('total_gb', 0):.1f} "
               "GB free")
        return gpu + (" (not used: device is cpu; expect minutes)." if choice == "cpu" else ": seconds per volume.")
    if choice.startswith("cuda"):
        return "No CUDA GPU found: a cuda run would fail. Choose auto or cpu."
    engine = installed_engine()
    return (f"No CUDA GPU found: runs on the CPU with {engine}." if engine else
            "No CUDA GPU found: runs on the CPU with OpenVINO (installed on the first Apply, about 60 MB).")


def describe_backend(backend: str, device: str = "auto") -> str:
    """The panel's line for what runs the network in this run."""
    if backend == "torch":
        return f"Running on PyTorch ({device})."
    return f"Running on the CPU with {backend} (no PyTorch)."


class DeviceProbe:
    """Asks a short child process (Slicer's PythonSlicer) which torch and GPU it sees, without blocking:
    `start()`, then `poll()` from a timer until it returns True; the answer is in `info` (None if it failed)."""

    def __init__(self, python: Optional[str] = None):
        self.python = python
        self.info: Optional[Dict] = None
        self.error = ""
        self._runner = None

    def start(self) -> "DeviceProbe":
        from RCSegNeXtLib import runner
        command = [self.python or runner.find_python_slicer(), "-c", DEVICE_PROBE]
        self._runner = runner.SubprocessRunner(command).start()
        return self

    def poll(self) -> bool:
        from RCSegNeXtLib import runner
        if self._runner is None:
            return True
        for event in self._runner.poll():
            if isinstance(event, runner.ProgressEvent) and event.stage == "device":
                self.info = dict(event.raw)
            elif isinstance(event, runner.FinishedEvent):
                self.error = event.message
                self._runner = None
        return self._runner is None

    def cancel(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            self._runner = None
