"""`rcsegnext train`: raw dataset -> plan -> preprocess cache -> split -> train fold(s) -> validate -> report.

`train(config)` runs a `TrainingConfig` (training/config.py) end to end; `prepare_run` and `run_training` are its two
halves (the demo prints the plan between them). The run folder is a self-describing model folder: plans.json (with
every override), dataset.json, splits_final.json, training_config.json (the configuration the latest `train` ran
with), fold_K/ (checkpoints, log.txt, metrics.json/csv, progress.png, validation/). The preprocessed cache goes to
RUN/preprocessed unless `config.preprocessed` names another folder (reused when present; a cache made with different
preprocessing is refused).

Deep supervision stays on in a run folder trained with it (its heads are part of the training state): when the run
folder's training_config.json says so or, for a run of 0.1.0, its plans.json's architecture did.

Fine-tuning (`config.init_from`, training/finetune.py): the parent's plans.json is copied as the run's plan and each
fold starts from the parent fold's weights (unless it resumes its own checkpoint). `--resume` without `--init-from`
continues a fine-tune run as it was started (its training_config.json says from what). When a run ends,
RUN/provenance.json records how the model came about (training/provenance.py). `events` (training/events.py) receives
the `--progress-json` lines.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from RCSegNeXtCore.errors import ModelError, RCSegNeXtError
from RCSegNeXtCore.files import atomic_write_json, atomic_write_text
from RCSegNeXtCore.training import splits as split_io
from RCSegNeXtCore.training.config import TrainingConfig, load_training_config, save_training_config
from RCSegNeXtCore.training.events import TrainingEvents


@dataclass
class RunSetup:
    run_dir: Path
    cache_dir: Path
    plans: Any
    dataset: Any
    splits: Optional[List[Dict[str, List[str]]]]
    config: TrainingConfig             # as the folds train it: device resolved, folds parsed, deep supervision kept
    parent: Any = None                 # fine-tuning: the training.finetune.Parent the weights come from


def train(config: TrainingConfig, events: Optional[TrainingEvents] = None) -> List[Dict]:
    """Prepare the run folder, train every fold of `config.folds` in turn, validate each. Under torchrun rank 0
    prepares the run folder and the other ranks then read what it wrote. `events`: where the progress lines go
    (default: stdout when `config.progress_json`)."""
    from RCSegNeXtCore.training.distributed import barrier, init_distributed
    if events is None:
        events = TrainingEvents(enabled=config.progress_json)
    config = with_device(config)
    if config.gpus < 1:
        raise RCSegNeXtError(f"--gpus must be >= 1, got {config.gpus}")
    dist = init_distributed(config.device)
    if dist.is_main:
        setup = prepare_run(config, events=events)
    barrier(dist)
    if not dist.is_main:
        setup = prepare_run(config, main=False)
    return run_training(setup, events if dist.is_main else None)


def with_device(config: TrainingConfig) -> TrainingConfig:
    """`config` with its device resolved ("auto" -> cuda / mps / cpu)."""
    from RCSegNeXtCore.devices import resolve_device
    return replace(config, device=str(resolve_device(config.device, allow_mps=True)))


def plan_for_run(config: TrainingConfig, dataset, run_dir: Path):
    """The run's plans: RUN/plans.json of an earlier run, `config.plans_file`, or planned from the dataset; then the
    configuration's overrides (architecture fields, batch size, spacing, patch size)."""
    from RCSegNeXtCore.planning import plan_for_patch
    from RCSegNeXtCore.plans import Architecture, Plans
    if config.plans_file:
        plans = Plans.load(config.plans_file)
    elif (run_dir / "plans.json").is_file():
        plans = Plans.load(run_dir / "plans.json")
    else:
        from RCSegNeXtCore.data.fingerprint import compute_fingerprint
        from RCSegNeXtCore.planning import make_plans
        fingerprint = compute_fingerprint(dataset, workers=max(1, config.num_workers))
        plans = make_plans(fingerprint, dataset, target_spacing=config.target_spacing)
    overrides: Dict[str, Any] = {f.name: getattr(config, f.name) for f in fields(Architecture)
                                 if hasattr(config, f.name)}
    overrides["batch_size"] = config.batch_size
    if config.target_spacing and list(map(float, config.target_spacing)) != list(plans.target_spacing):
        overrides["target_spacing"] = [float(v) for v in config.target_spacing]
    patch = config.patch_size or (plans.patch_size if "target_spacing" in overrides else None)
    if patch:
        spacing = overrides.get("target_spacing", plans.target_spacing)
        kernels, strides = plan_for_patch(spacing, list(patch), num_pooling=len(plans.strides))
        overrides.update(patch_size=[int(p) for p in patch], kernels=kernels, strides=strides)
    return plans.with_overrides(**overrides)


