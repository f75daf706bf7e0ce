"""The training configuration: every option of `rcsegnext train` as one typed object, `TrainingConfig`.

`commands/train.py` builds it from the command line (`config_from_args`); the demo and Python callers build it
directly; `training.pipeline.train(config)` runs it and the `Trainer` reads its recipe fields. Defaults are the
command line's (the paper's recipe). The run folder records the configuration a `train` ran with (device resolved,
every field, defaults included) in RUN/training_config.json, and each training checkpoint holds the one its fold
was trained with. A new option is one field below: it is recorded and read back without any other change.

Standard library only (the CLI imports it before torch).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from RCSegNeXtCore.files import atomic_write_json

RECORD_NAME = "training_config.json"   # in the run folder


@dataclass
class TrainingConfig:
    # -- the data and the run folder -----------------------------------------------------------------------------
    dataset: Optional[str] = None               # raw dataset folder (imagesTr/, labelsTr/, dataset.json)
    output: Optional[str] = None                # run folder = model folder (plans.json, fold_K/)
    folds: List[Union[int, str]] = field(default_factory=lambda: [0])   # trained in turn; "all": every case
    num_folds: int = 5                          # folds of a new split
    splits: Optional[str] = None                # an existing nnU-Net splits_final.json
    plans_file: Optional[str] = None            # plans.json to use instead of planning from the dataset
    preprocessed: Optional[str] = None          # preprocess cache folder (None: RUN/preprocessed)
    init_from: Optional[str] = None             # fine-tune: model folder whose plan (unchanged) and weights start the
                                                # run (training/finetune.py); None: from scratch
    init_fold: Optional[Union[int, str]] = None  # its fold (None: its only fold, else "all" if present, else 0)
    # -- the plan's values, overridden (None: the plan's) ------------------------------------------------------
    target_spacing: Optional[List[float]] = None
    batch_size: Optional[int] = None
    patch_size: Optional[List[int]] = None
    base_channels: Optional[int] = None         # these five: Architecture fields (Table 3 ablations)
    scale: Optional[int] = None
    expansion: Optional[int] = None
    aniso_block: Optional[str] = None
    iso_block: Optional[str] = None
    # -- the recipe (paper Section 3.1 with nnU-Net's details) -------------------------------------------------
    epochs: int = 100
    iterations_per_epoch: int = 250
    val_iterations: int = 50                    # validation patches per epoch (pseudo-Dice)
    lr: float = 0.01                            # initial learning rate, poly decay
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    oversample_foreground: float = 0.33         # nnU-Net's oversample_foreground_percent
    oversample_rule: str = "batch_position"     # nnU-Net: the last B - round(0.67 B) of each (global) batch forced;
                                                # "random": each patch with that probability (RCSegNeXt 0.1)
    jitter_foreground: bool = False             # forced-foreground voxel anywhere in the patch (the demo), not centred
    sampler_context: str = "nnunet"             # region cut around a patch: nnU-Net 2.1's initial patch size (patch
                                                # rotated, / 0.85) | "1.5x": x1.5 in-plane (RCSegNeXt 0.1)
    sampler_placement: str = "nnunet"           # forced windows bounded below only (may run past the upper edge, zero-
                                                # padded) as nnU-Net's get_bbox | "inside": kept inside (0.1)
    deep_supervision: bool = False              # heads on the coarser decoder stages (off in the paper)
    batch_dice: Optional[bool] = None           # Dice over the whole batch; None: nnU-Net 2.1's rule (True only when
                                                # a 3d_lowres would be planned: patch < 1/4 of the median image;
                                                # training/loss.py); True: RCSegNeXt 0.1
    augment: bool = True
    # augmentation variants (docs/nnunet_parity.md): nnU-Net v2.1 + batchgenerators v1 by default, RCSegNeXt 0.1 second
    aug_dummy_2d_rule: str = "patch"            # in-plane spatial augmentation when max(patch)/patch[0] > 3 | "spacing"
    aug_spatial_scaling: str = "in_plane_two_sided"  # dummy 2D scales y, x; 50/50 below/above 1 | "all_axes_uniform"
    aug_noise_sd: str = "drawn"                 # noise SD = the U(0, 0.1) draw | "sqrt": its square root
    aug_intensity: str = "nnunet_v1"            # blur all axes, per channel; low resolution per channel, cubic; gamma
                                                # 50/50 below/above 1 | "0.1": in-plane blur, trilinear, uniform gamma
    aug_interpolation: str = "cubic_onehot"     # image cubic B-spline, label one-hot linear | "linear_nearest"
    amp: bool = True                            # mixed precision, on CUDA only
    seed: int = 0
    deterministic: bool = False                 # deterministic algorithms (bit-identical resume)
    # -- running -----------------------------------------------------------------------------------------------
    device: str = "auto"                        # auto | cpu | cuda | cuda:N | mps
    gpus: int = 1                               # data-parallel processes (DDP)
    num_workers: int = 1                        # threads preparing patches / processes preprocessing
    threads: Optional[int] = None               # CPU threads per process (None: the idle cores)
    resume: bool = False                        # continue fold_K/checkpoint_latest.pt
    validate: bool = True                       # predict and evaluate the held-out cases after a fold
    validation_tta: bool = True                 # ... with mirroring TTA over the plan's axes (nnU-Net's final
                                                # validation); False: RCSegNeXt 0.1
    check_memory: bool = True                   # estimate CPU memory before the slow work
    progress: bool = True                       # progress bars
    progress_json: bool = False                 # progress as JSON lines on stdout (training/events.py)
    max_seconds: Optional[float] = None         # time budget (the demo): the schedule is fitted to it

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainingConfig":
        """Read a record; fields it lacks (written before they existed) take their defaults, names this version
        does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def changed(self) -> Dict[str, Any]:
        """The fields that differ from the defaults (what a run changed from `rcsegnext train`'s recipe)."""
        default = TrainingConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != default[k]}


def save_training_config(config: TrainingConfig, run_dir: str | os.PathLike) -> Path:
    """Record `config` in RUN/training_config.json (atomic)."""
    return atomic_write_json(Path(run_dir) / RECORD_NAME, config.to_dict())


def load_training_config(run_dir: str | os.PathLike) -> Optional[TrainingConfig]:
    """The configuration recorded in a run folder; None when none is (a run of 0.1.0, or no run yet)."""
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return None
    return TrainingConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
