"""`rcsegnext demo`: the whole pipeline on the embedded phantom, on CPU, in about 10 minutes (docs/demo.md)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = ("demo: print the planned architecture, then phantom -> check -> plan -> preprocess -> train (a few "
        "minutes) -> predict held-out cases -> Dice table, .seg.nrrd files and a PNG")

# the small configuration trained on CPU (the rest: `rcsegnext train`'s defaults): lr 0.05 (not the paper's 0.01)
# because the run is ~100x shorter; at 0.01 a few hundred iterations stay in the all-background phase, at 0.05 the
# held-out Dice clearly beats the baseline after ~200 iterations. Tumour-centred patches are rare at the recipe's
# 1/3 foreground oversampling (1/3 x 1/2 of the patches, the class drawn uniformly among those present), too rare
# for ~1000 iterations; and centred foreground patches teach a short run "foreground is at the patch centre"
# (held-out tumour Dice ~5 %), so the demo places the chosen voxel anywhere in the patch (jitter_foreground). 25
# cases: 20 train, 5 held out (a steadier table than 3). Result of a 10-minute run: docs/demo.md.
DEMO_CASES = 25
DEMO_TRAINING = dict(epochs=40, iterations_per_epoch=25, val_iterations=4, base_channels=8, batch_size=2,
                     patch_size=[16, 64, 64], lr=0.05, folds=[0], oversample_foreground=0.67, jitter_foreground=True,
                     oversample_rule="random")   # 2/3 of the patches: the batch-position rule gives 1 of 2 at batch 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="time budget for training, minutes (default 10; the poly schedule is fitted to it)")
    parser.add_argument("--cases", type=int, default=DEMO_CASES, help=f"phantom cases (default {DEMO_CASES}; "
                        "5-fold split, fold 0's cases are held out)")
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--architecture-only", action="store_true", help="only print the planned architecture")


def _step(number: int, text: str) -> None:
    print(f"\n== [{number}/7] {text}", flush=True)


def demo_config(raw, run_dir, device: str, seed: int, minutes: float):
    """The demo's TrainingConfig: DEMO_TRAINING, a time budget; re-running the demo continues its training."""
    from RCSegNeXtCore.training.config import TrainingConfig
    return TrainingConfig(dataset=str(raw), output=str(run_dir), device=device, seed=seed, max_seconds=minutes * 60,
                          resume=(run_dir / "fold_0" / "checkpoint_latest.pt").is_file(), **DEMO_TRAINING)


def show_architecture() -> None:
    from RCSegNeXtCore.network.summary import summarize_network
    from RCSegNeXtCore.planning import plan_for_patch
    _step(1, "the planned architecture for the paper's Dataset A (spacing [4.0, 0.875, 0.875] mm, patch "
             "[16, 320, 320])")
    kernels, strides = plan_for_patch([4.0, 0.875, 0.875], [16, 320, 320])
    print(summarize_network(kernels, strides, [16, 320, 320]).format())


def make_and_check_phantom(out, cases: int, seed: int):
    from RCSegNeXtCore.data.validation import check_dataset
    from RCSegNeXtCore.errors import RCSegNeXtError
    from RCSegNeXtCore.phantom import make_phantom_dataset
    _step(2, f"phantom: {cases} synthetic sagittal T2 cases (small variant) -> {out / 'phantom'}")
    raw = make_phantom_dataset(out / "phantom", cases, seed=seed, size="small")
    _step(3, "check the dataset")
    problems = check_dataset(raw)
    for problem in problems:
        print(f"  {problem}")
    if problems:
        raise RCSegNeXtError(f"{raw}: {len(problems)} problem(s); the demo cannot continue")
    print(f"  {cases} cases, no problems")
    return raw


def prepare(config):
    """Step 4: plan, preprocess, split; returns (setup, training case ids, held-out case ids)."""
    from RCSegNeXtCore.training.pipeline import prepare_run
    from RCSegNeXtCore.training.splits import cases_for_fold
    _step(4, "plan, preprocess, split (5 folds; fold 0 trains, its cases are held out)")
    print("  training configuration, changed from `rcsegnext train`'s: "
          + ", ".join(f"{k} {v}" for k, v in config.changed().items() if k not in ("dataset", "output")))
    setup = prepare_run(config)
    train_ids, val_ids = cases_for_fold(setup.splits, 0, [c.case_id for c in setup.dataset.cases])
    print(f"  plan: spacing {[round(s, 3) for s in setup.plans.target_spacing]} mm, patch {setup.plans.patch_size},"
          f" base channels {setup.plans.architecture.base_channels}; {len(train_ids)} training, "
          f"{len(val_ids)} held-out cases: {', '.join(val_ids)}")
    return setup, train_ids, val_ids


