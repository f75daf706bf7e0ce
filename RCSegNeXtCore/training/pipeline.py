"""`rcsegnext train`: raw dataset -> plan -> preprocess cache -> split -> train fold(s) -> validate -> report.

The run folder is a self-describing model folder: plans.json (with every override), dataset.json,
splits_final.json, fold_K/ (checkpoints, log.txt, metrics.json/csv, progress.png, validation/). The preprocessed
cache goes to RUN/preprocessed unless --preprocessed names another folder (reused when present; a cache made with
different preprocessing is refused).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from RCSegNeXtCore.errors import ModelError, RCSegNeXtError
from RCSegNeXtCore.files import atomic_write_json
from RCSegNeXtCore.training import splits as split_io

ARCH_OPTIONS = ("base_channels", "scale", "expansion", "aniso_block", "iso_block")


@dataclass
class RunSetup:
    run_dir: Path
    cache_dir: Path
    plans: Any
    dataset: Any
    folds: List[Any]
    splits: Optional[List[Dict[str, List[str]]]]


def plan_for_run(args, dataset, run_dir: Path):
    """The run's plans: RUN/plans.json of an earlier run, --plans, or planned from the dataset; then overrides."""
    from RCSegNeXtCore.planning import plan_for_patch
    from RCSegNeXtCore.plans import Plans
    if args.plans:
        plans = Plans.load(args.plans)
    elif (run_dir / "plans.json").is_file():
        plans = Plans.load(run_dir / "plans.json")
    else:
        from RCSegNeXtCore.data.fingerprint import compute_fingerprint
        from RCSegNeXtCore.planning import make_plans
        fingerprint = compute_fingerprint(dataset, workers=max(1, args.num_workers))
        plans = make_plans(fingerprint, dataset, target_spacing=args.target_spacing)
    overrides: Dict[str, Any] = {k: getattr(args, k, None) for k in ARCH_OPTIONS}
    overrides["batch_size"] = args.batch_size
    if args.deep_supervision:
        overrides["deep_supervision"] = True
    if args.target_spacing and list(map(float, args.target_spacing)) != list(plans.target_spacing):
        overrides["target_spacing"] = [float(v) for v in args.target_spacing]
    patch = args.patch_size or (plans.patch_size if "target_spacing" in overrides else None)
    if patch:
        spacing = overrides.get("target_spacing", plans.target_spacing)
        kernels, strides = plan_for_patch(spacing, list(patch), num_pooling=len(plans.strides))
        overrides.update(patch_size=[int(p) for p in patch], kernels=kernels, strides=strides)
    return plans.with_overrides(**overrides)


