"""Training parity: the same phantom dataset, plan, network module (our RCSegNeXt) and short budget, trained by nnU-Net
v2.1.2's trainer and by ours; each predicts the held-out cases with its own predictor; both are scored with the same
metric code (RCSegNeXtCore.evaluation.metrics.case_metrics). Runs in the parity environment (environment.py):

    python -m benchmarks.parity.training --seeds 0 1 --json OUT.json

1. A small phantom (`--cases`, default 25; fold 0 of nnU-Net's 5-fold split holds out 5) in nnU-Net's raw layout.
2. nnU-Net plans and preprocesses it (nnUNet_raw / nnUNet_preprocessed / nnUNet_results in a work folder; its
   fingerprint extractor, ExperimentPlanner and DefaultPreprocessor, one process); its 3d_fullres patch and batch size
   are then set to `--patch` / `--batch-size` (CPU budget).
3. The same plan for ours: our planner on the same dataset with nnU-Net's 3d_fullres target spacing, the same patch,
   batch size, z-score normalisation, `--base-channels`, saved as plans.json; the network of both trainers is built
   from it (`Plans.build_network`), so the module is identical. Each side preprocesses with its own code.
4. Per seed, nnU-Net's trainer (a subclass of nnUNetTrainerNoDeepSupervision, as the official nnUNetTrainerRCSegNeXt,
   whose `build_network_architecture` returns our module; epochs, iterations and lr set as ours; CPU, augmentation in
   the main process: nnUNet_n_proc_DA=0) and ours (`training.pipeline.train`, the same epochs x iterations, batch,
   lr, validation patches) train fold 0 (the same splits_final.json). Every run gets `--threads` torch threads;
   `--parallel` runs go at once. Default budget: 12 epochs x 25 iterations, batch 2, patch [16, 64, 64], base width
   8, lr 0.05 for both (the recipe's 0.01 is for 25,000 iterations; 300 at 0.01 barely leave all-background): about
   10 minutes per run with one thread, two runs at once on 2 shared cores; the whole part about 23 minutes
   (benchmarks/results/nnunet_parity_training.md).
5. nnU-Net predicts the held-out raw images with its nnUNetPredictor as its final validation does (tile step 0.5,
   Gaussian, mirroring); ours with our Predictor as our fold validation does (RUN/fold_0/validation). Dice per class
   and case with our metric code against the raw references.

The result: per side, per seed, the mean Dice per class over the held-out cases; per class the difference of the
two sides' means over seeds and each side's seed spread (max - min); `within` = difference <= 2 x the larger spread.
Also two checks without training: our DiceCELoss against nnU-Net's DC_and_CE_loss (MemoryEfficientSoftDiceLoss) on
random logits, and our batch-Dice rule (training/loss.nnunet_batch_dice) against nnU-Net's ExperimentPlanner on
fingerprints of several shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID}_RCSegNeXtPhantom"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
FOLD = 0
TRAINER = "RCSegNeXtParityTrainer"


# -- the work folder ---------------------------------------------------------------------------------------------
def nnunet_env(work: Path) -> Dict[str, str]:
    """nnU-Net's folders inside `work`, CPU-friendly settings (augmentation in the main process, one worker)."""
    return {"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
            "nnUNet_compile": "0"}


def raw_dir(work: Path) -> Path:
    return work / "nnUNet_raw" / DATASET


def preprocessed_dir(work: Path) -> Path:
    return work / "nnUNet_preprocessed" / DATASET


def held_out(work: Path) -> List[str]:
    return json.loads((preprocessed_dir(work) / "splits_final.json").read_text())[FOLD]["val"]


