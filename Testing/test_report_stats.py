"""The paper's statistics: t distribution vs scipy, Tables 1 and 3 reproduced from their own fold columns, and the
`report` / `compare` commands on run folders, metrics files and tables."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from RCSegNeXtCore.cli import main
from RCSegNeXtCore.evaluation import EvaluationError
from RCSegNeXtCore.evaluation.evaluate import build_result, write_metrics
from RCSegNeXtCore.evaluation.report import compare_models, to_csv, to_markdown
from RCSegNeXtCore.evaluation.results import from_run_dir, load_results, read_table
from RCSegNeXtCore.evaluation.stats import (betainc, format_p, mean_std, paired_t_test, student_t_cdf,
                                            t_two_sided_p)

# Fold0..Fold4 (Rect, Tumor) | printed Avg mean, std (rect, tumour) | printed p (rect, tumour). Table 3 p: vs row 1.
TABLE3 = """\
Conv/Conv          69.68 60.67 64.12 58.36 73.11 52.77 68.67 55.97 66.74 62.33 | 68.46 3.35 58.02 3.79 | - -
AniNeXt/Conv       71.51 61.55 66.57 58.96 74.80 56.98 67.88 57.77 69.53 63.83 | 70.06 3.232 59.82 2.83 | p=0.06 p<0.05
AniNeXt/ConvNeXt   72.64 61.40 66.85 61.60 75.14 61.23 69.65 58.68 68.52 64.75 | 70.56 3.32 61.53 2.16 | p<0.01 p=0.05
AniNeXt/Res2Net    70.24 58.95 64.18 59.50 72.83 56.41 68.46 60.88 67.06 65.50 | 68.55 3.26 60.25 3.35 | p=0.60 p=0.13
AniNeXt/Res2NeXt   71.08 62.67 68.33 60.04 75.35 61.87 69.77 61.33 70.25 64.31 | 70.96 2.65 62.04 1.59 | p=0.01 p<0.05
AniNeXt/IsoNeXt    72.64 62.35 69.70 61.52 76.01 64.49 69.88 61.23 70.03 67.51 | 71.65 2.72 63.42 2.62 | p=0.01 p<0.05
"""
# Table 1 (Dataset A); p vs "Ours" (last row).
TABLE1 = """\
2D-nnUNet 68.65 49.81 67.76 52.10 72.06 45.20 67.66 45.70 70.55 54.08 | 69.34 1.91 49.38 3.90 | p<0.05 p<0.01
3D-nnUNet 71.13 57.55 68.62 60.55 73.70 53.98 69.45 59.78 69.96 63.91 | 70.57 1.97 59.15 3.38 | p=0.05 p=0.07
3D-UNet   69.09 45.52 60.66 59.04 69.31 55.62 66.10 47.87 65.53 58.45 | 66.14 3.51 53.30 6.22 | p<0.01 p=0.01
Res-UNet  67.11 55.50 62.46 50.96 70.59 48.15 67.50 50.21 67.94 58.66 | 67.12 2.94 52.70 4.28 | p=0.01 p<0.01
MNet      69.44 57.62 61.15 50.00 68.64 48.78 65.97 52.44 68.02 59.08 | 66.64 3.33 53.58 4.58 | p=0.01 p<0.01
MedNeXt-B 71.11 56.76 65.76 62.94 72.59 52.75 68.69 58.76 68.95 64.33 | 69.42 2.60 59.11 4.69 | p<0.05 p=0.12
UNETR     64.88 42.39 57.95 46.52 63.77 35.52 64.90 44.92 60.83 42.69 | 62.47 3.02 42.41 4.21 | p<0.01 p<0.01
nnFormer  69.00 52.42 65.78 57.42 73.63 54.28 67.54 49.41 67.67 61.07 | 68.73 2.97 54.92 4.51 | p<0.01 p<0.01
SegMamba  68.93 54.48 61.81 52.46 71.08 48.20 65.91 48.92 64.84 52.77 | 66.51 3.60 51.37 2.69 | p<0.01 p<0.01
Ours      72.64 62.35 69.70 61.52 76.01 64.49 69.88 61.23 70.03 67.51 | 71.65 2.72 63.42 2.62 | - -
"""

# Table 2 (Dataset B); p vs "Ours" (last row).
TABLE2 = """\
2D-nnUNet 62.07 35.28 61.93 31.26 63.48 39.02 61.48 30.07 60.64 35.14 | 61.92 1.04 34.15 3.57 | p<0.01 p<0.01
3D-nnUNet 68.71 42.00 66.58 36.62 68.56 41.90 68.26 37.26 66.86 44.87 | 67.79 1.00 40.53 3.50 | p=0.10 p<0.01
3D-UNet   61.13 15.89 55.21 13.59 60.17 20.52 63.05 19.90 55.76 29.35 | 59.06 3.43 19.85 6.03 | p<0.01 p<0.01
Res-UNet  62.08 38.43 59.11 31.93 57.69 37.77 62.71 31.61 57.39 39.30 | 59.80 2.47 35.81 3.73 | p<0.01 p<0.01
MNet      58.61 36.97 59.27 37.62 59.16 39.80 60.09 34.98 59.63 37.96 | 59.35 0.55 37.47 1.74 | p<0.01 p<0.01
MedNeXt-B 66.46 40.94 64.12 34.76 65.92 44.00 66.15 37.43 64.63 43.49 | 65.46 1.02 40.12 3.97 | p<0.01 p=0.01
UNETR     58.57 20.31 56.85 16.88 59.05 21.66 58.97 21.28 56.26 20.66 | 57.94 1.29 20.16 1.91 | p<0.01 p<0.01
nnFormer  63.59 28.53 63.31 20.09 64.79 29.84 64.11 22.65 63.74 25.11 | 63.91 0.57 25.24 4.04 | p<0.01 p<0.01
SegMamba  61.23 37.49 56.90 29.68 57.95 37.44 61.65 32.30 51.79 34.14 | 57.90 3.98 34.21 3.37 | p<0.01 p<0.01
Ours      69.59 48.08 67.57 43.04 69.06 48.57 68.72 38.19 66.51 49.36 | 68.29 1.24 45.45 4.75 | - -
"""


def parse_paper(text: str) -> list[dict]:
    rows = []
    for line in text.strip().splitlines():
        values, avg, printed = line.split("|")
        name, *folds = values.split()
        folds = [float(v) for v in folds]
        rows.append({"name": name, "rect": folds[0::2], "tumour": folds[1::2],
                     "avg": [float(v) for v in avg.split()], "p": printed.split()})
    return rows


def paper_markdown(text: str) -> str:
    """The paper's rows as a Markdown table in the column naming `rcsegnext report` writes."""
    header = "| Model | " + " | ".join(f"Fold{k} Rect | Fold{k} Tumor" for k in range(5)) + " |"
    lines = [header, "|---" * 11 + "|"]
    for row in parse_paper(text):
        cells = [f"{r:.2f} | {t:.2f}" for r, t in zip(row["rect"], row["tumour"])]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def agrees(p: float, printed: str) -> bool:
    """Is p consistent with the paper's notation? 'p<0.05' -> p < 0.05; 'p=0.06' -> p rounds to 0.06."""
    value = float(printed[2:])
    return p < value if printed[1] == "<" else abs(p - value) <= 0.005 + 1e-12


