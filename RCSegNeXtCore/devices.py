"""Where torch runs: the `--device` choice and the CPU thread count (training, prediction with the torch backend,
benchmarks). torch is imported by the functions, not with the module (the engine backends never call them)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from RCSegNeXtCore.errors import RCSegNeXtError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device | None = "auto", allow_mps: bool = False) -> torch.device:
    """'auto' -> CUDA when torch sees a GPU, else (with `allow_mps`, training) Apple's MPS, else the CPU.
    An explicit CUDA device without a GPU is refused rather than silently run on the CPU."""
    import torch
    name = "auto" if name is None else str(name)
    if name in ("auto", ""):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if allow_mps and mps is not None and mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RCSegNeXtError(f"--device {name} was asked for but torch sees no CUDA GPU; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RCSegNeXtError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None


def set_cpu_threads(threads: int) -> None:
    """torch's intra-op threads for CPU work in this process."""
    if int(threads) != threads or threads < 1:
        raise RCSegNeXtError(f"--threads must be a whole number >= 1, got {threads!r}")
    import torch
    torch.set_num_threads(int(threads))
