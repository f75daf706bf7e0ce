"""Training state: checkpoints latest / best / final with everything `--resume` needs to continue bit-identically.

Written through `RCSegNeXtCore.checkpoint.save_checkpoint` (atomic: temp file + fsync + rename) and holding only
tensors and primitives, so they load with `weights_only=True`: network, optimizer, scheduler, grad scaler, the
sampler's and augmenter's generators and the global torch / numpy / python RNG states.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from RCSegNeXtCore.checkpoint import check_signature, load_checkpoint, save_checkpoint
from RCSegNeXtCore.errors import ModelError

LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"


def global_rng_state() -> Dict[str, Any]:
    """torch (CPU and CUDA), numpy legacy and python `random` states as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_training_checkpoint(path: str | Path, network: torch.nn.Module, signature: Dict[str, Any],
                             **state: Any) -> Path:
    """Save the unwrapped network's weights and the training state."""
    net = network.module if hasattr(network, "module") else network
    return save_checkpoint(path, net.state_dict(), signature, **state)


def load_training_checkpoint(path: str | Path, signature: Dict[str, Any],
                             map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load (weights_only) and refuse a checkpoint made for another plan or architecture."""
    checkpoint = load_checkpoint(path, map_location=map_location)
    check_signature(checkpoint, signature, source=str(path))
    if "epoch" not in checkpoint or "optimizer" not in checkpoint:
        raise ModelError(f"{path}: holds weights only, no training state to resume from; "
                         "train without --resume to start over")
    return checkpoint


def find_resume_checkpoint(fold_dir: Path) -> Optional[Path]:
    """checkpoint_latest.pt, or checkpoint_final.pt when the fold already finished."""
    for name in (LATEST, FINAL):
        if (fold_dir / name).is_file():
            return fold_dir / name
    return None