def train(setup, minutes: float) -> None:
    from RCSegNeXtCore.progress import format_seconds
    from RCSegNeXtCore.training.pipeline import run_training
    _step(5, f"train fold 0 on {setup.config.device} for at most ~{minutes:g} minutes (configuration: "
             f"{setup.run_dir / 'training_config.json'})")
    started = time.perf_counter()
    run_training(setup)
    print(f"  training and validation took {format_seconds(time.perf_counter() - started)}")


def compare_held_out(setup, train_ids, val_ids, seg_dir):
    """Step 6: each held-out case's prediction (written by validation) and the baseline's, against the reference;
    writes the predictions as .seg.nrrd. Returns (Dice rows, [(image, reference, prediction, spacing)] per case)."""
    import numpy as np

    from RCSegNeXtCore.data.dataset import read_case
    from RCSegNeXtCore.data.io import read_image
    from RCSegNeXtCore.evaluation.metrics import case_metrics
    from RCSegNeXtCore.inference.export import write_segmentation
    from RCSegNeXtCore.training.demo_support import WindowBaseline
    _step(6, "held-out predictions (inference pipeline) vs the reference and an intensity-window baseline")
    labels = setup.dataset.labels
    baseline = WindowBaseline(*zip(*[(img.array[0], ref.array) for img, ref in
                                     (read_case(setup.dataset.case(c)) for c in train_ids)]),
                              classes=[v for v in labels.values() if v > 0])
    rows = {"RCSegNeXt": {}, "baseline": {}}
    shown = []
    for case_id in val_ids:
        image, reference = read_case(setup.dataset.case(case_id))
        predicted = read_image(setup.run_dir / "fold_0" / "validation" / f"{case_id}.nii.gz")
        pred = predicted.array.astype(np.uint8)
        write_segmentation(pred, predicted.geometry, seg_dir / f"{case_id}.seg.nrrd", labels)
        for name, labelmap in (("RCSegNeXt", pred), ("baseline", baseline.predict(image.array[0]))):
            metrics = case_metrics(labelmap, reference.array, labels, reference.geometry.spacing)
            rows[name][case_id] = {c: float(m["dice"]) for c, m in metrics.items()}
        shown.append((image.array[0], reference.array, pred, reference.geometry.spacing))
    return rows, shown


def write_outputs(setup, out, rows, shown, val_ids, seg_dir) -> None:
    from RCSegNeXtCore.training.demo_support import dice_table, sagittal_figure
    labels = setup.dataset.labels
    classes = [c for c, v in sorted(labels.items(), key=lambda kv: kv[1]) if v > 0]
    table = dice_table(rows, classes)
    print("Dice (%) on the held-out phantom cases:\n" + table)
    (out / "dice_table.md").write_text(table + "\n")
    _step(7, "outputs")
    figure = out / "held_out_sagittal.png"
    images, references, predictions, spacings = zip(*shown[:4])
    drawn = sagittal_figure(images, references, predictions, val_ids[:4], spacings, figure,
                            {v: k for k, v in labels.items()})
    print(f"  Slicer segmentations: {seg_dir}/*.seg.nrrd (open with the images in "
          f"{Path(setup.config.dataset) / 'imagesTr'})")
    if drawn:
        print(f"  figure: {figure} (sagittal slices; dashed = reference, solid = prediction)")
    print(f"  model folder: {setup.run_dir} (use with: rcsegnext predict -m {setup.run_dir} -i IMAGE -o OUT.seg.nrrd)")
    print(f"  training curve: {setup.run_dir / 'fold_0' / 'progress.png'}")


def run(args: argparse.Namespace) -> int:
    from RCSegNeXtCore.progress import format_seconds

    start = time.perf_counter()
    show_architecture()
    if args.architecture_only:
        return 0
    out = Path(args.out)
    raw = make_and_check_phantom(out, args.cases, args.seed)
    setup, train_ids, val_ids = prepare(demo_config(raw, out / "run", args.device, args.seed, args.minutes))
    train(setup, args.minutes)
    rows, shown = compare_held_out(setup, train_ids, val_ids, out / "predictions")
    write_outputs(setup, out, rows, shown, val_ids, out / "predictions")
    print(f"\ndemo finished in {format_seconds(time.perf_counter() - start)}")
    return 0
