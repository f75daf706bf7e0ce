"""Does the review map point at the errors? Train a small RCSegNeXt on phantom cases, predict held-out phantom cases
with `predict --uncertainty --tta`, then measure:

- voxel level: AUROC of the uncertainty map for the error voxels (prediction != reference), inside the union of
  reference and prediction foreground dilated by 3 voxels (scipy.ndimage.binary_dilation, 3 iterations of the 3D
  cross), pooled over the cases; per class (the class's own masks and errors) and for all foreground classes
  together. The same for the members' disagreement map (several members: --tta).
- case level: Spearman correlation of the per-case uncertainty score with the case's tumour Dice (cases with a
  reference tumour; expected negative: the less sure, the worse).

AUROC by the rank formula (Mann-Whitney U with average ranks for ties), checked against MONAI's compute_roc_auc
(or scikit-learn's roc_auc_score when installed) on one class. Prints one JSON line at the end; --record writes
benchmarks/results/uncertainty.md. About 7 minutes on 2 idle CPU cores with the defaults (600 training
iterations ~4.5 min, prediction ~2 min); longer when other jobs share them.

    python benchmarks/uncertainty.py --record
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from RCSegNeXtCore.inference.predictor import Predictor  # noqa: E402

RECORD = REPO / "benchmarks" / "results" / "uncertainty.md"
# the demo's short-run recipe (commands/demo.py: lr 0.05, foreground anywhere in the patch), trained on every case,
# with the default augmentation: without it the model of 600 iterations found no held-out tumour (Dice 0 on every
# case: its tumour errors were confident misses, and the score could not rank cases), as in the first record below.
# A fixed number of iterations (--epochs x 25), not a time budget: on a shared machine a budget trained 225
# iterations in 4.5 minutes once, a model that hardly segmented; the figures must not depend on the load.
TRAINING = dict(base_channels=8, batch_size=2, patch_size=[16, 64, 64], lr=0.05, oversample_foreground=0.67,
                jitter_foreground=True, oversample_rule="random", iterations_per_epoch=25,
                val_iterations=2, folds=["all"], validate=False)


class KeepingPredictor(Predictor):
    """The product's Predictor, keeping each case's disagreement map (not written to disk) for the measurement."""

    kept: dict

    def predict(self, image, progress=None, source="input", keep_probabilities=False, uncertainty=False):
        prediction = super().predict(image, progress, source, keep_probabilities, uncertainty)
        self.kept[source.removeprefix("case ")] = prediction.disagreement
        return prediction


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank formula: (sum of the positives' ranks - n+(n+ + 1)/2) / (n+ n-), ties
    taking their average rank; nan without positives or negatives."""
    from scipy.stats import rankdata
    positive = np.asarray(positive, bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64).ravel())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reference_auroc(scores: np.ndarray, positive: np.ndarray) -> tuple[str, float]:
    """The same AUROC from an independent implementation: scikit-learn when installed, else MONAI."""
    try:
        from sklearn.metrics import roc_auc_score
        return "sklearn.metrics.roc_auc_score", float(roc_auc_score(positive.astype(int), scores))
    except ImportError:
        import torch
        from monai.metrics import compute_roc_auc
        value = compute_roc_auc(torch.from_numpy(np.asarray(scores, np.float64)),
                                torch.from_numpy(positive.astype(np.float64)))
        return "monai.metrics.compute_roc_auc", float(value)


