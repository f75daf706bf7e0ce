"""Checkpoints: plain tensors and Python primitives, written atomically, read with `weights_only=True`.

Layout of a checkpoint file (a dict):
  format            "rcsegnext-checkpoint"
  format_version    1
  network_signature kernels, strides, architecture (Plans.network_signature()) the weights were made for
  network           state_dict of the network (no "module." prefix)
  ...               anything else the writer adds (epoch, optimizer, scheduler, grad scaler, RNG states, ...),
                    as long as it is tensors, numbers, strings, lists and dicts (no numpy objects, no classes)
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from RCSegNeXtCore.errors import ModelError, first_line
from RCSegNeXtCore.files import atomic_open
from RCSegNeXtCore.plans import current_signature

CHECKPOINT_FORMAT = "rcsegnext-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, network_state: Dict[str, torch.Tensor],
                    network_signature: Dict[str, Any], **extra: Any) -> Path:
    """Write atomically: temp file in the same folder, flushed and fsynced, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
               "network_signature": network_signature,
               "network": {k: v.detach().cpu() for k, v in network_state.items()}, **extra}
    with atomic_open(path, fsync=True) as handle:
        torch.save(payload, handle)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load safely (`weights_only=True`); a pickle that would run code is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: checkpoint file is empty")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        raise ModelError(f"{path}: checkpoint is corrupt or truncated ({first_line(exc)})") from None
    except Exception as exc:  # pickle.UnpicklingError for anything not allowed under weights_only
        raise ModelError(f"{path}: refused to load: the file holds objects other than plain tensors and "
                         f"primitives, which could run code when unpickled ({first_line(exc)}). "
                         "Only checkpoints written by RCSegNeXt (or plain state_dicts) are accepted.") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not an RCSegNeXt checkpoint (no '{CHECKPOINT_FORMAT}' header); "
                         "to use weights of the official implementation run `rcsegnext import-official`")
    if data.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ModelError(f"{path}: checkpoint format version {data.get('format_version')} is not supported")
    if isinstance(data.get("network_signature"), dict):
        data["network_signature"] = current_signature(data["network_signature"])   # as an older version wrote it
    return data


def check_signature(checkpoint: Dict[str, Any], expected: Dict[str, Any], source: str = "checkpoint") -> None:
    """Refuse a checkpoint made for another plan or architecture, naming every difference."""
    found = checkpoint.get("network_signature", {})
    diffs = _diff(found, expected)
    if diffs:
        raise ModelError(f"{source} was made for another network than this plan describes: " + "; ".join(diffs)
                         + ". Use the plans.json the model was trained with.")


def _diff(found: Any, expected: Any, prefix: str = "") -> list[str]:
    if isinstance(found, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(found) | set(expected)):
            out += _diff(found.get(key), expected.get(key), f"{prefix}{key}.")
        return out
    if found != expected:
        return [f"{prefix.rstrip('.')}: checkpoint {found!r}, plan {expected!r}"]
    return []


def load_network_weights(network: torch.nn.Module, checkpoint: Dict[str, Any],
                         expected_signature: Optional[Dict[str, Any]] = None, source: str = "checkpoint") -> None:
    """Check the signature, then `load_state_dict(strict=True)` with a readable error."""
    if expected_signature is not None:
        check_signature(checkpoint, expected_signature, source)
    try:
        network.load_state_dict(checkpoint["network"], strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: weights do not fit the network: {first_line(exc)}") from None
