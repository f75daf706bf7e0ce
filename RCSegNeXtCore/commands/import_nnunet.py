"""`rcsegnext import-nnunet`: nnU-Net v2's results folder of the official RCSegNeXt code -> a model folder.

`RESULTS_DIR` is nnU-Net's `nnUNetTrainerRCSegNeXt__nnUNetPlans__3d_fullres/` (plans.json, dataset.json,
fold_K/checkpoint_final.pth and checkpoint_best.pth), or a folder holding one such folder. Preprocessing comes from
nnU-Net's plans.json, the network from the weights; every checkpoint is read with `weights_only=True` only
(RCSegNeXtCore/nnunet_import.py).
"""
from __future__ import annotations

import argparse

HELP = "turn an nnU-Net v2 results folder of the official RCSegNeXt code into a model folder (weights_only loading)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", metavar="RESULTS_DIR",
                        help="nnU-Net's TRAINER__PLANS__CONFIGURATION folder (or a folder holding one)")
    parser.add_argument("-o", "--output", required=True, help="model folder to create")
    parser.add_argument("--configuration", default=None,
                        help="nnU-Net configuration (default: from the folder name, e.g. 3d_fullres)")
    parser.add_argument("--folds", nargs="+", default=None, metavar="K",
                        help="folds to import (numbers or all; default: every fold with checkpoint_final.pth)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing checkpoints in the model folder")


def run(args: argparse.Namespace) -> int:
    from RCSegNeXtCore.nnunet_import import import_nnunet_results

    imported = import_nnunet_results(args.results, args.output, args.configuration, args.folds, args.overwrite)
    plans = imported.plans
    for path in imported.written:
        print(f"imported -> {path}")
    for fold in imported.skipped:
        print(f"skipped fold {fold}: no checkpoint_final.pth")
    print(f"model folder {imported.model_dir}: target spacing {plans.target_spacing}, transpose "
          f"{plans.transpose_forward}, patch {plans.patch_size}, normalisation {plans.normalization}, "
          f"mirror axes {plans.mirror_axes}")
    return 0
