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
    parser.add_argument("--no-onnx", action="store_true",
                        help="do not write fold_K/model.onnx (inference without PyTorch; `export-onnx` writes it later)")


def read_official_state_dict(path) -> dict:
    """The network weights of an official checkpoint, loaded with weights_only=True (nnunet_import.py)."""
    from RCSegNeXtCore.nnunet_import import read_official_state_dict as read
    return read(path)


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
    if not args.no_onnx:
        from RCSegNeXtCore.inference.onnx_export import export_fold_or_note
        print(export_fold_or_note(out, args.fold, network=network, plans=plans))
    return 0