def prepare_run(args, check=None) -> RunSetup:
    """Plan, preprocess (rank 0 only under torchrun), split and write the run folder's shared files."""
    from RCSegNeXtCore.data.cache import preprocess_dataset
    from RCSegNeXtCore.data.dataset import load_dataset
    dataset = load_dataset(args.dataset)
    run_dir = Path(args.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_for_run(args, dataset, run_dir)
    if check is not None:
        check(plans)                          # e.g. the CPU memory estimate, before any slow work
    folds = [split_io.parse_fold(f) for f in (args.folds or [args.fold])]
    case_ids = [c.case_id for c in dataset.cases]
    splits = None
    split_path = run_dir / "splits_final.json"
    if args.splits:
        user = split_io.load_splits(args.splits, case_ids)
        split_io.save_splits(user, split_path)
    if any(f != "all" for f in folds):
        splits = split_io.get_or_create_splits(split_path, case_ids, args.num_folds)
    elif split_path.is_file():
        splits = split_io.load_splits(split_path, case_ids)
    cache_dir = Path(args.preprocessed) if args.preprocessed else run_dir / "preprocessed"
    preprocess_dataset(dataset, plans, cache_dir, workers=max(1, args.num_workers), progress=True)
    plans.save(run_dir / "plans.json")
    atomic_write_json(run_dir / "dataset.json", dataset.dataset_json)
    return RunSetup(run_dir, cache_dir, plans, dataset, folds, splits)


def load_cases(cache_dir: Path, case_ids):
    from RCSegNeXtCore.data.cache import load_preprocessed_case
    from RCSegNeXtCore.training.sampler import TrainingCase, class_locations_from
    cases = []
    for case_id in case_ids:
        data, label, properties = load_preprocessed_case(cache_dir, case_id, mmap=True)
        if label is None:
            raise RCSegNeXtError(f"case {case_id}: has no label in the cache {cache_dir}; training needs labels")
        cases.append(TrainingCase(case_id, data, label, class_locations_from(properties, label)))
    return cases


def train_one_fold(run_dir: str, cache_dir: str, fold, train_ids, val_ids, config_dict: dict, resume: bool) -> None:
    """Train one fold in this process (one rank under DDP): module-level so spawned workers can run it."""
    import torch
    from RCSegNeXtCore.plans import Plans
    from RCSegNeXtCore.training.state import FINAL, find_resume_checkpoint
    from RCSegNeXtCore.training.distributed import init_distributed
    from RCSegNeXtCore.training.trainer import TrainConfig, Trainer
    config = TrainConfig(**config_dict)
    dist = init_distributed(config.device)
    if dist.enabled and config.device.startswith("cuda"):
        torch.cuda.set_device(dist.local_rank)
        config.device = f"cuda:{dist.local_rank}"
    plans = Plans.load(Path(run_dir) / "plans.json")
    fold_dir = Path(run_dir) / split_io.fold_name(fold)
    existing = find_resume_checkpoint(fold_dir)
    if existing is not None and not resume:
        raise ModelError(f"{fold_dir} already holds {existing.name}; add --resume to continue it, or choose "
                         "another output folder")
    trainer = Trainer(plans, load_cases(Path(cache_dir), train_ids), load_cases(Path(cache_dir), val_ids),
                      fold_dir, config, dist)
    if resume and existing is not None:
        trainer.resume(existing)
    if trainer.start_epoch >= config.epochs and existing is not None and existing.name == FINAL:
        trainer.log.write(f"{fold_dir.name} already finished ({config.epochs} epochs)")
        return
    trainer.fit()


def _spawned_fold(*args) -> None:
    from RCSegNeXtCore.training.distributed import shutdown
    try:
        train_one_fold(*args)
    finally:
        shutdown()


def run_training(setup: RunSetup, config_dict: dict, resume: bool, gpus: int, validate: bool = True,
                 progress: bool = True) -> List[Dict]:
    """Train every requested fold in turn, then predict and evaluate its held-out cases."""
    from RCSegNeXtCore.training.cross_validation import fold_summary_line, validate_fold, write_report
    from RCSegNeXtCore.training.distributed import (barrier, init_distributed, launched_by_torchrun,
                                                    spawn_workers)
    results = []
    case_ids = [c.case_id for c in setup.dataset.cases]
    for fold in setup.folds:
        train_ids, val_ids = split_io.cases_for_fold(setup.splits, fold, case_ids)
        args = (str(setup.run_dir), str(setup.cache_dir), fold, train_ids, val_ids, config_dict, resume)
        if gpus > 1 and not launched_by_torchrun():
            spawn_workers(gpus, _spawned_fold, *args)
        else:
            train_one_fold(*args)
        dist = init_distributed(config_dict["device"])
        if validate and val_ids and dist.is_main:
            result = validate_fold(setup.run_dir, int(fold), setup.dataset, val_ids, device=config_dict["device"],
                                   progress=progress)
            print(fold_summary_line(result), flush=True)
            results.append(result)
        barrier(dist)
    if results and init_distributed(config_dict["device"]).is_main:
        report = write_report(setup.run_dir)
        if report is not None:
            print(report.read_text(), flush=True)
    return results

