"""Python dependencies inside Slicer, installed on first Apply (never at module load, so Slicer always starts).

- torch comes from the PyTorch extension's `PyTorchUtils` (it picks the build for the GPU and CUDA driver); torch
  is never pip-installed by name here: that would pull a multi-GB default build that may not fit the machine.
- numpy and SimpleITK are Slicer's own and are never replaced or upgraded.
- anything else in `EXTRA_REQUIREMENTS` goes through `slicer.util.pip_install` (none is needed today).
All imports are inside functions.
"""
from __future__ import annotations

import importlib.util
import re
from typing import Callable, List, Optional, Sequence

MIN_TORCH = (2, 1)
PROTECTED = ("numpy", "simpleitk", "vtk")  # Slicer's own: never install or upgrade from here
EXTRA_REQUIREMENTS: List[str] = []


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


def ensure_torch(ask: Optional[Callable[[str], bool]] = None) -> str:
    """Make torch importable through PyTorchUtils; returns its version. `ask(message)` confirms a download."""
    if is_importable("torch"):
        import torch
        if torch_version_ok(torch.__version__):
            return torch.__version__
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
    import torch
    if not torch_version_ok(torch.__version__):
        raise DependencyError(f"torch {torch.__version__} is too old (need >= {MIN_TORCH[0]}.{MIN_TORCH[1]}); update "
                              "it in the PyTorch Utils module")
    return torch.__version__


def ensure_requirements(ask: Optional[Callable[[str], bool]] = None) -> None:
    """torch via PyTorchUtils, then any extra pure-Python requirement via slicer.util.pip_install."""
    ensure_torch(ask)
    missing = [r for r in installable_requirements(EXTRA_REQUIREMENTS) if not is_importable(requirement_name(r))]
    if missing:
        import slicer.util
        for requirement in missing:
            slicer.util.pip_install(requirement)


def cuda_status() -> str:
    """'CUDA: <GPU name>, <free>/<total> GB free' when torch is already installed and sees a GPU, else ''.

    Never installs or imports torch when it is not there yet (so the panel opens fast)."""
    if not is_importable("torch"):
        return ""
    try:
        import torch
        if not torch.cuda.is_available():
            return ""
        free, total = torch.cuda.mem_get_info()
        return f"CUDA: {torch.cuda.get_device_name(0)}, {free / 1e9:.1f} of {total / 1e9:.1f} GB free"
    except Exception:  # a broken driver must not break the panel
        return ""
