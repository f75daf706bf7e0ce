"""The correction loop on phantoms: does fine-tuning the current model reach the from-scratch Dice in less time?

A site segments -> corrects -> saves -> retrains. Simulated here on a fixed pool of phantom cases (data seed fixed):
- held out: the last `held_out` cases of the pool, the same for every model (the evaluation);
- round 0: a model trained from scratch on the first N cases (the site's first model);
- rounds 1..R: k new cases each, predicted by each arm's current model and scored against their reference labels
  (the Dice "before correction": what the radiologist had to fix), then "corrected" (the reference labels) and
  added; then (a) FINE-TUNE the arm's current model on every case so far (`init_from`, the shipped defaults
  scaled, below), (b) RETRAIN FROM SCRATCH on the same cases with round 0's schedule. Each new model is scored on
  the held-out cases (Dice per class) and its training timed (wall seconds of `training.pipeline.train`).
- Everything per training seed (`--seeds`); the case pool does not change with it.

Schedules. From scratch: the demo's small CPU recipe (batch 2, patch [16, 64, 64], lr 0.05, 2/3 foreground patches
placed anywhere in the patch) at width 4 (the demo: 8) for `--epochs` x `--iterations-per-epoch` iterations
(16 x 20), the paper's 100 x 250 scaled down. Fine-tuning: the shipped defaults scaled the same way:
FINETUNE_EPOCHS / 100 of the scratch epochs (a quarter) and FINETUNE_LR / 0.01 of the scratch lr (a tenth), same
iterations per epoch. `--long-factor F` adds arm (a') fine-tuning F times longer (same lr, its own chain of
models); 0 leaves it out. Every run after round 0 uses round 0's plans.json (fine-tuning must; the scratch runs
are given it, so both arms train the same network on the same preprocessed cases, one shared cache).

Output: progress and, at the end, the Markdown tables on stderr; one JSON line on stdout (`--json PATH` also writes
it; `--tables PATH` prints the tables of such a file again). `--quick`: a tiny smoke variant
(tiny phantoms, width 4, a few iterations) for the test, under a minute; its figures mean nothing.

    python benchmarks/correction_loop.py --json /tmp/correction_loop.json          # ~25 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import contextlib
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASSES = ("rectum", "tumour")


@dataclass
class Setup:
    """The loop's sizes and the from-scratch schedule (`FULL` or `QUICK`)."""

    n_initial: int = 10
    k: int = 5
    rounds: int = 2
    held_out: int = 5
    data_seed: int = 2025
    shape: Optional[List[int]] = None            # None: the "small" phantom (16 x 96 x 96 at ~[5, 2.5, 2.5] mm)
    spacing: Optional[List[float]] = None
    patch: List[int] = field(default_factory=lambda: [16, 64, 64])
    base_channels: int = 4                       # half the demo's width: 14 trainings fit 25 minutes on 2 cores
    batch_size: int = 2
    epochs: int = 16                             # from scratch; fine-tuning: the scaled defaults
    iterations_per_epoch: int = 20
    lr: float = 0.05


FULL = Setup()
QUICK = Setup(n_initial=3, k=2, held_out=2, shape=[8, 48, 48], spacing=[5.0, 4.0, 4.0], patch=[8, 32, 32],
              base_channels=4, epochs=4, iterations_per_epoch=2)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def finetune_schedule(setup: Setup, factor: float = 1.0) -> Dict[str, float]:
    """The shipped fine-tune defaults scaled as the scratch schedule is scaled from the paper's 100 epochs x lr 0.01:
    epochs x FINETUNE_EPOCHS / 100, lr x FINETUNE_LR / 0.01 (`factor`: a longer variant, same lr)."""
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.finetune import FINETUNE_EPOCHS, FINETUNE_LR
    paper = TrainingConfig()
    epochs = max(1, round(factor * setup.epochs * FINETUNE_EPOCHS / paper.epochs))
    return {"epochs": epochs, "lr": setup.lr * FINETUNE_LR / paper.lr}


def subset_dataset(pool: Path, case_ids: List[str], out: Path) -> Path:
    """A raw dataset folder holding `case_ids` of the pool as symbolic links (same file names, sizes and times, so the
    shared preprocessed cache recognises them)."""
    from RCSegNeXtCore.data.dataset import write_dataset_json
    from RCSegNeXtCore.plans import DEFAULT_CHANNELS, DEFAULT_LABELS
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for case_id in case_ids:
            (out / folder / f"{case_id}{suffix}").symlink_to((pool / folder / f"{case_id}{suffix}").resolve())
    write_dataset_json(out, labels=DEFAULT_LABELS, channel_names=DEFAULT_CHANNELS, file_ending=".nii.gz",
                       num_training=len(case_ids), name="CorrectionLoop")
    return out


