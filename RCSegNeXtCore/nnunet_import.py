"""Checkpoints and results folders of the official RCSegNeXt code (nnU-Net v2.1.2 with the RCSegNeXt trainer) ->
a model folder.

`load_nnunet_checkpoint` reads a checkpoint with `torch.load(weights_only=True)` only. nnU-Net's save_checkpoint
stores, beside the weights, its optimiser state, logging lists of numpy float64 scalars, `_best_ema` (numpy),
`init_args` (plans and dataset.json dicts, a torch.device), the trainer name and the mirror axes: plain data, but
the numpy scalars need their reconstructors allowed. Only those are added to torch's allow-list
(`numpy_scalar_globals`); anything else (a pickled class, a function) is refused with the reason and how to extract
the weights in a trusted session, never loaded unsafely.

`import_nnunet_results(folder, out)` turns `nnUNetTrainerRCSegNeXt__nnUNetPlans__3d_fullres/` (plans.json,
dataset.json, fold_K/checkpoint_final.pth and checkpoint_best.pth) into a model folder: preprocessing from nnU-Net's
plans.json (target spacing, transpose, normalisation, resampling orders, patch, mirror axes), the network read from
the weights (network/official.py), each fold's weights converted and checked to load into the plan's network.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from RCSegNeXtCore.errors import ModelError, PlanError, first_line

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
# nnU-Net's normalisation classes -> ours (data/preprocess.normalize)
NORMALIZATION = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none"}
RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
ANISO_THRESHOLD = 3.0                 # nnunetv2.configuration.ANISO_THRESHOLD
SUPPORTED_ORDERS = (0, 1, 3)


# -- checkpoints ------------------------------------------------------------------------------------------------------
def numpy_scalar_globals() -> list:
    """numpy scalars and dtypes (nnU-Net's logging lists hold np.float64): plain data, allowed under
    weights_only=True; nothing else is added to torch's allow-list."""
    import numpy as np
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_)
    return [scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def _reason(exc: BaseException) -> str:
    """The useful line of torch's weights_only refusal (e.g. 'Unsupported global: GLOBAL builtins.exec')."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    match = re.search(r"(Unsupported global: [^\n]+|Unsupported operand[^\n]*|Trying to [^\n]+)", text)
    return match.group(1).strip() if match else first_line(exc)


def load_nnunet_checkpoint(path: str | os.PathLike) -> Any:
    """A checkpoint of the official code (or any torch file of plain data), loaded with weights_only=True."""
    import pickle
    import zipfile

    import torch
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ModelError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        raise ModelError(
            f"{path}: refused: loading with weights_only=True failed because the file holds Python objects other "
            f"than tensors and plain data ({_reason(exc)}). Unpickling such objects can run code, so it is not done "
            "here. If you trust the file, extract the weights in a separate Python session (load it there with "
            "weights_only=False and torch.save only its 'network_weights' dict as weights.pt), then import "
            "weights.pt") from None


def checkpoint_state_dict(data: Any, source: str = "checkpoint") -> Dict[str, Any]:
    """The network weights in a loaded checkpoint: nnU-Net's 'network_weights' (or 'state_dict' / 'network' /
    'model'), or the dict itself when it is a bare state_dict."""
    import torch
    if isinstance(data, dict):
        for key in ("network_weights", "state_dict", "network", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{source}: holds no state_dict (expected a dict with 'network_weights' or a dict of "
                         "tensors)")
    return data


def read_official_state_dict(path: str | os.PathLike) -> Dict[str, Any]:
    """The network weights of an official checkpoint, loaded with weights_only=True."""
    return checkpoint_state_dict(load_nnunet_checkpoint(path), str(path))


# -- nnU-Net's plans.json -> ours -----------------------------------------------------------------------------------
def nnunet_configuration(nnunet_plans: Dict[str, Any], name: str) -> Dict[str, Any]:
    """One configuration of an nnU-Net plans.json with `inherits_from` resolved (as nnU-Net's PlansManager)."""
    configurations = nnunet_plans.get("configurations") or {}
    if name not in configurations:
        raise PlanError(f"nnU-Net plans have no configuration {name!r} (found {', '.join(configurations) or 'none'})")
    config = dict(configurations[name])
    if "inherits_from" in config:
        parent = nnunet_configuration(nnunet_plans, config.pop("inherits_from"))
        config = {**parent, **config}
    return config


def _resampling(config: Dict[str, Any], source: str) -> Dict[str, Any]:
    """nnU-Net's resampling functions and their orders as our plans.json resampling object."""
    from RCSegNeXtCore.plans import RESAMPLING_DEFAULTS
    orders = {}
    for kind, ours in (("data", "image"), ("seg", "label"), ("probabilities", "restore")):
        function = config.get(f"resampling_fn_{kind}")
        kwargs = config.get(f"resampling_fn_{kind}_kwargs") or {}
        if function != RESAMPLING_FUNCTION or kwargs.get("force_separate_z") is not None:
            raise PlanError(f"{source}: resampling_fn_{kind} {function} with {kwargs}: only nnU-Net's default "
                            f"{RESAMPLING_FUNCTION} (force_separate_z None) can be imported")
        order, order_z = int(kwargs.get("order", 3)), int(kwargs.get("order_z", 0))
        if order not in SUPPORTED_ORDERS or order_z not in SUPPORTED_ORDERS:
            raise PlanError(f"{source}: resampling_fn_{kind} orders {order}/{order_z}: supported are "
                            f"{SUPPORTED_ORDERS}")
        orders[f"{ours}_order"], orders[f"{ours}_order_thick_axis"] = order, order_z
    return {**RESAMPLING_DEFAULTS, **orders, "anisotropy_threshold": ANISO_THRESHOLD, "image_interpolation": "bspline",
            "label_rule": "nnunet", "restore": "logits"}


def _labels(dataset_json: Dict[str, Any], source: str) -> Dict[str, int]:
    labels = dataset_json.get("labels") or {}
    if "ignore" in labels or any(not isinstance(v, int) for v in labels.values()):
        raise PlanError(f"{source}: labels {labels}: region-based training and the ignore label cannot be "
                        "imported; RCSegNeXt predicts one class per voxel, labels 0..N-1")
    return {str(k): int(v) for k, v in labels.items()}


def plans_from_nnunet(nnunet_plans: Dict[str, Any], dataset_json: Dict[str, Any], configuration: str,
                      state_dict: Dict[str, Any], mirror_axes: Optional[List[int]] = None,
                      source: str = "nnU-Net plans") -> "Plans":
    """Our Plans for an nnU-Net configuration and the official network in `state_dict` (kernels, strides and
    architecture read from the weights; preprocessing, patch and batch size from nnU-Net's plans)."""
    from RCSegNeXtCore.network.official import official_architecture
    from RCSegNeXtCore.plans import Architecture, Plans
    config = nnunet_configuration(nnunet_plans, configuration)
    schemes = list(config.get("normalization_schemes") or [])
    unknown = [s for s in schemes if s not in NORMALIZATION]
    if unknown:
        raise PlanError(f"{source}: normalisation {unknown} cannot be imported (supported: {', '.join(NORMALIZATION)})")
    if any(config.get("use_mask_for_norm") or []):
        raise PlanError(f"{source}: use_mask_for_norm is set (nnU-Net normalises inside the non-zero mask of "
                        "strongly cropped images); RCSegNeXt normalises the whole crop, so these weights would see "
                        "other intensities")
    if len(config.get("spacing", [])) != 3:
        raise PlanError(f"{source}: configuration {configuration!r} is not 3D (spacing {config.get('spacing')})")
    arch = official_architecture(state_dict)
    channel_names = {str(k): str(v) for k, v in (dataset_json.get("channel_names")
                                                 or dataset_json.get("modality") or {}).items()}
    labels = _labels(dataset_json, source)
    median = config.get("median_image_size_in_voxels")
    values = dict(
        target_spacing=[float(s) for s in config["spacing"]], patch_size=[int(p) for p in config["patch_size"]],
        kernels=arch["kernels"], strides=arch["strides"],
        architecture=Architecture(**{k: arch[k] for k in ("in_channels", "num_classes", "base_channels", "scale",
                                                           "expansion", "aniso_block", "iso_block")}),
        batch_size=int(config.get("batch_size", 2)), labels=labels, channel_names=channel_names,
        normalization=[NORMALIZATION[s] for s in schemes], crop_to_nonzero=True,
        resampling=_resampling(config, source),
        transpose_forward=[int(a) for a in nnunet_plans.get("transpose_forward", [0, 1, 2])],
        target_spacing_rule="given", mirror_axes=[int(a) for a in (mirror_axes if mirror_axes is not None
                                                                   else [0, 1, 2])],
        median_shape=None if median is None else [int(round(float(v))) for v in median],
        median_spacing=[float(v) for v in nnunet_plans.get("original_median_spacing_after_transp") or []] or None,
        slice_orientation=dataset_json.get("slice_orientation"),
        intensity_properties={str(k): dict(v) for k, v in
                              (nnunet_plans.get("foreground_intensity_properties_per_channel") or {}).items()} or None,
        dataset_name=str(nnunet_plans.get("dataset_name", "")),
        num_training_cases=dataset_json.get("numTraining"))
    plans = Plans(**values)
    try:
        plans.validate(source)
    except PlanError as exc:
        raise PlanError(f"{exc} (the network comes from the checkpoint: kernels {arch['kernels']}, strides "
                        f"{arch['strides']}, {arch['num_classes']} classes, {arch['in_channels']} channel(s); "
                        f"dataset.json has {len(labels)} labels and {len(channel_names)} channel(s))") from None
    return plans


# -- a results folder -------------------------------------------------------------------------------------------------
@dataclass
class NnunetResults:
    """A results folder of nnU-Net's trainer: TRAINER__PLANS__CONFIGURATION/ with plans.json and dataset.json."""

    folder: Path
    trainer: str
    configuration: str
    plans: Dict[str, Any]
    dataset_json: Dict[str, Any]
    folds: Dict[str, Dict[str, Path]] = field(default_factory=dict)   # fold -> {"final"/"best": checkpoint}


def find_results(folder: str | os.PathLike, configuration: Optional[str] = None) -> NnunetResults:
    """The results folder itself, or a folder holding exactly one TRAINER__PLANS__CONFIGURATION/ sub-folder."""
    import json
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder (give nnU-Net's TRAINER__PLANS__CONFIGURATION results folder)")
    if not (folder / "plans.json").is_file():
        candidates = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "plans.json").is_file()
                            and p.name.count("__") == 2
                            and (configuration is None or p.name.endswith(f"__{configuration}")))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise ModelError(f"{folder}: expected nnU-Net's TRAINER__PLANS__CONFIGURATION folder with plans.json "
                             f"and dataset.json, or a folder holding one (found: {found})")
        folder = candidates[0]
    parts = folder.name.split("__")
    trainer = parts[0] if len(parts) == 3 else ""
    configuration = configuration or (parts[2] if len(parts) == 3 else None)
    if not configuration:
        raise ModelError(f"{folder}: cannot tell the configuration from the folder name; pass it "
                         "(e.g. --configuration 3d_fullres)")
    loaded = {}
    for name in ("plans.json", "dataset.json"):
        try:
            loaded[name] = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{folder / name}: cannot read it ({first_line(exc)})") from None
    folds = {}
    for fold_dir in sorted(folder.glob("fold_*")):
        fold = fold_dir.name[len("fold_"):]
        if not (fold.isdigit() or fold == "all"):
            continue
        found = {kind: fold_dir / name for kind, name in CHECKPOINTS.items() if (fold_dir / name).is_file()}
        if found:
            folds[fold] = found
    return NnunetResults(folder, trainer, configuration, loaded["plans.json"], loaded["dataset.json"], folds)


