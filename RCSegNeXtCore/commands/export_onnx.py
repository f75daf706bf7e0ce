"""`rcsegnext export-onnx MODEL`: every fold's checkpoint as fold_K/model.onnx (+ model.onnx.json), so inference
can run on an engine (OpenVINO, ONNX Runtime) without PyTorch. Up-to-date files are kept unless --force."""
from __future__ import annotations

import argparse

HELP = "write fold_K/model.onnx for every fold of a model folder (inference without PyTorch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder (plans.json + fold_K/checkpoint_final.pt)")
    parser.add_argument("--folds", nargs="+", default=None,
                        help="folds to export: numbers and/or all (fold_all); default every fold present")
    parser.add_argument("--checkpoint", choices=("final", "best"), default="final",
                        help="checkpoint to export (best -> fold_K/model_best.onnx); default final")
    parser.add_argument("--force", action="store_true", help="export again even when the file is up to date")


def run(args: argparse.Namespace) -> int:
    import time

    from RCSegNeXtCore.inference.model_folder import ModelFolder
    from RCSegNeXtCore.inference.onnx_export import export_fold, onnx_status

    model = ModelFolder(args.model)
    for fold in model.select_folds(args.folds):
        model.checkpoint_path(fold, args.checkpoint)  # a clear error when that checkpoint is missing
        status = onnx_status(model.path, fold, args.checkpoint, plans=model.plans)
        name = f"{status.path.parent.name}/{status.path.name}"
        if status.ok and not args.force:
            print(f"{name}: up to date")
            continue
        started = time.perf_counter()
        path = export_fold(model.path, fold, args.checkpoint, plans=model.plans)
        why = "" if status.state == "missing" or status.ok else f" (was stale: {status.reason})"
        print(f"{name}: exported, {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s{why}")
    return 0
