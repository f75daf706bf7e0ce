"""A model folder: `plans.json` + `dataset.json` + `fold_K/checkpoint_{final,best}.pt`, all inference needs.

Checkpoints are read through `RCSegNeXtCore.checkpoint` (`weights_only=True`: a crafted pickle is refused, never
run) and must carry the network signature of plans.json. A folder whose plans, weights or class names do not fit is
refused with a message naming both values. torch is imported only to load or make weights (`load_networks`,
`init_model_folder`): reading a folder, its labels, folds and hashes needs none (inference on an engine).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.files import atomic_write_json
from RCSegNeXtCore.hashing import file_sha256
from RCSegNeXtCore.plans import Plans

CHECKPOINTS = ("final", "best")
Fold = Union[int, str]  # K for fold_K, "all" for fold_all


def parse_fold(value: Fold) -> Fold:
    """0, "0" -> 0; "all" / "fold_all" -> "all" (nnU-Net's fold trained on every case)."""
    text = str(value).strip().lower()
    text = text[5:] if text.startswith("fold_") else text
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise ModelError(f"fold must be a number (fold_K) or 'all' (fold_all), got {value!r}")


def default_dataset_json(plans: Plans) -> Dict:
    return {"name": plans.dataset_name or "RCSegNeXt", "channel_names": dict(plans.channel_names),
            "labels": dict(plans.labels), "file_ending": ".nii.gz", "numTraining": plans.num_training_cases or 0}


class ModelFolder:
    """Validated view of a model folder. `folds` lists the folds that hold at least one checkpoint: the numbered
    folds (fold_K), sorted, then "all" when fold_all/ exists (nnU-Net's `--fold all`: trained on every case)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelError(f"{self.path}: model folder not found")
        if not (self.path / "plans.json").is_file():
            raise ModelError(f"{self.path}: not a model folder (no plans.json); make one with `rcsegnext train`, "
                             "`rcsegnext init-model` or `rcsegnext import-official`")
        self.plans = Plans.load(self.path / "plans.json")
        self.raw_plans = json.loads((self.path / "plans.json").read_text(encoding="utf-8"))
        self.dataset_json = self._read_dataset_json()
        self._check_labels()
        present = [p for p in self.path.glob("fold_*")
                   if any((p / f"checkpoint_{c}.pt").is_file() for c in CHECKPOINTS)]
        self.folds: List[Fold] = sorted(int(p.name[5:]) for p in present if p.name[5:].isdigit())
        if any(p.name == "fold_all" for p in present):
            self.folds.append("all")
        if not self.folds:
            raise ModelError(f"{self.path}: no fold_K/checkpoint_final.pt, fold_all/checkpoint_final.pt (or "
                             "checkpoint_best.pt) found")

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def labels(self) -> Dict[str, int]:
        """Class name -> value, from dataset.json (checked to agree with plans.json)."""
        return {k: int(v) for k, v in self.dataset_json["labels"].items()}

    def _read_dataset_json(self) -> Dict:
        path = self.path / "dataset.json"
        if not path.is_file():
            raise ModelError(f"{self.path}: dataset.json is missing (it names the classes); copy the training "
                             "dataset's dataset.json into the model folder")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
            raise ModelError(f"{path}: has no 'labels' object (name -> value)")
        if not all(isinstance(v, int) for v in data["labels"].values()):
            raise ModelError(f"{path}: labels must map each name to one integer (region-based labels are not "
                             f"supported), got {data['labels']}")
        return data

    def _check_labels(self) -> None:
        dataset = {k: int(v) for k, v in self.dataset_json["labels"].items()}
        plans = {k: int(v) for k, v in self.plans.labels.items()}
        if dataset != plans:
            raise ModelError(f"{self.path}: class names do not fit: dataset.json labels {dataset} vs plans.json "
                             f"labels {plans}; use the dataset.json the model was trained with")

    def checkpoint_path(self, fold: Fold, checkpoint: str = "final") -> Path:
        if checkpoint not in CHECKPOINTS:
            raise ModelError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        path = self.path / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"
        if not path.is_file():
            have = [f for f in self.folds if (self.path / f"fold_{f}" / f"checkpoint_{checkpoint}.pt").is_file()]
            raise ModelError(f"{path}: not found; folds with checkpoint_{checkpoint}.pt: {have or 'none'} "
                             f"(folds present: {self.folds})")
        return path

    def select_folds(self, folds: Optional[Sequence[Fold]] = None) -> List[Fold]:
        """The folds to use. Default: every numbered fold present (an ensemble, as nnU-Net's default); fold_all only
        when no numbered fold exists. "all" (or "fold_all") selects fold_all; "0", 0 select fold_0."""
        if folds is None:
            numbered = [f for f in self.folds if f != "all"]
            return numbered or ["all"]
        chosen = [parse_fold(f) for f in folds]
        missing = [f for f in chosen if f not in self.folds]
        if missing:
            raise ModelError(f"{self.path}: fold(s) {missing} not present; folds present: {self.folds}")
        return chosen

    def weights_sha256(self, folds: Optional[Sequence[Fold]] = None, checkpoint: str = "final") -> str:
        """SHA-256 of the checkpoint file (one fold; `sha256sum` gives the same) or of the folds' hex digests joined."""
        digests = [file_sha256(self.checkpoint_path(f, checkpoint)) for f in self.select_folds(folds)]
        return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()

    def load_networks(self, folds: Optional[Sequence[Fold]] = None, checkpoint: str = "final",
                      device="cpu") -> List:
        """One network per fold (torch modules), weights checked against plans.json, in eval mode on `device`."""
        from RCSegNeXtCore.checkpoint import load_checkpoint, load_network_weights
        networks = []
        for fold in self.select_folds(folds):
            path = self.checkpoint_path(fold, checkpoint)
            state = load_checkpoint(path)
            network = self.plans.build_network()
            load_network_weights(network, state, self.plans.network_signature(), source=str(path))
            networks.append(network.to(device).eval())
        return networks


def write_model_description(out: Path, plans: Plans, dataset_json: Optional[Dict] = None) -> None:
    """A model folder's plans.json and dataset.json (default: the plan's labels and channels), which must agree."""
    dataset_json = dict(dataset_json or default_dataset_json(plans))
    if {k: int(v) for k, v in dataset_json.get("labels", {}).items()} != dict(plans.labels):
        raise ModelError(f"dataset.json labels {dataset_json.get('labels')} vs plans labels {plans.labels}: "
                         "they must agree")
    out.mkdir(parents=True, exist_ok=True)
    plans.save(out / "plans.json")
    atomic_write_json(out / "dataset.json", dataset_json)


def init_model_folder(plans: Plans, out_dir: str | os.PathLike, dataset_json: Optional[Dict] = None,
                      folds: Sequence[Fold] = (0,), seed: int = 0, base_channels: Optional[int] = None,
                      overwrite: bool = False, export_onnx: bool = True,
                      log: Optional[Callable[[str], None]] = None) -> Path:
    """A model folder with random weights (for tests, timing and the Slicer module's tests); with `export_onnx`
    each fold also gets fold_K/model.onnx (inference without PyTorch; `log` receives one line per fold)."""
    import torch

    from RCSegNeXtCore.checkpoint import save_checkpoint
    out = Path(out_dir)
    if (out / "plans.json").exists() and not overwrite:
        raise ModelError(f"{out}: already holds a model folder; choose another folder or delete it first")
    if base_channels is not None:
        plans = plans.with_overrides(base_channels=int(base_channels))
    write_model_description(out, plans, dataset_json)
    for fold in map(parse_fold, folds):
        fold_seed = int(seed) + (fold if isinstance(fold, int) else 1000)  # fold_all: its own seed
        torch.manual_seed(fold_seed)
        network = plans.build_network()
        save_checkpoint(out / f"fold_{fold}" / "checkpoint_final.pt", network.state_dict(),
                        plans.network_signature(), random_init=True, seed=fold_seed)
        if export_onnx:
            from RCSegNeXtCore.inference.onnx_export import export_fold_or_note
            line = export_fold_or_note(out, fold, network=network, plans=plans)
            if log is not None:
                log(line)
    return out