def train_model(setup: Setup, dataset: Path, out: Path, cache: Path, seed: int, threads: int, device: str,
                epochs: int, lr: float, init_from: Optional[Path] = None,
                plans_file: Optional[Path] = None) -> Dict[str, float]:
    """One `training.pipeline.train` (fold "all", no validation); returns its wall seconds and iterations."""
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.pipeline import train
    first = init_from is None and plans_file is None        # round 0: the plan from its data, made small
    config = TrainingConfig(
        dataset=str(dataset), output=str(out), folds=["all"], preprocessed=str(cache), seed=seed, device=device,
        threads=threads, validate=False, progress=False, check_memory=False, epochs=epochs, lr=lr,
        iterations_per_epoch=setup.iterations_per_epoch, val_iterations=0,
        init_from=None if init_from is None else str(init_from),
        plans_file=None if plans_file is None else str(plans_file),
        base_channels=setup.base_channels if first else None, batch_size=setup.batch_size if first else None,
        patch_size=list(setup.patch) if first else None,
        # the demo's short-run recipe (commands/demo.py DEMO_TRAINING)
        oversample_foreground=0.67, jitter_foreground=True, oversample_rule="random")
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):         # stdout keeps only the final JSON line
        train(config)
    seconds = time.perf_counter() - started
    epochs_log = json.loads((out / "fold_all" / "metrics.json").read_text(encoding="utf-8"))
    loop = sum(float(e.get("seconds", 0.0)) for e in epochs_log)   # the epochs alone (no plan, cache, export)
    return {"seconds": round(seconds, 2), "loop_seconds": round(loop, 2), "epochs": epochs,
            "iterations": epochs * setup.iterations_per_epoch,
            "lr": lr}


class Scorer:
    """Dice per class of a model's predictions (fold "all", tiled, no TTA, torch on CPU) on fixed cases."""

    def __init__(self, pool: Path, threads: int):
        from RCSegNeXtCore.data.dataset import load_dataset
        self.dataset = load_dataset(pool)
        self.threads = threads
        self.values = {name: int(value) for name, value in self.dataset.labels.items() if int(value) > 0}
        self._cases: Dict[str, tuple] = {}

    def case(self, case_id: str):
        from RCSegNeXtCore.data.dataset import read_case
        if case_id not in self._cases:
            self._cases[case_id] = read_case(self.dataset.case(case_id), labels=[0, *self.values.values()])
        return self._cases[case_id]

    def score(self, model_dir: Path, case_ids: List[str]) -> Dict[str, object]:
        """{"rectum": mean Dice, "tumour": mean Dice (cases where both are empty left out), "cases": per case}."""
        from RCSegNeXtCore.evaluation.metrics import dice
        from RCSegNeXtCore.inference.predictor import Predictor
        predictor = Predictor(model_dir, folds=["all"], device="cpu", backend="torch", threads=self.threads)
        per_case = {}
        for case_id in case_ids:
            image, reference = self.case(case_id)
            labels = predictor.predict(image, source=case_id).labels
            per_case[case_id] = {cls: dice(labels == value, reference.array == value)
                                 for cls, value in zip(CLASSES, self.values.values())}
        result: Dict[str, object] = {cls: _mean([c[cls] for c in per_case.values()]) for cls in CLASSES}
        result["cases"] = {cid: {cls: _round(v) for cls, v in d.items()} for cid, d in per_case.items()}
        return result


def _mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(statistics.fmean(finite)), 4) if finite else float("nan")


def _round(value: float) -> Optional[float]:
    return round(value, 4) if math.isfinite(value) else None