@dataclass
class ImportedModel:
    model_dir: Path
    plans: "Plans"
    written: List[Path]
    skipped: List[str]


def import_nnunet_results(folder: str | os.PathLike, out_dir: str | os.PathLike, configuration: Optional[str] = None,
                          folds: Optional[List[str]] = None, overwrite: bool = False) -> ImportedModel:
    """Write a model folder from nnU-Net's results folder of the official code (every fold's final and best
    checkpoint, or the chosen `folds`); returns what was written and which folds were skipped (no final checkpoint)."""
    from RCSegNeXtCore.checkpoint import save_checkpoint
    from RCSegNeXtCore.inference.model_folder import write_model_description
    from RCSegNeXtCore.network.official import convert_official_state_dict
    results = find_results(folder, configuration)
    wanted = [str(f) for f in folds] if folds else sorted(results.folds, key=lambda f: (f == "all", f.zfill(4)))
    missing = [f for f in wanted if f not in results.folds]
    if folds and missing:
        raise ModelError(f"{results.folder}: no checkpoint in fold(s) {', '.join(missing)} (found: "
                         f"{', '.join(results.folds) or 'none'})")
    usable = [f for f in wanted if "final" in results.folds.get(f, {})]
    skipped = [f for f in wanted if f not in usable]
    if not usable:
        raise ModelError(f"{results.folder}: no fold_K/{CHECKPOINTS['final']} to import (a training still running "
                         "has only checkpoint_latest.pth)")
    out = Path(out_dir)
    loaded = {(fold, kind): load_nnunet_checkpoint(path) for fold in usable
              for kind, path in results.folds[fold].items()}
    first = loaded[(usable[0], "final")]
    mirror_axes = first.get("inference_allowed_mirroring_axes") if isinstance(first, dict) else None
    plans = plans_from_nnunet(results.plans, results.dataset_json, results.configuration,
                              checkpoint_state_dict(first, str(results.folds[usable[0]]["final"])),
                              None if mirror_axes is None else list(mirror_axes), str(results.folder / "plans.json"))
    targets = {(fold, kind): out / f"fold_{fold}" / f"checkpoint_{kind}.pt" for fold, kind in loaded}
    existing = [str(t) for t in targets.values() if t.exists()]
    if existing and not overwrite:
        raise ModelError(f"{existing[0]} already exists; choose another folder or pass --overwrite")
    network = plans.build_network()
    converted = {}
    for (fold, kind), data in loaded.items():
        source = results.folds[fold][kind]
        try:
            weights = convert_official_state_dict(checkpoint_state_dict(data, str(source)), plans.kernels,
                                                  plans.strides)
            network.load_state_dict(weights, strict=True)
        except (ModelError, RuntimeError) as exc:
            raise ModelError(f"{source}: its weights do not fit the network of fold {usable[0]}: "
                             f"{first_line(exc)}") from None
        converted[(fold, kind)] = weights
    write_model_description(out, plans, results.dataset_json)
    written = []
    for key, weights in converted.items():
        source = results.folds[key[0]][key[1]]
        written.append(save_checkpoint(targets[key], weights, plans.network_signature(),
                                       imported_from=f"{results.folder.name}/{source.parent.name}/{source.name}",
                                       trainer=results.trainer))
    return ImportedModel(out, plans, written, skipped)