# -- 1-3: dataset, nnU-Net's plan, the same plan for ours ----------------------------------------------------------
def prepare(work: Path, args) -> Dict:
    """Phantom, nnU-Net fingerprint + plan + preprocess, its plan set to the budget's patch and batch, our plans.json
    with the same values, and one splits_final.json for both. Runs in this process (nnU-Net env vars set first)."""
    os.environ.update(nnunet_env(work))
    from RCSegNeXtCore.phantom import make_phantom_dataset
    raw = make_phantom_dataset(raw_dir(work), args.cases, seed=args.data_seed, size="small", progress=False)

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                       preprocess)
    started = time.perf_counter()
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
    plan_experiments([DATASET_ID])
    plans_file = preprocessed_dir(work) / f"{PLANS}.json"
    nnunet_plans = json.loads(plans_file.read_text())
    planned = dict(nnunet_plans["configurations"][CONFIGURATION])
    if list(nnunet_plans["transpose_forward"]) != [0, 1, 2]:
        raise SystemExit(f"nnU-Net transposes this dataset ({nnunet_plans['transpose_forward']}); the parity run "
                         "expects the (z, y, x) order of both pipelines to agree")
    config = nnunet_plans["configurations"][CONFIGURATION]
    config["patch_size"], config["batch_size"] = list(args.patch), int(args.batch_size)
    plans_file.write_text(json.dumps(nnunet_plans, indent=1))
    preprocess([DATASET_ID], PLANS, configurations=[CONFIGURATION], num_processes=[1], verbose=False)
    nnunet_seconds = time.perf_counter() - started

    from RCSegNeXtCore.data.dataset import load_dataset
    from RCSegNeXtCore.data.fingerprint import compute_fingerprint
    from RCSegNeXtCore.planning import make_plans
    from RCSegNeXtCore.training.loss import nnunet_batch_dice
    from RCSegNeXtCore.training.splits import make_splits
    dataset = load_dataset(raw)
    fingerprint = compute_fingerprint(dataset, workers=1, progress=False)
    ours = make_plans(fingerprint, dataset, target_spacing=[float(s) for s in config["spacing"]],
                      patch_size=list(args.patch), batch_size=int(args.batch_size),
                      base_channels=int(args.base_channels))
    ours.save(work / "plans.json")
    splits = make_splits([c.case_id for c in dataset.cases], 5)      # nnU-Net's KFold(5, shuffle, 12345)
    (preprocessed_dir(work) / "splits_final.json").write_text(json.dumps(splits, indent=1))
    # both caches filled once here, so that runs side by side only read them
    from nnunetv2.training.dataloading.utils import unpack_dataset
    unpack_dataset(str(preprocessed_dir(work) / config["data_identifier"]), True, False, 1)
    from RCSegNeXtCore.data.cache import preprocess_dataset
    preprocess_dataset(dataset, ours, work / "ours_preprocessed", workers=1, progress=False)
    return {
        "nnunet_planned": {k: planned[k] for k in ("patch_size", "batch_size", "spacing", "median_image_size_in_voxels",
                                                   "batch_dice", "normalization_schemes", "use_mask_for_norm")},
        "nnunet_lowres_planned": "3d_lowres" in nnunet_plans["configurations"],
        "nnunet_plan_and_preprocess_s": round(nnunet_seconds, 1),
        "plan": {"target_spacing": ours.target_spacing, "patch_size": ours.patch_size, "batch_size": ours.batch_size,
                 "normalization": ours.normalization, "median_shape": ours.median_shape,
                 "base_channels": ours.architecture.base_channels, "kernels": ours.kernels, "strides": ours.strides},
        "batch_dice": {"nnunet_plan": bool(config["batch_dice"]),
                       "ours_rule": nnunet_batch_dice(ours.patch_size, ours.median_shape)},
        "held_out": held_out(work),
    }


# -- 4-5: one training run (a subprocess per run) ---------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _compatibility() -> None:
    """Two mismatches of nnunetv2 2.1.2 with today's packages, neither touching what is trained: its PolyLRScheduler
    passes `verbose` positionally to torch's LRScheduler, which newer torch no longer takes (accepted and dropped;
    the schedule is nnU-Net's own `step`); and with nnUNet_n_proc_DA=0 its on_train_end calls `_finish()` of
    batchgenerators' SingleThreadedAugmenter, which has none (a no-op given)."""
    import inspect

    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from torch.optim import lr_scheduler
    if not hasattr(SingleThreadedAugmenter, "_finish"):
        SingleThreadedAugmenter._finish = lambda self: None
    init = lr_scheduler.LRScheduler.__init__
    if "verbose" in inspect.signature(init).parameters:
        return

    def accepting_verbose(self, optimizer, last_epoch=-1, verbose=None):
        init(self, optimizer, last_epoch)
    lr_scheduler.LRScheduler.__init__ = accepting_verbose