def run_seed(setup: Setup, seed: int, pool: Path, ids: List[str], held: List[str], work: Path, cache: Path,
             scorer: Scorer, arms: Dict[str, Optional[Dict]], threads: int, device: str) -> List[Dict]:
    """Round 0 and the correction rounds for one training seed. `arms`: name -> fine-tune schedule (None: from
    scratch with round 0's schedule). Returns one record per round."""
    root = work / f"seed{seed}"
    cases = ids[:setup.n_initial]
    log(f"seed {seed} round 0: from scratch on {len(cases)} cases, {setup.epochs} x {setup.iterations_per_epoch} "
        f"iterations, lr {setup.lr}")
    model0 = root / "round0_scratch"
    timing = train_model(setup, subset_dataset(pool, cases, root / "data_round0"), model0, cache, seed, threads,
                         device, setup.epochs, setup.lr)
    dice0 = scorer.score(model0, held)
    log(f"  {timing['seconds']:.0f} s; held-out Dice rectum {dice0['rectum']:.3f} tumour {dice0['tumour']:.3f}")
    records = [{"round": 0, "cases": len(cases), "arms": {"scratch": {**timing, "held_out": dice0}}}]
    plans = model0 / "plans.json"
    current = {arm: model0 for arm in arms}
    for r in range(1, setup.rounds + 1):
        new = ids[setup.n_initial + (r - 1) * setup.k: setup.n_initial + r * setup.k]
        record = {"round": r, "cases": len(cases) + len(new), "new_cases": new, "arms": {}}
        for arm in arms:    # before correction: each arm's current model on the new cases
            record["arms"][arm] = {"before_correction": scorer.score(current[arm], new)}
        cases = cases + new                                     # "corrected": the reference labels added
        data = subset_dataset(pool, cases, root / f"data_round{r}")
        for arm, schedule in arms.items():
            out = root / f"round{r}_{arm}"
            if schedule is None:
                log(f"seed {seed} round {r} {arm}: from scratch on {len(cases)} cases")
                timing = train_model(setup, data, out, cache, seed, threads, device, setup.epochs, setup.lr,
                                     plans_file=plans)
            else:
                log(f"seed {seed} round {r} {arm}: fine-tune {current[arm].name} on {len(cases)} cases, "
                    f"{schedule['epochs']} x {setup.iterations_per_epoch} iterations, lr {schedule['lr']:g}")
                timing = train_model(setup, data, out, cache, seed, threads, device, schedule["epochs"],
                                     schedule["lr"], init_from=current[arm])
            scores = scorer.score(out, held)
            record["arms"][arm].update(timing, held_out=scores)
            current[arm] = out
            log(f"  {timing['seconds']:.0f} s; held-out Dice rectum {scores['rectum']:.3f} "
                f"tumour {scores['tumour']:.3f}")
        records.append(record)
    return records


def summarise(per_seed: Dict[int, List[Dict]], arms: List[str]) -> List[Dict]:
    """Per round and arm: Dice means over seeds and each seed, wall seconds; per fine-tune arm and class whether
    it reached the from-scratch Dice within the seed spread (the larger max - min of the two arms) and its time
    ratio to the from-scratch training."""
    seeds = sorted(per_seed)
    rounds = []
    for index, first in enumerate(per_seed[seeds[0]]):
        entry = {"round": first["round"], "cases": first["cases"], "arms": {}}
        for arm in first["arms"]:
            runs = [per_seed[s][index]["arms"][arm] for s in seeds]
            summary = {"seconds_mean": round(statistics.fmean(r["seconds"] for r in runs), 1),
                       "seconds": [r["seconds"] for r in runs], "iterations": runs[0]["iterations"],
                       "loop_seconds_mean": round(statistics.fmean(r["loop_seconds"] for r in runs), 1)}
            for part in ("held_out", "before_correction"):
                if part in runs[0]:
                    summary[part] = {cls: {"mean": _mean([r[part][cls] for r in runs]),
                                           "seeds": [r[part][cls] for r in runs]} for cls in CLASSES}
            entry["arms"][arm] = summary
        if "scratch" in entry["arms"] and first["round"] > 0:
            scratch = entry["arms"]["scratch"]
            entry["verdict"] = {}
            for arm in arms:
                if arm == "scratch":
                    continue
                ft = entry["arms"][arm]
                verdict = {"time_ratio": round(ft["seconds_mean"] / scratch["seconds_mean"], 3),
                           "loop_time_ratio": round(ft["loop_seconds_mean"] / scratch["loop_seconds_mean"], 3)}
                for cls in CLASSES:
                    a, b = ft["held_out"][cls], scratch["held_out"][cls]
                    spread = max(_spread(a["seeds"]), _spread(b["seeds"]))
                    verdict[cls] = {"difference": round(a["mean"] - b["mean"], 4), "spread": round(spread, 4),
                                    "reached": bool(a["mean"] >= b["mean"] - spread)}
                entry["verdict"][arm] = verdict
        rounds.append(entry)
    return rounds


