"""`rcsegnext report RUN_DIR_OR_METRICS... [-o out.md] [--csv out.csv]`: the paper's Tables 1-3 layout."""
from __future__ import annotations

import argparse

HELP = "cross-validation table (per-fold Dice, mean ± std over folds) as Markdown and CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="run folder (RUN/fold_K/validation/metrics.json: one row each), metrics.json files "
                        "(together one row, one file per fold) or a CSV/Markdown table of per-fold values")
    parser.add_argument("-o", "--output", metavar="FILE.md", help="write the Markdown table here")
    parser.add_argument("--csv", metavar="FILE.csv", help="write the table as CSV here")
    parser.add_argument("--name", help="row name for the metrics.json files given explicitly (default: run name)")
    parser.add_argument("--baseline", metavar="ROW", help="add p-values (paired t-test over folds) of every row "
                        "against this row (number from 1, or model name), as in the paper's tables")


def collect(sources: list[str], name: str | None = None) -> list:
    """ModelResults in the order the sources were given (all explicit metrics.json files form one row)."""
    from pathlib import Path

    from RCSegNeXtCore.evaluation import EvaluationError
    from RCSegNeXtCore.evaluation.results import from_metrics_files, from_run_dir, read_table
    models, json_files, json_slot = [], [], None
    for source in sources:
        path = Path(source)
        if path.is_dir():
            models.append(from_run_dir(path))
        elif path.is_file() and path.suffix.lower() == ".json":
            json_slot = len(models) if json_slot is None else json_slot
            json_files.append(path)
        elif path.is_file():
            models.extend(read_table(path))
        else:
            raise EvaluationError(f"{path}: no such run folder, metrics file or table")
    if json_files:
        models.insert(json_slot, from_metrics_files(json_files, name))
    return models


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from RCSegNeXtCore.evaluation.report import to_csv, to_markdown
    from RCSegNeXtCore.evaluation.results import select_row
    models = collect(args.sources, args.name)
    baseline = None
    if args.baseline is not None:
        baseline = models.index(select_row(models, args.baseline, "--baseline"))
    markdown = to_markdown(models, baseline)
    print(markdown, end="")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(markdown, encoding="utf-8")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        Path(args.csv).write_text(to_csv(models, baseline), encoding="utf-8")
    return 0