def _parity_trainer_class(args):
    """nnU-Net's trainer as the official nnUNetTrainerRCSegNeXt uses it (no deep supervision), our network, this
    budget."""
    import torch
    from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerNoDeepSupervision import \
        nnUNetTrainerNoDeepSupervision

    from RCSegNeXtCore.plans import Plans
    our_plans = Plans.load(Path(args.work) / "plans.json")

    class RCSegNeXtParityTrainer(nnUNetTrainerNoDeepSupervision):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     unpack_dataset: bool = True, device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, unpack_dataset, device)
            self.num_epochs = int(args.epochs)
            self.num_iterations_per_epoch = int(args.iterations)
            self.num_val_iterations_per_epoch = int(args.val_iterations)
            self.initial_lr = float(args.lr)

        @staticmethod
        def build_network_architecture(plans_manager, dataset_json, configuration_manager, num_input_channels,
                                       enable_deep_supervision: bool = True):
            return our_plans.build_network()

    RCSegNeXtParityTrainer.__name__ = RCSegNeXtParityTrainer.__qualname__ = TRAINER
    return RCSegNeXtParityTrainer


def train_nnunet(args) -> Dict:
    import torch
    work = Path(args.work)
    # (before nnunetv2 is imported: it reads its folders once) each seed its own results folder
    os.environ.update({**nnunet_env(work), "nnUNet_results": str(work / f"nnunet_seed{args.seed}")})
    torch.set_num_threads(int(args.threads))
    _seed_everything(int(args.seed))
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    _compatibility()
    trainer_class = _parity_trainer_class(args)
    plans = json.loads((preprocessed_dir(work) / f"{PLANS}.json").read_text())
    dataset_json = json.loads((raw_dir(work) / "dataset.json").read_text())
    started = time.perf_counter()
    trainer = trainer_class(plans, CONFIGURATION, FOLD, dataset_json, True, torch.device("cpu"))
    trainer.run_training()
    train_seconds = time.perf_counter() - started
    # the final validation's predictor (perform_actual_validation): step 0.5, Gaussian, mirroring
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_gpu=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    weights = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, [weights],
                                    dataset_json, TRAINER, trainer.inference_allowed_mirroring_axes)
    started = time.perf_counter()
    out = work / f"nnunet_seed{args.seed}" / "held_out"
    out.mkdir(parents=True, exist_ok=True)
    io = SimpleITKIO()
    for case_id in held_out(work):
        image, properties = io.read_images([str(raw_dir(work) / "imagesTr" / f"{case_id}_0000.nii.gz")])
        segmentation = predictor.predict_single_npy_array(image, properties, None, None, False)
        io.write_seg(np.asarray(segmentation, dtype=np.uint8), str(out / f"{case_id}.nii.gz"), properties)
    logged = trainer.logger.my_fantastic_logging
    return {"train_s": round(train_seconds, 1), "predict_s": round(time.perf_counter() - started, 1),
            "pred_dir": str(out), "mirror_axes": list(trainer.inference_allowed_mirroring_axes or []),
            # nnU-Net's Dice term is -Dice, ours 1 - Dice: +1 makes the two losses comparable
            "final_train_loss_plus_1": float(logged["train_losses"][-1]) + 1.0,
            "final_pseudo_dice": [float(v) for v in logged["dice_per_class_or_region"][-1]]}


def train_ours(args) -> Dict:
    import torch
    from RCSegNeXtCore.data.dataset import load_dataset
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.cross_validation import validate_fold
    from RCSegNeXtCore.training.pipeline import train
    work = Path(args.work)
    torch.set_num_threads(int(args.threads))
    run = work / f"ours_seed{args.seed}"
    config = TrainingConfig(dataset=str(raw_dir(work)), output=str(run), folds=[FOLD],
                            plans_file=str(work / "plans.json"),
                            splits=str(preprocessed_dir(work) / "splits_final.json"),
                            preprocessed=str(work / "ours_preprocessed"),
                            epochs=int(args.epochs), iterations_per_epoch=int(args.iterations),
                            val_iterations=int(args.val_iterations), lr=float(args.lr), seed=int(args.seed),
                            device="cpu", threads=int(args.threads), num_workers=1, progress=False,
                            check_memory=False, validate=False)
    started = time.perf_counter()
    train(config)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()                 # the fold's validation, as `train` runs it after training
    result = validate_fold(run, FOLD, load_dataset(raw_dir(work)), held_out(work), device="cpu", progress=False,
                           tta=config.validation_tta)
    history = json.loads((run / f"fold_{FOLD}" / "metrics.json").read_text())
    history = history if isinstance(history, list) else history.get("epochs", [{}])
    log = (run / f"fold_{FOLD}" / "log.txt").read_text(encoding="utf-8")
    loss_line = next((line for line in log.splitlines() if "batch Dice" in line), "")
    return {"train_s": round(train_seconds, 1), "predict_s": round(time.perf_counter() - started, 1),
            "pred_dir": str(run / f"fold_{FOLD}" / "validation"), "tta": bool(result.get("tta")),
            "final_train_loss": float(history[-1].get("train_loss", float("nan"))),
            "final_pseudo_dice": [float(v) for k, v in history[-1].items() if k.startswith("dice_")],
            "loss_log": loss_line.split("  ", 1)[-1]}


