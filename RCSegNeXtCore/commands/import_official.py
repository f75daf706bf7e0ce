"""`rcsegnext import-official`: a checkpoint of the official (nnU-Net-based) RCSegNeXt -> a model folder.

The file is read with `torch.load(weights_only=True)` only: a checkpoint that holds other Python objects is refused
with the reason and how to extract its weights in a trusted environment; nothing falls back to unsafe loading.
Accepted: nnU-Net's dict with 'network_weights' (or 'state_dict' / 'network'), or a bare state_dict.
"""
from __future__ import annotations

import argparse

HELP = "turn a checkpoint of the official RCSegNeXt implementation into a model folder (weights_only loading)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official checkpoint (e.g. checkpoint_final.pth)")
    parser.add_argument("-o", "--output", required=True, help="model folder to create")
    parser.add_argument("--plans", required=True, help="plans.json describing preprocessing (its network must match)")
    parser.add_argument("--dataset-json", default=None, help="dataset.json with the class names (default: plan's)")
    parser.add_argument("--fold", type=int, default=0, help="fold the checkpoint belongs to (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing fold checkpoint")


def _numpy_scalar_globals() -> list:
    """numpy scalars and dtypes (nnU-Net's 'logging' lists hold np.float64): plain data, allowed under
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
    import re

    from RCSegNeXtCore.errors import first_line
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    match = re.search(r"(Unsupported global: [^\n]+|Unsupported operand[^\n]*|Trying to [^\n]+)", text)
    return match.group(1).strip() if match else first_line(exc)


def read_official_state_dict(path) -> dict:
    """The network weights of an official checkpoint, loaded with weights_only=True."""
    import pickle
    import zipfile
    from pathlib import Path

    import torch

    from RCSegNeXtCore.errors import ModelError

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ModelError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        reason = _reason(exc)
        raise ModelError(
            f"{path}: refused: loading with weights_only=True failed because the file holds Python objects other "
            f"than tensors ({reason}). Unpickling such objects can run code, so it is not done here. If you trust "
            "the file, extract the weights in a separate Python session (load it there with weights_only=False "
            "and torch.save only its 'network_weights' dict as weights.pt), then import weights.pt") from None
    if isinstance(data, dict):
        for key in ("network_weights", "state_dict", "network", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path}: holds no state_dict (expected a dict with 'network_weights' or a dict of tensors)")
    return data


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from RCSegNeXtCore.checkpoint import save_checkpoint
    from RCSegNeXtCore.errors import ModelError, first_line
    from RCSegNeXtCore.inference.model_folder import write_model_description
    from RCSegNeXtCore.network.official import convert_official_state_dict, official_architecture
    from RCSegNeXtCore.plans import Plans

    plans = Plans.load(args.plans)
    state = read_official_state_dict(args.checkpoint)
    arch = official_architecture(state)
    ours = plans.architecture.network_kwargs()
    diffs = [f"{k}: checkpoint {arch[k]!r}, plan {v!r}" for k, v in ours.items() if arch[k] != v]
    if diffs:
        raise ModelError(f"{args.checkpoint} does not fit {args.plans}: " + "; ".join(diffs)
                         + ". Use a plan made for this checkpoint (e.g. `rcsegnext plan ... --base-channels N`)")
    converted = convert_official_state_dict(state, plans.kernels, plans.strides)
    network = plans.build_network()
    try:
        network.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{args.checkpoint}: weights do not fit the plan's network: {first_line(exc)}") from None
    out = Path(args.output)
    target = out / f"fold_{args.fold}" / "checkpoint_final.pt"
    if target.exists() and not args.overwrite:
        raise ModelError(f"{target} already exists; choose another folder or pass --overwrite")
    dataset_json = json.loads(Path(args.dataset_json).read_text(encoding="utf-8")) if args.dataset_json else None
    write_model_description(out, plans, dataset_json)
    save_checkpoint(target, network.state_dict(), plans.network_signature(),
                    imported_from=str(Path(args.checkpoint).name))
    print(f"imported {args.checkpoint} -> {target}")
    return 0
