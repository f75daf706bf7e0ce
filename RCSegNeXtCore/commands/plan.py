"""`rcsegnext plan`: write plans.json from a dataset (fingerprint) or from explicit spacing and patch size."""
from __future__ import annotations

import argparse

HELP = "make plans.json from a dataset (median spacing, patch size, Algorithm 1) or from --spacing/--patch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="dataset folder (nnU-Net v2 raw layout); omit to plan from "
                                                   "--spacing and --patch alone")
    parser.add_argument("-o", "--output", default="plans.json", help="plans file to write (default plans.json)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="target spacing in mm (default: the dataset's median; required without a dataset)")
    parser.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="patch size (default [16, 320, 320], shrunk to the median image when smaller)")
    parser.add_argument("--base-channels", type=int, help="width of the first stage (default 32)")
    parser.add_argument("--scale", type=int, help="IsoNeXt scale s (default 4)")
    parser.add_argument("--expansion", type=int, help="expansion ratio r (default 2)")
    parser.add_argument("--aniso-block", help="block of the anisotropic stages (default aninext)")
    parser.add_argument("--iso-block", help="block of the isotropic stages (default isonext)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default 2)")
    parser.add_argument("--target-spacing-rule", choices=("nnunet", "median"), default=None,
                        help="target spacing from a dataset: nnunet (default: the median, but a thick axis with few "
                             "voxels takes the 10th percentile of its spacings, as nnU-Net v2) or median (0.1)")
    parser.add_argument("--no-transpose", action="store_true",
                        help="keep the images' axis order (default: the thickest axis first, as nnU-Net v2)")
    parser.add_argument("--resampling", nargs="+", metavar="KEY=VALUE", default=None,
                        help="resampling settings of plans.json, e.g. restore=probabilities image_interpolation=bicubic "
                             "label_rule=keep_classes (RCSegNeXt 0.1's choices; docs/preprocessing.md)")
    parser.add_argument("--fingerprint", help="also write the dataset fingerprint (JSON) to this file")
    parser.add_argument("--workers", type=int, default=1, help="processes reading cases (default 1)")
    parser.add_argument("--slice-plane", choices=("sagittal", "coronal", "axial", "none"), default=None,
                        help="plane of the training series, recorded so that predict warns about a series in another "
                             "plane and picks the right series of a study folder (default: the dataset's; without "
                             "a dataset sagittal, this product's plane; none: record no plane)")


def _resampling(pairs):
    """KEY=VALUE words -> the plan's resampling object (numbers as numbers), None when none are given."""
    if not pairs:
        return None
    from RCSegNeXtCore.errors import PlanError
    from RCSegNeXtCore.plans import RESAMPLING_DEFAULTS
    settings = dict(RESAMPLING_DEFAULTS)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in settings:
            raise PlanError(f"--resampling {pair!r}: give KEY=VALUE with KEY one of {', '.join(RESAMPLING_DEFAULTS)}")
        kind = type(RESAMPLING_DEFAULTS[key])
        try:
            settings[key] = kind(value)
        except ValueError:
            raise PlanError(f"--resampling {pair!r}: {key} takes a {kind.__name__}") from None
    return settings


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from RCSegNeXtCore.planning import make_plans, make_plans_from_values
    from RCSegNeXtCore.errors import PlanError

    overrides = dict(base_channels=args.base_channels, scale=args.scale, expansion=args.expansion,
                     aniso_block=args.aniso_block, iso_block=args.iso_block, batch_size=args.batch_size,
                     resampling=_resampling(args.resampling), transpose_forward=[0, 1, 2] if args.no_transpose else None)
    if args.dataset:
        overrides["target_spacing_rule"] = args.target_spacing_rule
        from RCSegNeXtCore.data.dataset import load_dataset
        from RCSegNeXtCore.data.fingerprint import compute_fingerprint
        dataset = load_dataset(args.dataset)
        fingerprint = compute_fingerprint(dataset, workers=args.workers)
        if args.fingerprint:
            Path(args.fingerprint).write_text(json.dumps(fingerprint, indent=1) + "\n", encoding="utf-8")
        plans = make_plans(fingerprint, dataset, target_spacing=args.spacing, patch_size=args.patch, **overrides)
        source = f"{fingerprint['num_cases']} case(s) of {dataset.root}"
    else:
        if args.spacing is None:
            raise PlanError("give a dataset folder, or --spacing Z Y X (and optionally --patch Z Y X) to plan "
                            "without one, e.g. `rcsegnext plan --spacing 4.0 0.875 0.875 --patch 16 320 320`")
        plans = make_plans_from_values(args.spacing, args.patch or (16, 320, 320), **overrides)
        source = "explicit values"
    plane = args.slice_plane or (None if args.dataset else "sagittal")  # None: keep the fingerprint's plane
    if plane is not None:
        plans.slice_orientation = None if plane == "none" else plane
    path = plans.save(args.output)
    print(f"plans from {source} -> {path}")
    print(f"  target spacing (z,y,x) {plans.target_spacing} ({plans.target_spacing_rule})   patch {plans.patch_size}"
          f"   batch {plans.batch_size}")
    if plans.transpose_forward != [0, 1, 2]:
        print(f"  axes transposed {plans.transpose_forward} (the images' thickest axis first); the values here are in "
              "that order")
    print(f"  kernels {plans.kernels}")
    print(f"  strides {plans.strides}")
    print(f"  labels {plans.labels}   channels {plans.channel_names}   normalisation {plans.normalization}")
    print(f"  slice plane {plans.slice_orientation or 'none recorded (inputs in another plane are not warned about)'}")
    if plans.median_shape:
        print(f"  median shape after crop and resampling {plans.median_shape}")
    return 0