# -- scoring (the same code for both) ----------------------------------------------------------------------------
def score(pred_dir: Path, work: Path, ids: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Dice per case and class of `pred_dir/CASE.nii.gz` against the raw reference (our metric code)."""
    from RCSegNeXtCore.data.dataset import load_dataset, read_case
    from RCSegNeXtCore.data.io import read_image
    from RCSegNeXtCore.evaluation.metrics import case_metrics
    dataset = load_dataset(raw_dir(work))
    labels = {k: v for k, v in dataset.labels.items()}
    cases = {}
    for case_id in ids:
        _, reference = read_case(dataset.case(case_id))
        predicted = read_image(Path(pred_dir) / f"{case_id}.nii.gz")
        if predicted.array.shape != reference.array.shape:
            raise SystemExit(f"{pred_dir}/{case_id}: shape {predicted.array.shape} != reference "
                             f"{reference.array.shape}")
        metrics = case_metrics(predicted.array.astype(np.uint8), reference.array, labels,
                               reference.geometry.spacing)
        cases[case_id] = {name: float(m["dice"]) for name, m in metrics.items()}
    return cases


def mean_per_class(cases: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    classes = sorted({c for per_case in cases.values() for c in per_case})
    return {c: float(np.nanmean([per_case[c] for per_case in cases.values()])) for c in classes}


def compare(tables: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Per class: each side's mean over seeds and seed spread (max - min of the seed means), the difference and
    whether it is within twice the larger spread."""
    classes = sorted({c for side in tables.values() for seed in side.values() for c in seed})
    out = {}
    for c in classes:
        values = {side: [seed[c] for seed in seeds.values()] for side, seeds in tables.items()}
        means = {side: float(np.mean(v)) for side, v in values.items()}
        spreads = {side: float(np.max(v) - np.min(v)) for side, v in values.items()}
        difference = abs(means["ours"] - means["nnunet"])
        out[c] = {"mean_ours": means["ours"], "mean_nnunet": means["nnunet"], "spread_ours": spreads["ours"],
                  "spread_nnunet": spreads["nnunet"], "difference": difference,
                  "within": bool(difference <= 2 * max(spreads.values()))}
    return out


# -- checks without training ------------------------------------------------------------------------------------
def loss_check() -> Dict:
    """Our DiceCELoss - 1 (our Dice term is 1 - Dice, nnU-Net's -Dice) against nnU-Net's DC_and_CE_loss with the
    official trainer's arguments, per-sample and batch Dice; maximum absolute difference of the loss and of its
    gradient over a few random draws."""
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from RCSegNeXtCore.training.loss import DiceCELoss
    out = {}
    for batch_dice in (False, True):
        theirs = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
        ours = DiceCELoss(batch_dice=batch_dice)
        worst_loss = worst_grad = 0.0
        generator = torch.Generator().manual_seed(7)
        for draw in range(5):
            logits = (3 * torch.randn(2, 3, 6, 12, 12, generator=generator, dtype=torch.float64)).float()
            target = torch.randint(0, 3, (2, 6, 12, 12), generator=generator)
            if draw == 0:
                target[1] = 0                                   # a sample without foreground
            a = logits.clone().requires_grad_(True)
            b = logits.clone().requires_grad_(True)
            la, lb = ours(a, target) - 1.0, theirs(b, target[:, None])
            la.backward()
            lb.backward()
            worst_loss = max(worst_loss, abs(float(la.detach()) - float(lb.detach())))
            worst_grad = max(worst_grad, float((a.grad - b.grad).abs().max()))
        out["batch_dice" if batch_dice else "per_sample"] = {"max_abs_loss_diff": worst_loss,
                                                             "max_abs_grad_diff": worst_grad}
    return out


RULE_CASES = {   # name: (spacing of every case, shape of every case, cases)
    "small phantom (16 x 96 x 96 at 5.0 x 2.5 x 2.5)": ([5.0, 2.5, 2.5], [16, 96, 96], 25),
    "Dataset A-like (20 x 400 x 400 at 4.0 x 0.875 x 0.875)": ([4.0, 0.875, 0.875], [20, 400, 400], 100),
    "Dataset A largest (24 x 512 x 512 at 4.0 x 0.875 x 0.875)": ([4.0, 0.875, 0.875], [24, 512, 512], 100),
    "abdominal CT-like (300 x 512 x 512 at 1.0 x 0.8 x 0.8)": ([1.0, 0.8, 0.8], [300, 512, 512], 50),
}


def rule_check(work: Path) -> List[Dict]:
    """nnU-Net's ExperimentPlanner on fingerprints of several image sizes: does a 3d_lowres appear and what batch_dice
    does 3d_fullres get; and our rule on nnU-Net's own fullres patch and median shape."""
    os.environ.update(nnunet_env(work))
    import SimpleITK as sitk
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from RCSegNeXtCore.training.loss import nnunet_batch_dice
    rows = []
    for number, (name, (spacing, shape, n)) in enumerate(RULE_CASES.items()):
        dataset = f"Dataset{DATASET_ID + 1 + number}_Rule"
        raw = work / "nnUNet_raw" / dataset
        for sub in ("imagesTr", "labelsTr"):
            (raw / sub).mkdir(parents=True, exist_ok=True)
        image = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32))
        sitk.WriteImage(image, str(raw / "imagesTr" / "rule_000_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), str(raw / "labelsTr" / "rule_000.nii.gz"))
        (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {
            "background": 0, "rectum": 1, "tumour": 2}, "numTraining": n, "file_ending": ".nii.gz"}))
        pre = work / "nnUNet_preprocessed" / dataset
        pre.mkdir(parents=True, exist_ok=True)
        stats = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": -3.0, "max": 3.0, "percentile_99_5": 2.5,
                 "percentile_00_5": -2.5}
        (pre / "dataset_fingerprint.json").write_text(json.dumps({
            "spacings": [spacing] * n, "shapes_after_crop": [shape] * n,
            "foreground_intensity_properties_per_channel": {"0": stats},
            "median_relative_size_after_cropping": 1.0}))
        planner = ExperimentPlanner(dataset)
        plans = planner.plan_experiment()
        fullres = plans["configurations"][CONFIGURATION]
        ours = nnunet_batch_dice(fullres["patch_size"], fullres["median_image_size_in_voxels"])
        rows.append({"case": name, "nnunet_patch": fullres["patch_size"],
                     "median_shape": fullres["median_image_size_in_voxels"],
                     "nnunet_3d_lowres": "3d_lowres" in plans["configurations"],
                     "nnunet_batch_dice": bool(fullres["batch_dice"]), "our_rule": ours,
                     "agree": ours == bool(fullres["batch_dice"])})
    return rows


