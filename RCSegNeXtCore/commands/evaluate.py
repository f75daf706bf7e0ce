"""`rcsegnext evaluate --pred DIR --ref DIR -o metrics.json`: Dice, HD95 and volumes per case and class."""
from __future__ import annotations

import argparse
import math
import sys

HELP = "score predicted label maps against references (Dice, HD95, volume) and write metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
    parser.add_argument("--ref", required=True, metavar="DIR", help="folder of reference label maps (same case ids)")
    parser.add_argument("-o", "--output", metavar="FILE", help="metrics.json to write (default: PRED/metrics.json)")
    parser.add_argument("--labels", metavar="SPEC", help="classes as rectum=1,tumour=2 or a dataset.json "
                        "(default: dataset.json in REF or its parent)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _labels(spec):
    from pathlib import Path

    from RCSegNeXtCore.evaluation.evaluate import labels_from_dataset_json, parse_labels
    if spec is None:
        return None
    return labels_from_dataset_json(spec) if spec.endswith(".json") or Path(spec).is_file() else parse_labels(spec)


def _fmt(entry: dict) -> str:
    mean, std = entry["mean"], entry["std"]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from RCSegNeXtCore.evaluation.evaluate import evaluate_folders, write_metrics
    result = evaluate_folders(args.pred, args.ref, _labels(args.labels), progress=not args.quiet)
    output = Path(args.output) if args.output else Path(args.pred) / "metrics.json"
    write_metrics(result, output)
    print(f"{result['n_cases']} cases -> {output}")
    for name, entry in result["summary"].items():
        print(f"  {name}: Dice {_fmt(entry['dice'])} (n={entry['dice']['count']}, both empty "
              f"{entry['n_both_empty']}); HD95 {_fmt(entry['hd95'])} mm (one side empty {entry['n_hd95_inf']}); "
              f"|volume diff| {_fmt(entry['abs_volume_diff_ml'])} ml")
    for case_id, extra in result["unexpected_labels"].items():
        found = "; ".join(f"{role} {values}" for role, values in extra.items() if values)
        print(f"warning: case {case_id}: label values not in the class list (not scored): {found}", file=sys.stderr)
    if result["unmatched_predictions"]:
        print(f"note: {len(result['unmatched_predictions'])} predictions have no reference: "
              f"{', '.join(result['unmatched_predictions'])}", file=sys.stderr)
    if result["missing_predictions"]:
        print(f"rcsegnext evaluate: {len(result['missing_predictions'])} reference cases have no prediction "
              f"(not scored): {', '.join(result['missing_predictions'])}", file=sys.stderr)
        return 1
    return 0