def _spread(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) - min(finite) if finite else float("nan")


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def tables(result: Dict) -> str:
    """The result as Markdown: per round and arm the Dice (%) means and each seed, wall seconds; the verdicts
    (recomputed from the per-seed records)."""
    seeds = result["seeds"]
    rounds = summarise({int(s): r for s, r in result["per_seed"].items()}, list(result["schedules"]))
    lines = ["| round | cases | arm | iterations | held-out rectum | held-out tumour | before correction rectum / "
             "tumour | wall s (" + ", ".join(f"seed {s}" for s in seeds) + ") |", "|---|---:|---|---:|---|---|---|---|"]
    for entry in rounds:
        for arm, a in entry["arms"].items():
            cells = []
            for cls in CLASSES:
                d = a["held_out"][cls]
                cells.append(f"**{_pct(d['mean'])}** ({' / '.join(_pct(v) for v in d['seeds'])})")
            before = a.get("before_correction")
            before_cell = "" if before is None else \
                f"{_pct(before['rectum']['mean'])} / {_pct(before['tumour']['mean'])}"
            lines.append(f"| {entry['round']} | {entry['cases']} | {arm} | {a['iterations']} | {cells[0]} | "
                         f"{cells[1]} | {before_cell} | {a['seconds_mean']:.0f} "
                         f"({', '.join(f'{s:.0f}' for s in a['seconds'])}) |")
    lines += ["", "| round | fine-tune arm | time ratio to scratch: wall (epochs only) | rectum diff (spread) | "
              "reached | tumour diff (spread) | reached |", "|---|---|---|---|---|---|---|"]
    for entry in rounds:
        for arm, v in entry.get("verdict", {}).items():
            cells = [f"{100 * v[c]['difference']:+.1f} ({100 * v[c]['spread']:.1f}) | "
                     f"{'yes' if v[c]['reached'] else 'no'}" for c in CLASSES]
            lines.append(f"| {entry['round']} | {arm} | {v['time_ratio']:.2f} ({v['loop_time_ratio']:.2f}) | "
                         f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def versions() -> Dict[str, str]:
    import numpy
    import SimpleITK
    import torch
    from RCSegNeXtCore import __version__
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "SimpleITK": SimpleITK.Version_VersionString(), "rcsegnext": __version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke variant (< 1 min; figures meaningless)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"from-scratch epochs (default {FULL.epochs}; --quick {QUICK.epochs})")
    parser.add_argument("--iterations-per-epoch", type=int, default=None,
                        help=f"default {FULL.iterations_per_epoch}; --quick {QUICK.iterations_per_epoch}")
    parser.add_argument("--long-factor", type=float, default=2.0,
                        help="also fine-tune this many times longer than the scaled defaults (arm finetune_long; "
                             "default 2; 0: leave it out)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=None, help="work folder, kept (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the JSON result to this file")
    parser.add_argument("--tables", default=None, metavar="JSON", help="only print the tables of a result file")
    args = parser.parse_args(argv)
    if args.tables:
        print(tables(json.loads(Path(args.tables).read_text(encoding="utf-8"))))
        return 0
    import dataclasses
    setup = dataclasses.replace(QUICK if args.quick else FULL)
    if args.epochs:
        setup.epochs = args.epochs
    if args.iterations_per_epoch:
        setup.iterations_per_epoch = args.iterations_per_epoch
    arms: Dict[str, Optional[Dict]] = {"finetune": finetune_schedule(setup), "scratch": None}
    if args.long_factor > 0:
        arms["finetune_long"] = finetune_schedule(setup, args.long_factor)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="correction_loop_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        from RCSegNeXtCore.phantom import case_ids, make_phantom_dataset
        total = setup.n_initial + setup.rounds * setup.k + setup.held_out
        log(f"phantom pool: {total} cases, data seed {setup.data_seed} -> {work / 'pool'}")
        pool = make_phantom_dataset(work / "pool", total, seed=setup.data_seed, size="small", shape=setup.shape,
                                    spacing=setup.spacing, progress=False)
        ids = case_ids(total)
        held = ids[-setup.held_out:]
        scorer = Scorer(pool, args.threads)
        per_seed = {seed: run_seed(setup, seed, pool, ids, held, work, work / "preprocessed", scorer, arms,
                                   args.threads, args.device) for seed in args.seeds}
        result = {
            "benchmark": "correction_loop", "quick": args.quick, "seeds": args.seeds, "held_out": held,
            "setup": dataclasses.asdict(setup),
            "schedules": {arm: (s or {"epochs": setup.epochs, "lr": setup.lr}) for arm, s in arms.items()},
            "rounds": summarise(per_seed, list(arms)), "per_seed": {str(s): r for s, r in per_seed.items()},
            "versions": versions(), "wall_seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(result, allow_nan=True)
    if args.json:
        from RCSegNeXtCore.files import atomic_write_text
        atomic_write_text(args.json, line + "\n")
    print(tables(result), file=sys.stderr)
    print(line, flush=True)
    log(f"done in {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
