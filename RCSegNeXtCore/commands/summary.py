"""`rcsegnext summary`: the planned architecture, stage by stage (block, kernel, stride, width, params, GFLOPs)."""
from __future__ import annotations

import argparse

HELP = "print the planned RCSegNeXt architecture per stage (block, kernel, stride, width, parameters, GFLOPs)"

DEFAULT_SPACING = [4.0, 0.875, 0.875]  # Dataset A median spacing (paper Sec. 3.1)
DEFAULT_PATCH = [16, 320, 320]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plans", help="plans.json (or a model folder holding one); default: plan from --spacing")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help=f"voxel spacing in mm to plan for with Algorithm 1 (default {DEFAULT_SPACING})")
    parser.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help=f"patch size for the GFLOPs (default: the plan's, else {DEFAULT_PATCH})")
    parser.add_argument("--base-channels", type=int, help="width of the first stage (default 32)")
    parser.add_argument("--scale", type=int, help="IsoNeXt scale s (default 4)")
    parser.add_argument("--expansion", type=int, help="expansion ratio r (default 2)")
    parser.add_argument("--aniso-block", help="block of anisotropic stages: conv, aninext, convnext, res2net, "
                                              "res2next, isonext (default aninext)")
    parser.add_argument("--iso-block", help="block of isotropic stages (default isonext)")


def run(args: argparse.Namespace) -> int:
    from RCSegNeXtCore.network.summary import summarize_network
    from RCSegNeXtCore.planning import plan_for_patch

    overrides = dict(base_channels=args.base_channels, scale=args.scale, expansion=args.expansion,
                     aniso_block=args.aniso_block, iso_block=args.iso_block)
    if args.plans:
        from RCSegNeXtCore.plans import Plans
        plans = Plans.load(args.plans)
        summary = summarize_network(plans, patch_size=args.patch, **overrides)
        source = f"plans {args.plans}"
    else:
        spacing = args.spacing or DEFAULT_SPACING
        patch = args.patch or DEFAULT_PATCH
        kernels, strides = plan_for_patch(spacing, patch)
        summary = summarize_network(kernels, strides, patch, **overrides)
        source = f"Algorithm 1 for spacing {list(spacing)} (z, y, x)"
    print(f"RCSegNeXt architecture planned by {source}")
    print(summary.format())
    return 0