def error_pairs(maps: np.ndarray, pred: np.ndarray, ref: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """(map values, is error) inside (reference | prediction of `classes`) dilated by 3 voxels."""
    from scipy.ndimage import binary_dilation
    p, r = np.isin(pred, classes), np.isin(ref, classes)
    region = binary_dilation(p | r, iterations=3)
    errors = (pred != ref) if len(classes) > 1 else (p != r)
    return maps[region], errors[region]


def train(work: Path, cases: int, epochs: int, seed: int, threads: int) -> Path:
    from RCSegNeXtCore.phantom import make_phantom_dataset
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.pipeline import train as run_training
    raw = make_phantom_dataset(work / "train", cases, seed=seed, size="small", progress=False)
    config = TrainingConfig(dataset=str(raw), output=str(work / "model"), device="cpu", seed=seed, epochs=epochs,
                            threads=threads, progress=False, **TRAINING)
    run_training(config)
    return work / "model"


def predict(work: Path, model: Path, cases: int, seed: int, threads: int) -> tuple[Path, Path, dict, dict]:
    """Held-out phantom (another seed: other cases) predicted by `rcsegnext predict --uncertainty --tta`'s code
    path; returns (dataset, predictions folder, the run's per-case scores, disagreement maps)."""
    from RCSegNeXtCore.inference.config import PredictionConfig
    from RCSegNeXtCore.inference.runner import run_prediction
    from RCSegNeXtCore.phantom import make_phantom_dataset
    raw = make_phantom_dataset(work / "test", cases, seed=seed + 1000, size="small", progress=False)
    config = PredictionConfig(model=str(model), input=str(raw / "imagesTr"), output=str(work / "pred"), tta=True,
                              uncertainty=True, device="cpu", backend="torch", threads=threads)
    predictor = KeepingPredictor(config.model, **config.predictor_options())
    predictor.kept = {}
    result = run_prediction(config, predictor, stream=io.StringIO())   # the progress lines are not needed here
    if result.failed:
        raise SystemExit(f"prediction failed: {result.failed}")
    return raw, work / "pred", result.uncertainty_scores, predictor.kept


def measure(raw: Path, pred_dir: Path, scores: dict, disagreement: dict) -> dict:
    from scipy.stats import spearmanr

    from RCSegNeXtCore.data.io import read_image
    from RCSegNeXtCore.evaluation.metrics import dice
    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    classes = {name: [int(v)] for name, v in labels.items() if int(v) > 0}
    classes["foreground"] = sorted(v[0] for v in classes.values())
    pooled = {m: {c: ([], []) for c in classes} for m in ("uncertainty", "disagreement")}
    per_case = {}
    for case in sorted(scores):
        ref = read_image(raw / "labelsTr" / f"{case}.nii.gz").array.astype(np.uint8)
        pred = read_image(pred_dir / f"{case}.nii.gz").array.astype(np.uint8)
        maps = {"uncertainty": read_image(pred_dir / f"{case}_uncertainty.nii.gz").array.astype(np.float32),
                "disagreement": disagreement[case]}
        for m, values in maps.items():
            for c, members in classes.items():
                v, e = error_pairs(values, pred, ref, members)
                pooled[m][c][0].append(v)
                pooled[m][c][1].append(e)
        tumour = classes.get("tumour", classes.get("tumor", [2]))[0]
        per_case[case] = {"score": scores[case], "tumour_dice": dice(pred == tumour, ref == tumour),
                          "reference_tumour": bool((ref == tumour).any()),
                          "error_voxels": int((pred != ref).sum())}
    figures = {}
    for m in pooled:
        for c, (v, e) in pooled[m].items():
            v, e = np.concatenate(v), np.concatenate(e)
            figures[f"auroc_{m}_{c}"] = auroc(v, e)
            figures[f"error_fraction_{c}"] = float(e.mean())
    v, e = [np.concatenate(x) for x in pooled["uncertainty"]["tumour" if "tumour" in classes else "foreground"]]

    name, value = reference_auroc(v, e)
    checked = "tumour" if "tumour" in classes else "foreground"
    figures["auroc_check"] = {"implementation": name, "value": value,
                              "rank_formula": figures[f"auroc_uncertainty_{checked}"]}
    with_tumour = [c for c, r in per_case.items() if r["reference_tumour"]]
    rho, p = spearmanr([per_case[c]["score"] for c in with_tumour], [per_case[c]["tumour_dice"] for c in with_tumour])
    figures.update(spearman_score_vs_tumour_dice=float(rho), spearman_p=float(p), spearman_cases=len(with_tumour))
    figures["mean_tumour_dice"] = float(np.nanmean([per_case[c]["tumour_dice"] for c in with_tumour]))
    return {"figures": figures, "per_case": per_case}


def machine() -> str:
    import os

    import torch
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu or platform.processor()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")


def write_record(command: str, result: dict, seconds: float, commit: str) -> None:
    f = result["figures"]
    rows = "\n".join(f"| {c} | {f[f'auroc_uncertainty_{c}']:.3f} | {f[f'auroc_disagreement_{c}']:.3f} | "
                     f"{f[f'error_fraction_{c}']:.3f} |"
                     for c in [k.removeprefix("error_fraction_") for k in f if k.startswith("error_fraction_")])
    cases = "\n".join(f"| {c} | {r['score']:.4f} | {r['tumour_dice']:.3f} | {r['error_voxels']} |"
                      for c, r in sorted(result["per_case"].items(), key=lambda kv: -kv[1]["score"]))
    check = f["auroc_check"]
    RECORD.write_text(f"""# Review map (`predict --uncertainty`): does it point at the errors?

- **Command**: `{command}` ({seconds / 60:.1f} min in all)
- **Date**: {date.today().isoformat()}, at commit `{commit}` (working tree of that session)
- **Machine**: 2 shared CPU cores (see [README.md](README.md#machines)): {machine()}
- **Set-up**: RCSegNeXt trained on {result['train_cases']} phantom cases (small variant, seed {result['seed']}),
  {result['epochs']} epochs of 25 iterations ({f['train_seconds']:.0f} s; last training loss
  {result['train_loss']:.3f}), `{json.dumps(TRAINING)}`; {len(result['per_case'])} held-out phantom
  cases (seed {result['seed'] + 1000}) predicted with `--uncertainty --tta` (1 fold x 8 mirrors = 8 members), torch
  backend.

## Voxel level: AUROC for the error voxels

Error voxels: prediction != reference (per class: the class's masks differ), inside (reference | prediction)
dilated by 3 voxels, pooled over the cases. "uncertainty" is the written map (normalised entropy of the final
softmax), "disagreement" the members' mutual information (docs/inference.md#review-map-uncertainty).

| class | AUROC uncertainty | AUROC disagreement | error fraction in the region |
|---|---:|---:|---:|
{rows}

Rank-formula AUROC checked against {check['implementation']}: {check['rank_formula']:.6f} vs {check['value']:.6f}.

## Case level: score vs tumour Dice

Spearman rho of the per-case uncertainty score with the tumour Dice over the {f['spearman_cases']} cases with a
reference tumour: **{f['spearman_score_vs_tumour_dice']:.3f}** (p = {f['spearman_p']:.3g}); mean tumour Dice
{f['mean_tumour_dice']:.3f}.

| case | score | tumour Dice | error voxels |
|---|---:|---:|---:|
{cases}

## The JSON line

```
{json.dumps(f)}
```
""")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-cases", type=int, default=20)
    parser.add_argument("--test-cases", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=24, help="training epochs of 25 iterations (default 24)")
    parser.add_argument("--seed", type=int, default=0)
    # 1: on a machine other jobs share, 2 torch threads on 2 cores ran one epoch 16x slower than 1 (spinning threads)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--record", action="store_true", help=f"write {RECORD.relative_to(REPO)}")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        model = work / "model"
        if not (model / "fold_all").is_dir():
            model = train(work, args.train_cases, args.epochs, args.seed, args.threads)
        trained = time.perf_counter() - start
        history = json.loads((model / "fold_all" / "metrics.json").read_text())
        raw, pred_dir, scores, disagreement = predict(work, model, args.test_cases, args.seed, args.threads)
        result = measure(raw, pred_dir, scores, disagreement)
    seconds = time.perf_counter() - start
    result.update(train_cases=args.train_cases, seed=args.seed, epochs=len(history),
                  train_loss=history[-1]["train_loss"])
    result["figures"].update(epochs=len(history), train_seconds=round(trained, 1))
    print(f"training {trained:.0f} s, in all {seconds:.0f} s", file=sys.stderr)
    for case, r in sorted(result["per_case"].items()):
        print(f"{case}: score {r['score']:.4f} tumour Dice {r['tumour_dice']:.3f}", file=sys.stderr)
    if args.record:
        import subprocess
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        write_record("python benchmarks/uncertainty.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     result, seconds, commit)
    print(json.dumps({"seconds": round(seconds, 1), **result["figures"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