def resolved_config(config: TrainingConfig, run_dir: Path, plans) -> TrainingConfig:
    """`config` as this run trains it: device resolved, folds parsed, and deep supervision kept on in a run folder
    trained with it (recorded in its training_config.json, or in the architecture of a 0.1.0 plans.json)."""
    recorded = load_training_config(run_dir)
    earlier = bool(recorded is not None and recorded.deep_supervision) or \
        bool(plans.legacy_training.get("deep_supervision", False))
    return replace(with_device(config), folds=[split_io.parse_fold(f) for f in config.folds],
                   deep_supervision=config.deep_supervision or earlier)


def check_memory(plans, device: str) -> None:
    """The CPU memory estimate (raises OutOfMemoryPlan with a proposal when the configuration does not fit)."""
    from RCSegNeXtCore.training.memory import check_fits
    estimate = check_fits(plans, plans.batch_size, plans.patch_size, device)  # all CPU ranks share the RAM
    if estimate is not None:
        print(f"memory estimate: {estimate.gib:.1f} GiB for batch {plans.batch_size} x patch "
              f"{plans.patch_size} on CPU", flush=True)


def splits_for_run(config: TrainingConfig, case_ids: List[str], run_dir: Path):
    """RUN/splits_final.json: `config.splits` copied, an earlier one, or a new one of `config.num_folds` folds."""
    split_path = run_dir / "splits_final.json"
    if config.splits:
        split_io.save_splits(split_io.load_splits(config.splits, case_ids), split_path)
    if any(f != "all" for f in config.folds):
        return split_io.get_or_create_splits(split_path, case_ids, config.num_folds)
    if split_path.is_file():
        return split_io.load_splits(split_path, case_ids)
    return None


def fine_tune_parent(config: TrainingConfig, dataset):
    """The `finetune.Parent` of a fine-tuning run (None when training from scratch), checked: no option that would
    change its plan, the dataset's classes and channels, its checkpoint made for its own plans.json."""
    from RCSegNeXtCore.training import finetune
    if not config.init_from:
        return None
    finetune.refuse_plan_options(config)
    parent = finetune.open_parent(config.init_from, config.init_fold)
    finetune.check_dataset_fits(parent, dataset)
    finetune.check_weights_fit(parent)
    return parent


def continued_fine_tune(config: TrainingConfig, run_dir: Path) -> TrainingConfig:
    """`--resume` of a fine-tune run without `--init-from`: its recorded parent (the run goes on as it started)."""
    recorded = load_training_config(run_dir) if config.resume and not config.init_from else None
    if recorded is None or not recorded.init_from:
        return config
    return replace(config, init_from=recorded.init_from, init_fold=recorded.init_fold)


