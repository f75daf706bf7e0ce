"""Cross-validation results of one model: per-fold Dice (%) per class, and per-case Dice when known.

Sources: a run folder (`RUN/fold_K/validation/metrics.json`, one per fold), explicit metrics.json files (one per
fold), or a CSV / Markdown table of per-fold values (columns `Fold0 Rectum`, `fold0_rectum`, ...; first column =
model name), e.g. a table written by `rcsegnext report` or typed from the paper.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from RCSegNeXtCore.evaluation import EvaluationError
from RCSegNeXtCore.evaluation.evaluate import load_metrics
from RCSegNeXtCore.evaluation.stats import mean_std

_FOLD_COLUMN = re.compile(r"^\s*fold[\s_-]*(\d+)[\s_-]*([A-Za-z][\w ]*?)\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_ALIASES = {"rect": "rectum", "tumor": "tumour"}


def canonical_class(name: str) -> str:
    """Key used to match classes across sources: 'Tumor', 'tumour' and 'TUMOUR' match; 'Rect' matches 'rectum'."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _ALIASES.get(key, key)


@dataclass
class ModelResult:
    """One model's cross-validation result (a row of Tables 1-3). Dice values are in percent."""

    name: str
    classes: list[str]
    folds: list[str]
    fold_dice: dict[str, list[float]]  # class -> Dice (%) per fold, in `folds` order
    cases: Optional[dict[str, dict[str, float]]] = field(default=None)  # case -> class -> Dice (%)

    def class_key(self, name: str) -> str:
        """This result's own spelling of class `name` (matched with `canonical_class`)."""
        for own in self.classes:
            if canonical_class(own) == canonical_class(name):
                return own
        raise EvaluationError(f"{self.name}: has no class {name!r} (classes: {', '.join(self.classes)})")

    def fold_values(self, name: str) -> list[float]:
        """Per-fold Dice (%) of class `name` (any spelling `canonical_class` matches)."""
        return self.fold_dice[self.class_key(name)]

    def mean_std(self, name: str) -> tuple[float, float]:
        """Mean ± std (ddof=1) over folds of class `name`, as in the paper's Avg columns."""
        return mean_std(self.fold_values(name))


def fold_label(path: Path, index: int) -> str:
    """'fold_3' from .../fold_3/validation/metrics.json (or any parent named fold_K / foldK), else 'fold{index}'."""
    for part in reversed(path.parts[:-1]):
        match = re.fullmatch(r"fold[_-]?(\d+)", part, re.IGNORECASE)
        if match:
            return f"fold{int(match.group(1))}"
    return f"fold{index}"


def _fold_means(metrics: dict, source: Path) -> dict[str, float]:
    """Class -> mean Dice (%) over the fold's cases (n/a cases excluded)."""
    if "summary" in metrics:
        try:
            return {name: 100.0 * float(entry["dice"]["mean"]) for name, entry in metrics["summary"].items()}
        except (KeyError, TypeError, ValueError):
            raise EvaluationError(f"{source}: \"summary\" lacks {{class: {{dice: {{mean}}}}}}; expected a "
                                  "metrics.json from `rcsegnext evaluate`") from None
    cases = metrics.get("cases") or {}
    if not cases:
        raise EvaluationError(f"{source}: holds no cases")
    names = list(next(iter(cases.values())))
    means = {}
    for name in names:
        values = [float(c[name]["dice"]) for c in cases.values() if name in c and math.isfinite(float(c[name]["dice"]))]
        means[name] = 100.0 * sum(values) / len(values) if values else float("nan")
    return means


