"""Tables in the layout of the paper's Tables 1-3 (per-fold Dice %, mean ± std over folds, p vs a baseline) and the
paired comparison of two models (`rcsegnext compare`)."""
from __future__ import annotations

import csv
import io
import math
from typing import Optional, Sequence

from RCSegNeXtCore.evaluation import EvaluationError
from RCSegNeXtCore.evaluation.results import ModelResult, canonical_class
from RCSegNeXtCore.evaluation.stats import format_p, mean_std, paired_t_test

NOTE = ("Dice (%); a fold's value is the mean over that fold's cases (cases with both masks empty excluded); "
        "Avg = mean ± std over folds (ddof=1)")


def _check_same_layout(models: Sequence[ModelResult]) -> None:
    if not models:
        raise EvaluationError("no results to tabulate")
    first = models[0]
    for model in models[1:]:
        if [canonical_class(c) for c in model.classes] != [canonical_class(c) for c in first.classes]:
            raise EvaluationError(f"{model.name}: classes {model.classes} differ from {first.name}'s {first.classes}")
        if model.folds != first.folds:
            raise EvaluationError(f"{model.name}: folds {model.folds} differ from {first.name}'s {first.folds}")


def _fold_p(model: ModelResult, baseline: ModelResult, name: str) -> float:
    return paired_t_test(model.fold_dice[model.class_key(name)], baseline.fold_dice[baseline.class_key(name)]).pvalue


def to_markdown(models: Sequence[ModelResult], baseline: Optional[int] = None) -> str:
    """Markdown table: Model | Fold0 Rectum | Fold0 Tumour | ... | Avg Rectum | Avg Tumour (p vs row `baseline`)."""
    _check_same_layout(models)
    classes, folds = models[0].classes, models[0].folds
    header = ["Model"] + [f"{f.capitalize()} {c.capitalize()}" for f in folds for c in classes] + \
        [f"Avg {c.capitalize()}" for c in classes]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for index, model in enumerate(models):
        cells = [model.name] + [f"{model.fold_dice[model.class_key(c)][k]:.2f}" for k in range(len(folds))
                                for c in classes]
        for c in classes:
            mean, std = model.mean_std(c)
            cell = f"{mean:.2f} ± " + ("n/a" if math.isnan(std) else f"{std:.2f}")
            if baseline is not None and index != baseline:
                cell += f" ({format_p(_fold_p(model, models[baseline], c))})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    note = NOTE + (f"; p: two-tailed paired t-test over folds vs {models[baseline].name}" if baseline is not None
                   else "")
    return "\n".join(lines) + f"\n\n{note}.\n"


def to_csv(models: Sequence[ModelResult], baseline: Optional[int] = None) -> str:
    """CSV with the same content at full precision: model, fold0_rectum, ..., mean_rectum, std_rectum[, p_rectum]."""
    _check_same_layout(models)
    classes, folds = models[0].classes, models[0].folds
    keys = [canonical_class(c) for c in classes]
    header = ["model"] + [f"{f}_{k}" for f in folds for k in keys]
    for k in keys:
        header += [f"mean_{k}", f"std_{k}"] + ([f"p_{k}"] if baseline is not None else [])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for index, model in enumerate(models):
        row = [model.name] + [f"{model.fold_dice[model.class_key(c)][k]:.4f}" for k in range(len(folds))
                              for c in classes]
        for c in classes:
            row += [f"{v:.4f}" for v in model.mean_std(c)]
            if baseline is not None:
                row.append("" if index == baseline else f"{_fold_p(model, models[baseline], c):.6g}")
        writer.writerow(row)
    return out.getvalue()


def _finite_pairs(a: ModelResult, b: ModelResult, class_name: str) -> tuple[list[float], list[float], dict]:
    """Per-case Dice pairs of one class over the cases both models scored (n/a cases dropped)."""
    if not a.cases or not b.cases:
        missing = a.name if not a.cases else b.name
        raise EvaluationError(f"{missing}: has no per-case values (a table holds fold means only); --per-case "
                              "needs run folders or metrics.json files")
    common = [case for case in a.cases if case in b.cases]
    if not common:
        raise EvaluationError(f"{a.name} and {b.name} share no case ids; --per-case pairs the same cases")
    ka, kb = a.class_key(class_name), b.class_key(class_name)
    va, vb, dropped = [], [], 0
    for case in common:
        x, y = a.cases[case].get(ka, float("nan")), b.cases[case].get(kb, float("nan"))
        if math.isfinite(x) and math.isfinite(y):
            va.append(x)
            vb.append(y)
        else:
            dropped += 1
    info = {"only_a": len(set(a.cases) - set(b.cases)), "only_b": len(set(b.cases) - set(a.cases)),
            "n_na": dropped}
    return va, vb, info


def compare_models(a: ModelResult, b: ModelResult, per_case: bool = False) -> list[dict]:
    """Two-tailed paired t-test of A vs B per class: over the per-fold means (the paper's p-values), or over cases."""
    if not per_case and min(len(a.folds), len(b.folds)) < 2:
        raise EvaluationError(f"{a.name if len(a.folds) < 2 else b.name}: has a single fold; the paired test over "
                              "folds needs at least 2 (give run folders or one metrics.json per fold, or pair "
                              "cases with --per-case)")
    if not per_case and sorted(a.folds) != sorted(b.folds):
        raise EvaluationError(f"{a.name} has folds {a.folds} but {b.name} has {b.folds}; the paired test over "
                              "folds needs the same folds (or use --per-case)")
    rows = []
    for name in a.classes:
        if per_case:
            va, vb, info = _finite_pairs(a, b, name)
        else:
            order = [b.folds.index(f) for f in a.folds]
            va = a.fold_dice[name]
            vb = [b.fold_dice[b.class_key(name)][i] for i in order]
            info = {}
        test = paired_t_test(va, vb)
        (mean_a, std_a), (mean_b, std_b) = mean_std(va), mean_std(vb)
        rows.append({"class": name, "paired_over": "cases" if per_case else "folds", "n": test.n,
                     "mean_a": mean_a, "std_a": std_a, "mean_b": mean_b, "std_b": std_b,
                     "mean_difference": test.mean_difference, "t": test.statistic, "df": test.df,
                     "p": test.pvalue, "p_text": format_p(test.pvalue), **info})
    return rows


def comparison_text(a: ModelResult, b: ModelResult, rows: list[dict]) -> str:
    """Plain-text lines for the terminal."""
    over = rows[0]["paired_over"] if rows else "folds"
    lines = [f"A = {a.name}, B = {b.name}; two-tailed paired t-test over {over} (Dice %)"]
    for r in rows:
        extra = "".join(f", {k}={r[k]}" for k in ("only_a", "only_b", "n_na") if r.get(k))
        lines.append(f"{r['class']:>10}: A {r['mean_a']:.2f} ± {r['std_a']:.2f}  B {r['mean_b']:.2f} ± "
                     f"{r['std_b']:.2f}  A-B {r['mean_difference']:+.2f}  t={r['t']:.3f} df={r['df']}  "
                     f"p={r['p']:.4g} ({r['p_text']}){extra}")
    return "\n".join(lines)
