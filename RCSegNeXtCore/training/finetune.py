"""Fine-tuning: a training run that starts from the weights of an existing model folder (`train --init-from`).

The parent's plans.json is the run's plan, byte for byte (no re-planning: the network must be the one the weights
were made for), so the options that would change the plan are refused. The dataset must name the parent's classes.
Only the network weights are taken, from the parent fold's checkpoint_final.pt (else checkpoint_best.pt), loaded
with `weights_only=True` and strictly; the optimizer, the schedule and the epoch count start fresh, so the run's own
`--resume` works as for any run (and takes precedence: a fold with a checkpoint_latest.pt is continued, not
re-initialised).

Defaults when fine-tuning (the command line uses them when `--epochs` / `--lr` are not given):
FINETUNE_EPOCHS = 25 (a quarter of the paper's 100) and FINETUNE_LR = 1e-3 (a tenth of 0.01): the weights are
already near a solution, so a short run with a small step adapts them to the corrected cases without forgetting what
the parent learnt. benchmarks/correction_loop.py measures them against training from scratch (docs/correction_loop.md).

torch is imported inside the functions that load weights (the command line imports this module for the defaults).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

from RCSegNeXtCore.errors import ModelError, RCSegNeXtError

FINETUNE_EPOCHS = 25
FINETUNE_LR = 1e-3

# TrainingConfig fields that would change the parent's plan -> the option that sets each
PLAN_OPTIONS = {"plans_file": "--plans", "target_spacing": "--target-spacing", "patch_size": "--patch-size",
                "batch_size": "--batch-size", "base_channels": "--base-channels", "scale": "--scale",
                "expansion": "--expansion", "aniso_block": "--aniso-block", "iso_block": "--iso-block"}

Fold = Union[int, str]


@dataclass
class Parent:
    """The model a run is fine-tuned from: its folder, the fold and the checkpoint file whose weights are taken."""

    folder: object                  # inference.model_folder.ModelFolder
    fold: Fold
    checkpoint: Path

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def plans_text(self) -> str:
        return (self.folder.path / "plans.json").read_text(encoding="utf-8")


def refuse_plan_options(config) -> None:
    """With `init_from`, nothing may change the parent's plan: name every option that would."""
    given = [flag for name, flag in PLAN_OPTIONS.items() if getattr(config, name) is not None]
    if given:
        raise RCSegNeXtError(f"--init-from {config.init_from} reuses that model's plan unchanged (the weights fit "
                             f"only its network), so {', '.join(given)} cannot be used with it: drop "
                             f"{'them' if len(given) > 1 else 'it'}, or train from scratch without --init-from")


def default_fold(folder) -> Fold:
    """The model's only fold; else fold_all when present; else fold 0."""
    if len(folder.folds) == 1:
        return folder.folds[0]
    return "all" if "all" in folder.folds else 0


def open_parent(model_dir: str, fold: Optional[Fold] = None) -> Parent:
    """The parent model folder (checked as inference checks it) and the checkpoint of `fold` (default:
    `default_fold`): checkpoint_final.pt, or checkpoint_best.pt when the fold never finished."""
    from RCSegNeXtCore.inference.model_folder import CHECKPOINTS, ModelFolder, parse_fold
    folder = ModelFolder(model_dir)
    chosen = default_fold(folder) if fold is None else parse_fold(fold)
    if chosen not in folder.folds:
        raise ModelError(f"--init-fold {chosen}: {folder.path} has no such fold; folds present: {folder.folds}")
    for name in CHECKPOINTS:
        path = folder.path / f"fold_{chosen}" / f"checkpoint_{name}.pt"
        if path.is_file():
            return Parent(folder, chosen, path)
    raise ModelError(f"{folder.path}/fold_{chosen}: holds no checkpoint_final.pt or checkpoint_best.pt")


def check_dataset_fits(parent: Parent, dataset) -> None:
    """The dataset must name the same classes with the same values as the parent, and have its input channels."""
    ours = {k: int(v) for k, v in dataset.labels.items()}
    if ours != parent.folder.labels:
        raise ModelError(f"dataset {dataset.root} has labels {ours} but the model to fine-tune, {parent.path}, has "
                         f"labels {parent.folder.labels}: fine-tuning needs the same classes; relabel the dataset "
                         "or train from scratch without --init-from")
    channels = parent.folder.plans.architecture.in_channels
    if dataset.num_channels != channels:
        raise ModelError(f"dataset {dataset.root} has {dataset.num_channels} input channel(s) "
                         f"{dataset.channel_names} but the model to fine-tune, {parent.path}, takes {channels} "
                         f"{parent.folder.plans.channel_names}")


def check_weights_fit(parent: Parent) -> None:
    """Refuse early (before preprocessing) a parent checkpoint made for another network than its plans.json, naming
    each difference (the check a resume makes)."""
    from RCSegNeXtCore.checkpoint import check_signature, load_checkpoint
    check_signature(load_checkpoint(parent.checkpoint), parent.folder.plans.network_signature(),
                    source=str(parent.checkpoint))


def load_parent_weights(network, parent: Parent, signature: Dict) -> None:
    """Copy the parent's weights into `network` (in place, so an optimizer built on it keeps its parameters):
    signature checked, then loaded strictly; nothing but the weights is taken."""
    from RCSegNeXtCore.checkpoint import load_checkpoint, load_network_weights
    state = load_checkpoint(parent.checkpoint)
    load_network_weights(network, state, signature, source=str(parent.checkpoint))