# -- the whole part ---------------------------------------------------------------------------------------------
def _job_command(side: str, seed: int, args) -> List[str]:
    return [sys.executable, "-m", "benchmarks.parity.training", "--job", side, "--seed", str(seed),
            "--work", str(args.work), "--epochs", str(args.epochs), "--iterations", str(args.iterations),
            "--val-iterations", str(args.val_iterations), "--lr", str(args.lr), "--threads", str(args.threads),
            "--cases", str(args.cases), "--json", str(Path(args.work) / f"job_{side}_{seed}.json")]


def run_jobs(args) -> Dict[str, Dict]:
    """Every (side, seed) run as its own process, `args.parallel` at a time; nnU-Net's and ours of a seed side by
    side. Their logs: WORK/job_SIDE_SEED.log."""
    work = Path(args.work)
    pending = [(side, seed) for seed in args.seeds for side in ("nnunet", "ours")]
    running, results = [], {}
    env = {**os.environ, **nnunet_env(work), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    while pending or running:
        while pending and len(running) < max(1, args.parallel):
            side, seed = pending.pop(0)
            log = open(work / f"job_{side}_{seed}.log", "w")
            print(f"  start {side} seed {seed}", file=sys.stderr, flush=True)
            running.append((side, seed, subprocess.Popen(_job_command(side, seed, args), cwd=REPO, env=env,
                                                         stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2)
        for item in list(running):
            side, seed, process, log = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            if process.returncode != 0:
                tail = (work / f"job_{side}_{seed}.log").read_text()[-3000:]
                raise SystemExit(f"{side} seed {seed} failed ({process.returncode}):\n{tail}")
            results[f"{side}_{seed}"] = json.loads((work / f"job_{side}_{seed}.json").read_text())
            print(f"  done {side} seed {seed}", file=sys.stderr, flush=True)
    return results


def format_tables(result: Dict) -> str:
    lines = []
    for side, title in (("nnunet", "nnU-Net v2.1.2 trainer + nnUNetPredictor"), ("ours", "ours (train + Predictor)")):
        seeds = result["dice"][side]
        classes = sorted({c for s in seeds.values() for c in s})
        lines.append(f"\n{title}: mean Dice (%) over {len(result['held_out'])} held-out cases")
        lines.append("| seed | " + " | ".join(classes) + " |")
        lines.append("|---|" + "---|" * len(classes))
        for seed, values in seeds.items():
            lines.append(f"| {seed} | " + " | ".join(f"{100 * values[c]:.2f}" for c in classes) + " |")
    lines.append("\n| class | nnU-Net mean | ours mean | difference | spread nnU-Net | spread ours | within 2x |")
    lines.append("|---|---|---|---|---|---|---|")
    for c, row in result["comparison"].items():
        lines.append(f"| {c} | {100 * row['mean_nnunet']:.2f} | {100 * row['mean_ours']:.2f} | "
                     f"{100 * row['difference']:.2f} | {100 * row['spread_nnunet']:.2f} | "
                     f"{100 * row['spread_ours']:.2f} | {'yes' if row['within'] else 'NO'} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    parser.add_argument("--cases", type=int, default=25, help="phantom cases (default 25: 20 train, 5 held out)")
    parser.add_argument("--data-seed", type=int, default=2025, help="phantom seed")
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 64, 64])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (default 12 x 25 = 300)")
    parser.add_argument("--val-iterations", type=int, default=2, help="pseudo-Dice batches per epoch")
    parser.add_argument("--lr", type=float, default=0.05, help="initial lr of both (default 0.05: at the recipe's "
                        "0.01, 300 iterations stay near all-background, as the demo found)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--skip-rule-check", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--job", choices=("nnunet", "ours"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.job:                                                    # one run, in its own process
        result = (train_nnunet if args.job == "nnunet" else train_ours)(args)
        Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    started = time.perf_counter()
    temporary = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="parity_training_")) if temporary else Path(args.work).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        result: Dict = {"part": "training", "budget": {
            "epochs": args.epochs, "iterations_per_epoch": args.iterations, "val_iterations": args.val_iterations,
            "batch_size": args.batch_size, "patch_size": list(args.patch), "lr": args.lr,
            "base_channels": args.base_channels, "threads_per_run": args.threads, "parallel": args.parallel,
            "cases": args.cases, "seeds": list(args.seeds)}}
        print("training parity: plan and preprocess (nnU-Net, ours)", file=sys.stderr, flush=True)
        result.update(prepare(args.work, args))
        result["loss_check"] = loss_check()
        if not args.skip_rule_check:
            result["batch_dice_rule"] = rule_check(args.work)
        print(f"training parity: {2 * len(args.seeds)} runs, {args.parallel} at a time", file=sys.stderr,
              flush=True)
        runs = run_jobs(args)
        result["runs"] = runs
        result["dice"] = {side: {} for side in ("nnunet", "ours")}
        result["dice_per_case"] = {side: {} for side in ("nnunet", "ours")}
        for key, run in runs.items():
            side, seed = key.split("_")
            cases = score(Path(run["pred_dir"]), args.work, result["held_out"])
            result["dice_per_case"][side][seed] = cases
            result["dice"][side][seed] = mean_per_class(cases)
        result["comparison"] = compare(result["dice"])
        result["within"] = all(row["within"] for row in result["comparison"].values())
        result["seconds"] = round(time.perf_counter() - started, 1)
        print(format_tables(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        if temporary:
            shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
