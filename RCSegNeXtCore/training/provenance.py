"""RUN/provenance.json: where a trained model comes from, written (atomically) when a `train` run ends.

  mode            "fine-tune" (started from another model's weights, `train --init-from`) | "scratch"
  parent          fine-tune: {"path", "name", "fold", "checkpoint", "weights_sha256", "provenance"} (the parent's
                  own provenance.json, or null); scratch: null
  cases           number of training cases the run's folds trained on (their union)
  dataset         the raw dataset folder
  dataset_sha256  SHA-256 over the dataset's sorted case names and their files' SHA-256 (data/dataset.py)
  date            when the run ended, ISO 8601, UTC
  epochs, lr      the schedule asked for; epochs_trained: per fold, the epochs its metrics.json holds
  folds           the folds trained
  software        "rcsegnext VERSION"

`read_provenance(model_dir)` reads it back (standard library only, so the Slicer module can show it without torch).
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from RCSegNeXtCore.files import atomic_write_json

PROVENANCE_NAME = "provenance.json"


def read_provenance(model_dir: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """A model folder's provenance.json; None when it has none (a model made before, imported or initialised) or
    the file is not a JSON object."""
    path = Path(model_dir) / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def parent_record(parent) -> Dict[str, Any]:
    """The "parent" entry for a `training.finetune.Parent`."""
    from RCSegNeXtCore.hashing import file_sha256
    folder = parent.folder
    return {"path": str(folder.path.resolve()), "name": folder.name, "fold": parent.fold,
            "checkpoint": parent.checkpoint.name, "weights_sha256": file_sha256(parent.checkpoint),
            "provenance": read_provenance(folder.path)}


def epochs_trained(run_dir: Path, folds: Iterable) -> Dict[str, int]:
    """Per fold, the number of epochs in its metrics.json (0 when it has none)."""
    out = {}
    for fold in folds:
        path = run_dir / f"fold_{fold}" / "metrics.json"
        try:
            out[str(fold)] = len(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError):
            out[str(fold)] = 0
    return out


def write_provenance(run_dir: str | os.PathLike, config, dataset, train_case_ids: Iterable[str],
                     parent=None) -> Path:
    """RUN/provenance.json for a run of `config` on `dataset` whose folds trained on `train_case_ids`; `parent`: the
    `finetune.Parent` it started from (None: from scratch)."""
    from RCSegNeXtCore import __version__
    from RCSegNeXtCore.data.dataset import dataset_sha256
    run_dir = Path(run_dir)
    record = {
        "mode": "fine-tune" if parent is not None else "scratch",
        "parent": parent_record(parent) if parent is not None else None,
        "cases": len(set(train_case_ids)),
        "dataset": str(Path(dataset.root).resolve()),
        "dataset_sha256": dataset_sha256(dataset),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs": int(config.epochs),
        "lr": float(config.lr),
        "epochs_trained": epochs_trained(run_dir, config.folds),
        "folds": list(config.folds),
        "software": f"rcsegnext {__version__}",
    }
    return atomic_write_json(run_dir / PROVENANCE_NAME, record)
