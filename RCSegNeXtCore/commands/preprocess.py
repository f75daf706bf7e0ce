"""`rcsegnext preprocess`: crop, normalise and resample every training case into a memory-mappable cache."""
from __future__ import annotations

import argparse

HELP = "preprocess a dataset (crop, z-score, resample to the plan's spacing) into .npy files for training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset folder (nnU-Net v2 raw layout)")
    parser.add_argument("-o", "--output", required=True, help="output folder (the cache); re-runs skip done cases")
    parser.add_argument("--plans", help="plans.json (or a folder holding one); default: plan from the dataset now")
    parser.add_argument("--workers", type=int, default=1, help="cases preprocessed in parallel (default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every case when the folder was preprocessed with a different plan")


def run(args: argparse.Namespace) -> int:
    import time

    from RCSegNeXtCore.data.cache import list_preprocessed_cases, preprocess_dataset
    from RCSegNeXtCore.data.dataset import load_dataset
    from RCSegNeXtCore.plans import Plans

    dataset = load_dataset(args.dataset)
    if args.plans:
        plans = Plans.load(args.plans)
    else:
        from RCSegNeXtCore.data.fingerprint import compute_fingerprint
        from RCSegNeXtCore.planning import make_plans
        plans = make_plans(compute_fingerprint(dataset, workers=args.workers), dataset)
        print(f"no --plans given: planned from the dataset (target spacing {plans.target_spacing})")
    before = set(list_preprocessed_cases(args.output))
    start = time.perf_counter()
    cases = preprocess_dataset(dataset, plans, args.output, workers=args.workers, overwrite=args.overwrite)
    skipped = len(before & set(cases))
    print(f"{len(cases)} case(s) in {args.output} ({len(cases) - skipped} preprocessed, {skipped} already done) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