def from_metrics_files(paths: Sequence[str | os.PathLike], name: Optional[str] = None) -> ModelResult:
    """One model from one metrics.json per fold (fold names from `fold_K` folders in the paths)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise EvaluationError("no metrics files given")
    folds, per_fold, cases = [], [], {}
    for index, path in enumerate(paths):
        metrics = load_metrics(path)
        label = fold_label(path, index)
        if label in folds:
            raise EvaluationError(f"{path}: fold {label} given twice")
        folds.append(label)
        per_fold.append(_fold_means(metrics, path))
        for case_id, per_class in (metrics.get("cases") or {}).items():
            key = case_id if case_id not in cases else f"{label}/{case_id}"
            cases[key] = {c: 100.0 * float(m["dice"]) for c, m in per_class.items()}
    classes = list(per_fold[0])
    for path, means in zip(paths, per_fold):
        if [canonical_class(c) for c in means] != [canonical_class(c) for c in classes]:
            raise EvaluationError(f"{path}: classes {list(means)} differ from {paths[0]}'s {classes}")
    fold_dice = {c: [means[c] for means in per_fold] for c in classes}
    fold_dir = paths[0].parent.parent
    default = fold_dir.parent.name if re.fullmatch(r"fold[_-]?\d+", fold_dir.name, re.IGNORECASE) else "model"
    return ModelResult(name or default, classes, folds, fold_dice, cases or None)


def from_run_dir(run_dir: str | os.PathLike, name: Optional[str] = None) -> ModelResult:
    """One model from a training run folder: RUN/fold_K/validation/metrics.json for every fold_K."""
    run_dir = Path(run_dir)
    fold_dirs = sorted((p for p in run_dir.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()),
                       key=lambda p: int(p.name[5:]))
    if not fold_dirs:
        raise EvaluationError(f"{run_dir}: holds no fold_K folders; expected RUN/fold_K/validation/metrics.json "
                              "(or pass metrics.json files / a results table)")
    files = [d / "validation" / "metrics.json" for d in fold_dirs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EvaluationError(f"{run_dir}: folds without validation metrics: {', '.join(missing)}; finish their "
                              "training/validation or pass the existing metrics.json files explicitly")
    return from_metrics_files(files, name or run_dir.resolve().name)


def _cell_number(cell: str, where: str) -> float:
    match = _NUMBER.search(cell.replace(",", "."))
    if not match:
        raise EvaluationError(f"{where}: {cell!r} is not a number")
    return float(match.group(0))


def _rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".md", ".markdown") or text.lstrip().startswith("|"):
        rows = []
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("|"):
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                continue  # the |---|---| separator line
            rows.append(cells)
        return rows
    return [row for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]


def read_table(path: str | os.PathLike) -> list[ModelResult]:
    """Every row of a CSV or Markdown table of per-fold Dice values (%), one ModelResult per row."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such table file")
    rows = _rows(path)
    if len(rows) < 2:
        raise EvaluationError(f"{path}: needs a header row and at least one model row")
    header, columns = rows[0], {}
    for index, title in enumerate(header[1:], start=1):
        match = _FOLD_COLUMN.match(title)
        if match:
            columns[index] = (f"fold{int(match.group(1))}", match.group(2).strip())
    if not columns:
        raise EvaluationError(f"{path}: no per-fold columns in header {header}; name them like 'Fold0 Rectum' "
                              "or 'fold0_rectum'")
    folds = list(dict.fromkeys(fold for fold, _ in columns.values()))
    classes = list(dict.fromkeys(c for _, c in columns.values()))
    results = []
    for line, row in enumerate(rows[1:], start=2):
        where = f"{path} row {line} ({row[0] if row else ''})"
        if len(row) < len(header):
            raise EvaluationError(f"{where}: has {len(row)} cells, the header has {len(header)}")
        values = {(fold, c): _cell_number(row[i], where) for i, (fold, c) in columns.items()}
        missing = [f"{f} {c}" for f in folds for c in classes if (f, c) not in values]
        if missing:
            raise EvaluationError(f"{path}: header lacks columns {', '.join(missing)}")
        fold_dice = {c: [values[(f, c)] for f in folds] for c in classes}
        results.append(ModelResult(row[0] or f"row {line - 1}", classes, folds, fold_dice))
    return results


def select_row(results: list[ModelResult], row: Optional[str], source: str) -> ModelResult:
    """Pick a table row by 1-based number or model name; the only row when `row` is None."""
    if row is None:
        if len(results) == 1:
            return results[0]
        raise EvaluationError(f"{source}: holds {len(results)} models ({', '.join(r.name for r in results)}); "
                              "choose one with --row-a / --row-b (number from 1, or model name)")
    if row.isdigit():
        if not 1 <= int(row) <= len(results):
            raise EvaluationError(f"{source}: row {row} out of range 1..{len(results)}")
        return results[int(row) - 1]
    matches = [r for r in results if r.name.strip().lower() == row.strip().lower()]
    if len(matches) != 1:
        raise EvaluationError(f"{source}: {len(matches)} rows named {row!r} (rows: "
                              f"{', '.join(r.name for r in results)})")
    return matches[0]


def load_results(source: str | os.PathLike, row: Optional[str] = None) -> ModelResult:
    """A run folder, a metrics.json (one fold) or a table (+ row) as a ModelResult."""
    path = Path(source)
    if path.is_dir():
        return from_run_dir(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such run folder, metrics file or table")
    if path.suffix.lower() == ".json":
        return from_metrics_files([path])
    return select_row(read_table(path), row, str(path))
