"""`rcsegnext phantom OUT`: write the synthetic sagittal T2 pelvis dataset (nnU-Net v2 raw layout)."""
from __future__ import annotations

import argparse

HELP = "write a synthetic sagittal T2 pelvis dataset (rectum 1, tumour 2) in nnU-Net v2 raw layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="dataset folder to write (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same cases (default 0)")
    parser.add_argument("--size", choices=("full", "small"), default="full",
                        help="full: 18-24 x 320-512 x 320-512 voxels at ~[4.0, 0.875, 0.875] mm (paper geometry); "
                             "small: 16 x 96 x 96 at ~[5.0, 2.5, 2.5] mm for quick runs (default full)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="fixed image size (voxels)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="fixed spacing (mm)")
    parser.add_argument("--workers", type=int, default=1, help="processes generating cases (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    parser.add_argument("--preview", metavar="PNG", help="also save the middle rectum slice of the first cases "
                                                          "with label contours as a PNG (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args: argparse.Namespace) -> int:
    import time

    from RCSegNeXtCore.phantom import case_ids, make_phantom_dataset

    start = time.perf_counter()
    out = make_phantom_dataset(args.output, args.cases, args.seed, size=args.size, shape=args.shape,
                               spacing=args.spacing, workers=args.workers, overwrite=args.overwrite,
                               progress=not args.no_progress)
    print(f"Phantom dataset: {out} ({args.cases} cases, seed {args.seed}, size {args.size}) "
          f"in {time.perf_counter() - start:.1f} s")
    if args.preview:
        from RCSegNeXtCore.phantom.preview import save_dataset_preview

        print(f"Preview: {save_dataset_preview(out, args.preview, case_ids(min(args.cases, 4)))}")
    return 0