def prepare_run(config: TrainingConfig, main: bool = True, events: Optional[TrainingEvents] = None) -> RunSetup:
    """Plan (or, fine-tuning, take the parent's plan), preprocess, split and write the run folder's shared files.
    `main` (rank 0 under torchrun) also checks the memory (config.check_memory) and records the configuration in
    RUN/training_config.json."""
    from RCSegNeXtCore.data.cache import preprocess_dataset
    from RCSegNeXtCore.data.dataset import load_dataset
    events = events or TrainingEvents(enabled=False)
    if not config.dataset or not config.output:
        raise RCSegNeXtError("training needs a dataset folder and an output (run) folder")
    events.emit("plan")
    dataset = load_dataset(config.dataset)
    run_dir = Path(config.output)
    config = continued_fine_tune(config, run_dir)
    parent = fine_tune_parent(config, dataset)
    run_dir.mkdir(parents=True, exist_ok=True)
    plans = parent.folder.plans if parent is not None else plan_for_run(config, dataset, run_dir)
    requested, config = config, resolved_config(config, run_dir, plans)
    if main and parent is not None:
        print(f"fine-tuning from {parent.path} fold {parent.fold} ({parent.checkpoint.name}): its plan unchanged, "
              f"{config.epochs} epochs, lr {config.lr}", flush=True)
    if main and config.deep_supervision and not requested.deep_supervision:
        print(f"deep supervision stays on: {run_dir} was trained with it", flush=True)
    if main and config.check_memory:
        check_memory(plans, config.device)                # before any slow work
    splits = splits_for_run(config, [c.case_id for c in dataset.cases], run_dir)
    cache_dir = Path(config.preprocessed) if config.preprocessed else run_dir / "preprocessed"
    total = len(dataset.cases)
    events.emit("preprocess", done=0, total=total)
    preprocess_dataset(dataset, plans, cache_dir, workers=max(1, config.num_workers), progress=config.progress)
    events.emit("preprocess", done=total, total=total)
    if main:
        save_training_config(config, run_dir)             # before plans.json loses a 0.1.0 file's training options
    if parent is not None:                                # the parent's file as it is: its plan, unchanged
        atomic_write_text(run_dir / "plans.json", parent.plans_text)
    else:
        plans.save(run_dir / "plans.json")
    atomic_write_json(run_dir / "dataset.json", dataset.dataset_json)
    return RunSetup(run_dir, cache_dir, plans, dataset, splits, config, parent)


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


def config_for_process(config: TrainingConfig, dist) -> TrainingConfig:
    """The Trainer's configuration in this process: its own GPU under DDP; a deterministic run prepares its patches
    in the training loop (no background thread)."""
    device = config.device
    if dist.enabled and device.startswith("cuda"):
        import torch
        torch.cuda.set_device(dist.local_rank)
        device = f"cuda:{dist.local_rank}"
    return replace(config, device=device, num_workers=0 if config.deterministic else config.num_workers)


def monitored_cases(fold, train_cases: list, val_cases: list, config: TrainingConfig) -> list:
    """The cases of the per-epoch pseudo-Dice: the held-out ones; for fold "all", which has none, the training cases
    themselves, as nnU-Net's fold "all" does (so a run on every case still reports a pseudo-Dice and keeps its best
    checkpoint by it), unless `val_iterations` is 0."""
    if val_cases or fold != "all" or config.val_iterations <= 0:
        return val_cases
    return train_cases