# ---- the t distribution and the test ------------------------------------------------------------------------------
def test_incomplete_beta_and_t_distribution_match_scipy():
    rng = np.random.default_rng(0)
    for a, b, x in zip(rng.uniform(0.05, 60, 300), rng.uniform(0.05, 60, 300), rng.uniform(0, 1, 300)):
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-12)
    for df in (1, 2, 4, 9, 30, 250):
        for t in np.linspace(-15, 15, 61):
            assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("n", [2, 5, 12, 40])
def test_paired_t_test_matches_scipy_ttest_rel(n):
    rng = np.random.default_rng(n)
    a = rng.normal(70, 3, n)
    b = a - rng.normal(1.0, 2.0, n)
    ours, ref = paired_t_test(a, b), stats.ttest_rel(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.df == n - 1


def test_paired_t_test_degenerate_inputs():
    assert math.isnan(paired_t_test([1, 2, 3], [1, 2, 3]).pvalue)       # no difference at all (scipy: nan)
    assert paired_t_test([2, 3, 4], [1, 2, 3]).pvalue == 0.0            # constant non-zero difference
    with pytest.raises(EvaluationError, match="at least 2"):
        paired_t_test([1.0], [2.0])
    with pytest.raises(EvaluationError, match="5 and 4"):
        paired_t_test([1, 2, 3, 4, 5], [1, 2, 3, 4])
    with pytest.raises(EvaluationError, match="finite"):
        paired_t_test([1, float("nan")], [1, 2])


def test_format_p_and_mean_std():
    assert [format_p(p) for p in (0.004, 0.0483, 0.0644, 0.0142, 0.6002, float("nan"))] == \
        ["p<0.01", "p<0.05", "p=0.06", "p=0.01", "p=0.60", "p=n/a"]
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(np.std([1, 2, 4], ddof=1))


# ---- the paper's own numbers --------------------------------------------------------------------------------------
@pytest.fixture
def table3(tmp_path):
    path = tmp_path / "table3.md"
    path.write_text(paper_markdown(TABLE3), encoding="utf-8")
    return path


def test_table3_mean_std_reproduced(table3):
    models, paper = read_table(table3), parse_paper(TABLE3)
    assert [m.name for m in models] == [r["name"] for r in paper] and models[0].classes == ["Rect", "Tumor"]
    for model, row in zip(models, paper):
        (rm, rs), (tm, ts) = model.mean_std("rectum"), model.mean_std("tumour")
        for ours, printed in zip((rm, rs, tm, ts), row["avg"]):
            assert abs(ours - printed) <= 0.005 + 1e-9, (model.name, ours, printed)
    assert models[5].mean_std("rectum") == pytest.approx((71.652, 2.7183), abs=5e-4)  # "71.65 ± 2.72"


def test_table3_p_values_reproduced(table3):
    models, paper = read_table(table3), parse_paper(TABLE3)
    rows12 = compare_models(models[1], models[0])
    assert [round(r["p"], 3) for r in rows12] == [0.064, 0.048]
    assert [r["p_text"] for r in rows12] == ["p=0.06", "p<0.05"]
    for model, row in zip(models[1:], paper[1:]):
        for result, printed in zip(compare_models(model, models[0]), row["p"]):
            assert agrees(result["p"], printed), (model.name, result["class"], result["p"], printed)


@pytest.mark.parametrize("table, p_expected, avg_expected", [
    (TABLE1, {("MNet", "Rect"): 0.0163}, {("3D-nnUNet", "tumour std"): 3.685}),
    (TABLE2, {}, {}),
], ids=["table1", "table2"])
def test_tables_1_and_2_p_values_and_means_against_ours(tmp_path, table, p_expected, avg_expected):
    """Every printed p of Tables 1-2 follows from the fold columns, except Table 1 MNet rectum (p = 0.0163, printed
    p=0.01: truncated, not rounded); every printed average agrees within 0.01 (the fold values are printed rounded)
    except Table 1 3D nnUNet tumour std: the folds give 3.685 (3.296 with ddof=0), printed 3.38."""
    path = tmp_path / "table.md"
    path.write_text(paper_markdown(table), encoding="utf-8")
    models, paper = read_table(path), parse_paper(table)
    ours = models[-1]
    p_mismatch, avg_mismatch = {}, {}
    for model, row in zip(models, paper):
        computed = [*model.mean_std("rect"), *model.mean_std("tumor")]
        for label, value, printed in zip(("rect mean", "rect std", "tumour mean", "tumour std"), computed,
                                         row["avg"]):
            if abs(value - printed) > 0.01:
                avg_mismatch[(model.name, label)] = round(value, 3)
        if model is ours:
            continue
        for result, printed in zip(compare_models(model, ours), row["p"]):
            if not agrees(result["p"], printed):
                p_mismatch[(model.name, result["class"])] = round(result["p"], 4)
    assert p_mismatch == p_expected
    assert avg_mismatch == avg_expected


def test_cli_compare_and_report_on_the_paper_table(table3, tmp_path, capsys):
    assert main(["compare", str(table3), str(table3), "--row-a", "AniNeXt/Conv", "--row-b", "1"]) == 0
    out = capsys.readouterr().out
    assert "p=0.06436" in out and "(p=0.06)" in out and "p=0.04828" in out and "(p<0.05)" in out
    md, csv_path = tmp_path / "out" / "t3.md", tmp_path / "out" / "t3.csv"
    assert main(["report", str(table3), "--baseline", "1", "-o", str(md), "--csv", str(csv_path)]) == 0
    text = md.read_text(encoding="utf-8")
    assert "| 70.06 ± 3.23 (p=0.06) | 59.82 ± 2.83 (p<0.05) |" in text
    assert "| 71.65 ± 2.72 (p=0.01) | 63.42 ± 2.62 (p=0.03) |" in text   # paper prints p<0.05 for 0.0346
    again = read_table(csv_path)          # the CSV reads back as the same fold values
    assert again[5].fold_values("rectum") == [72.64, 69.70, 76.01, 69.88, 70.03]
    assert read_table(md)[1].fold_values("tumour") == [61.55, 58.96, 56.98, 57.77, 63.83]
    assert main(["compare", str(table3), str(table3)]) == 2
    assert "--row-a" in capsys.readouterr().err


# ---- run folders and metrics files --------------------------------------------------------------------------------
def _fake_case(rect: float, tumour: float) -> dict:
    entry = {"hd95": 3.0, "volume_pred_ml": 10.0, "volume_ref_ml": 11.0, "volume_diff_ml": -1.0}
    return {"rectum": dict(entry, dice=rect), "tumour": dict(entry, dice=tumour)}


def make_run(root, seed: int, n_cases: int = 4):
    """RUN/fold_K/validation/metrics.json for 5 folds; case ids shared between runs; one tumour n/a per fold."""
    rng = np.random.default_rng(seed)
    for fold in range(5):
        cases = {}
        for k in range(n_cases):
            tumour = float("nan") if k == 0 else float(rng.uniform(0.4, 0.8))
            cases[f"case_{fold}{k}"] = _fake_case(float(rng.uniform(0.6, 0.8)), tumour)
        write_metrics(build_result(cases, {"background": 0, "rectum": 1, "tumour": 2}),
                      root / f"fold_{fold}" / "validation" / "metrics.json")
    return root


def test_report_and_compare_run_folders(tmp_path, capsys):
    run_a, run_b = make_run(tmp_path / "runA", 1), make_run(tmp_path / "runB", 2)
    a, b = from_run_dir(run_a), from_run_dir(run_b)
    assert a.name == "runA" and a.folds == [f"fold{k}" for k in range(5)]
    # a fold's value is the mean over its cases (n/a excluded), in percent
    fold0 = [a.cases[f"case_0{k}"]["tumour"] for k in range(1, 4)]
    assert a.fold_dice["tumour"][0] == pytest.approx(np.mean(fold0))
    assert a.mean_std("rectum") == pytest.approx((np.mean(a.fold_dice["rectum"]),
                                                  np.std(a.fold_dice["rectum"], ddof=1)))
    folds = compare_models(a, b)
    for row, name in zip(folds, ("rectum", "tumour")):
        assert row["p"] == pytest.approx(stats.ttest_rel(a.fold_dice[name], b.fold_dice[name]).pvalue, rel=1e-9)
    cases = compare_models(a, b, per_case=True)
    ids = sorted(c for c in a.cases if not math.isnan(a.cases[c]["tumour"]))
    expected = stats.ttest_rel([a.cases[c]["tumour"] for c in ids], [b.cases[c]["tumour"] for c in ids]).pvalue
    assert cases[1]["p"] == pytest.approx(expected, rel=1e-9) and cases[1]["n"] == 15 and cases[1]["n_na"] == 5
    assert main(["compare", str(run_a), str(run_b), "--per-case", "--json", str(tmp_path / "c.json")]) == 0
    assert "paired t-test over cases" in capsys.readouterr().out
    # report: run folders (one row each) + explicit metrics files (one row)
    files = [str(run_b / f"fold_{k}" / "validation" / "metrics.json") for k in range(5)]
    assert main(["report", str(run_a), *files, "--name", "B-files", "--baseline", "runA"]) == 0
    out = capsys.readouterr().out
    assert "| runA |" in out and "| B-files |" in out and "Fold4 Tumour" in out
    rows = [line for line in to_markdown([a, b]).splitlines() if line.startswith("| run")]
    assert len(rows) == 2 and rows[1].count("±") == 2
    assert to_csv([a, b]).startswith("model,fold0_rectum,fold0_tumour")


def test_clear_errors_for_incomplete_or_mismatched_results(tmp_path, table3):
    run = make_run(tmp_path / "run", 3)
    (run / "fold_2" / "validation" / "metrics.json").unlink()
    with pytest.raises(EvaluationError, match=r"fold_2.*metrics\.json"):
        from_run_dir(run)
    with pytest.raises(EvaluationError, match="no fold_K"):
        from_run_dir(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("model,mean\nx,1\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match="Fold0 Rectum"):
        read_table(bad)
    row = load_results(table3, "2")
    with pytest.raises(EvaluationError, match="per-case"):
        compare_models(row, load_results(table3, "1"), per_case=True)
    single = load_results(run / "fold_0" / "validation" / "metrics.json")
    assert single.folds == ["fold0"] and "± n/a" in to_markdown([single])
    with pytest.raises(EvaluationError, match="single fold.*--per-case"):
        compare_models(single, single)
    assert compare_models(single, single, per_case=True)[0]["n"] == 4
    other = load_results(table3, "1")
    other.folds = ["fold0", "fold1", "fold2", "fold3", "fold9"]
    with pytest.raises(EvaluationError, match="same folds"):
        compare_models(row, other)


def test_runtime_needs_no_scipy_or_monai():
    """scipy and MONAI are test-only references: the evaluation code and its commands must not import them."""
    import subprocess
    import sys
    code = ("import sys, RCSegNeXtCore.evaluation.evaluate, RCSegNeXtCore.evaluation.report, "
            "RCSegNeXtCore.commands.compare, RCSegNeXtCore.commands.report, RCSegNeXtCore.commands.evaluate; "
            "print(sorted(m for m in ('scipy', 'monai', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", check=True).stdout
    assert out.strip() == "[]"
