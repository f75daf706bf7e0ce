"""`rcsegnext compare A B [--per-case]`: two-tailed paired t-test between two models (the paper's p-values)."""
from __future__ import annotations

import argparse

HELP = "p-value (two-tailed paired t-test) between two models, over the per-fold means or over cases"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="run folder, metrics.json or CSV/Markdown table of per-fold Dice")
    parser.add_argument("b", metavar="B", help="the same for the second model")
    parser.add_argument("--row-a", help="row of A when A is a table with several models (number from 1, or name)")
    parser.add_argument("--row-b", help="row of B when B is a table with several models")
    parser.add_argument("--per-case", action="store_true",
                        help="pair per-case Dice over the cases both models scored (default: per-fold means)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from RCSegNeXtCore.evaluation.evaluate import write_metrics
    from RCSegNeXtCore.evaluation.report import compare_models, comparison_text
    from RCSegNeXtCore.evaluation.results import load_results
    a = load_results(args.a, args.row_a)
    b = load_results(args.b, args.row_b)
    rows = compare_models(a, b, per_case=args.per_case)
    print(comparison_text(a, b, rows))
    if args.json:
        write_metrics({"a": a.name, "b": b.name, "comparison": rows}, Path(args.json))
    return 0