def train_one_fold(run_dir: str, cache_dir: str, fold, train_ids, val_ids, config: TrainingConfig,
                   events: Optional[TrainingEvents] = None) -> None:
    """Train one fold in this process (one rank under DDP): module-level so spawned workers can run it. A new fold
    of a fine-tuning run starts from the parent's weights; `events` gets a "train" line per epoch (rank 0)."""
    from RCSegNeXtCore.plans import Plans
    from RCSegNeXtCore.training.distributed import init_distributed
    from RCSegNeXtCore.training.state import FINAL, find_resume_checkpoint
    from RCSegNeXtCore.training.trainer import Trainer
    dist = init_distributed(config.device)
    config = config_for_process(config, dist)
    plans = Plans.load(Path(run_dir) / "plans.json")
    fold_dir = Path(run_dir) / split_io.fold_name(fold)
    existing = find_resume_checkpoint(fold_dir)
    if existing is not None and not config.resume:
        raise ModelError(f"{fold_dir} already holds {existing.name}; add --resume to continue it, or choose "
                         "another output folder")
    train_cases = load_cases(Path(cache_dir), train_ids)
    trainer = Trainer(plans, train_cases, monitored_cases(fold, train_cases, load_cases(Path(cache_dir), val_ids),
                                                          config), fold_dir, config, dist)
    if fold == "all" and trainer.val_cases:
        trainer.log.write("fold all: the pseudo-Dice is measured on the training cases (as nnU-Net's fold all): it "
                          "shows how well the model fits them, not how it generalises")
    if config.resume and existing is not None:
        trainer.resume(existing)                          # a fine-tune run's own state wins over the parent's
    elif config.init_from:
        from RCSegNeXtCore.training.finetune import load_parent_weights, open_parent
        parent = open_parent(config.init_from, config.init_fold)
        load_parent_weights(trainer.network, parent, trainer.signature)
        trainer.log.write(f"initialised from {parent.checkpoint} (weights only; optimizer and schedule start anew)")
    if trainer.start_epoch >= config.epochs and existing is not None and existing.name == FINAL:
        trainer.log.write(f"{fold_dir.name} already finished ({config.epochs} epochs)")
        return
    hook = events.epoch_hook(trainer, fold) if events is not None and dist.is_main else None
    trainer.fit(on_epoch_end=hook)


def _spawned_fold(*work) -> None:
    from RCSegNeXtCore.training.distributed import shutdown
    try:
        train_one_fold(*work)
    finally:
        shutdown()


def run_training(setup: RunSetup, events: Optional[TrainingEvents] = None) -> List[Dict]:
    """Train every fold of `setup.config` in turn, then predict and evaluate its held-out cases; at the end write
    RUN/provenance.json. `events`: the progress lines (no "train" lines from processes spawned for --gpus N)."""
    from RCSegNeXtCore.training.provenance import write_provenance
    from RCSegNeXtCore.inference.onnx_export import export_fold_or_note
    from RCSegNeXtCore.training.cross_validation import fold_summary_line, validate_fold, write_report
    from RCSegNeXtCore.training.distributed import (barrier, init_distributed, launched_by_torchrun,
                                                    spawn_workers)
    config = setup.config
    events = events or TrainingEvents(enabled=False)
    results = []
    trained_on: List[str] = []
    case_ids = [c.case_id for c in setup.dataset.cases]
    for fold in config.folds:
        train_ids, val_ids = split_io.cases_for_fold(setup.splits, fold, case_ids)
        trained_on += train_ids
        work = (str(setup.run_dir), str(setup.cache_dir), fold, train_ids, val_ids, config)
        if config.gpus > 1 and not launched_by_torchrun():
            spawn_workers(config.gpus, _spawned_fold, *work)
        else:
            train_one_fold(*work, events=events)
        dist = init_distributed(config.device)
        if dist.is_main:  # fold_K/model.onnx: the run folder is a model folder that runs without PyTorch
            events.emit("export")
            print(export_fold_or_note(setup.run_dir, fold), flush=True)
        if config.validate and val_ids and dist.is_main:
            events.emit("validate", fold=fold)
            result = validate_fold(setup.run_dir, int(fold), setup.dataset, val_ids, device=config.device,
                                   progress=config.progress, tta=config.validation_tta)
            print(fold_summary_line(result), flush=True)
            results.append(result)
        barrier(dist)
    if init_distributed(config.device).is_main:
        if results:
            report = write_report(setup.run_dir)
            if report is not None:
                print(report.read_text(encoding="utf-8"), flush=True)
        write_provenance(setup.run_dir, config, setup.dataset, trained_on, setup.parent)
        total = events.last_total if events.last_total is not None else config.epochs
        events.emit("done", model=str(setup.run_dir.resolve()), done=total, total=total)
    return results
