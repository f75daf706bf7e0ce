"""`rcsegnext init-model`: a model folder with random weights (for tests, timing and the Slicer module's tests)."""
from __future__ import annotations

import argparse

HELP = "make a model folder with random weights from a plans.json (for tests and timing)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plans", required=True, help="plans.json (or a folder holding one)")
    parser.add_argument("-o", "--output", required=True, help="model folder to create")
    parser.add_argument("--dataset-json", default=None, help="dataset.json to copy (default: made from the plan)")
    parser.add_argument("--base-channels", type=int, default=None, help="network width override (e.g. 8)")
    parser.add_argument("--folds", nargs="+", default=["0"],
                        help="folds to create: numbers and/or all (fold_all); default 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slice-plane", choices=("sagittal", "coronal", "axial", "none"), default=None,
                        help="record this training plane in the model folder (predict warns about a series in "
                             "another plane and picks it in a study folder); default: the plan's; none: no plane")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder's files")
    parser.add_argument("--no-onnx", action="store_true",
                        help="do not write fold_K/model.onnx (inference without PyTorch; `export-onnx` writes it later)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from RCSegNeXtCore.errors import DatasetError
    from RCSegNeXtCore.inference.model_folder import init_model_folder, parse_fold
    from RCSegNeXtCore.plans import Plans

    dataset_json = None
    if args.dataset_json:
        try:
            dataset_json = json.loads(Path(args.dataset_json).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{args.dataset_json}: cannot be read as JSON ({exc})") from None
    folds = [parse_fold(f) for f in args.folds]
    plans = Plans.load(args.plans)
    if args.slice_plane is not None:
        plans.slice_orientation = None if args.slice_plane == "none" else args.slice_plane
        if dataset_json is not None:  # plans.json is then the one place that says it (predict reads both)
            dataset_json.pop("slice_orientation", None)
    out = init_model_folder(plans, args.output, dataset_json, folds=folds, seed=args.seed,
                            base_channels=args.base_channels, overwrite=args.overwrite,
                            export_onnx=not args.no_onnx, log=print)
    print(f"model folder with random weights: {out} (folds {', '.join(map(str, folds))}; "
          f"slice plane {plans.slice_orientation or 'none'})")
    return 0
