"""`rcsegnext check DATASET`: validate an nnU-Net v2 raw dataset and list every problem, one line each."""
from __future__ import annotations

import argparse

HELP = "validate a dataset folder (nnU-Net v2 raw layout): list every problem with what to do; exit 1 if any"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset folder with imagesTr/, labelsTr/, dataset.json (optional imagesTs/)")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args: argparse.Namespace) -> int:
    from RCSegNeXtCore.data.validation import inspect_dataset

    report = inspect_dataset(args.dataset, progress=not args.no_progress)
    print(f"Dataset {report.root}")
    for line in report.summary_lines():
        print(f"  {line}")
    if not report.problems:
        print("OK: no problems found")
        return 0
    cases = {p.case_id for p in report.problems}
    print(f"{len(report.problems)} problem(s) in {len(cases)} case(s)/file(s); nothing was changed:")
    for problem in report.problems:
        print(str(problem))
    return 1
