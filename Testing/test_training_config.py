"""TrainingConfig: every `rcsegnext train` option lands in it, its defaults are the command line's, the run folder
records it, and no code below the command layer takes parsed arguments."""
from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from cli_helpers import command_parser, options_left_at_default
from RCSegNeXtCore.commands import train as train_command
from RCSegNeXtCore.training.config import (RECORD_NAME, TrainingConfig, load_training_config,
                                           save_training_config)

CORE = Path(__file__).resolve().parents[1] / "RCSegNeXtCore"

# every option of `rcsegnext train`, each at a value other than its default
EVERY_OPTION = ["DATA", "-o", "RUN", "--folds", "1", "all", "--num-folds", "3", "--splits", "S.json", "--plans",
                "P.json", "--preprocessed", "CACHE", "--target-spacing", "3", "1", "1", "--epochs", "7",
                "--iterations-per-epoch", "11", "--val-iterations", "5", "--batch-size", "4", "--patch-size", "8",
                "32", "32", "--lr", "0.02", "--seed", "3", "--deterministic", "--no-augmentation", "--no-amp",
                "--base-channels", "8", "--scale", "2", "--expansion", "3", "--aniso-block", "conv", "--iso-block",
                "res2net", "--deep-supervision", "--device", "cpu", "--gpus", "2", "--num-workers", "3",
                "--threads", "2", "--resume", "--no-validation", "--skip-memory-check", "--init-from", "PARENT",
                "--init-fold", "all", "--progress-json"]
EXPECTED = TrainingConfig(
    dataset="DATA", output="RUN", folds=[1, "all"], num_folds=3, splits="S.json", plans_file="P.json",
    preprocessed="CACHE", target_spacing=[3.0, 1.0, 1.0], epochs=7, iterations_per_epoch=11, val_iterations=5,
    batch_size=4, patch_size=[8, 32, 32], lr=0.02, seed=3, deterministic=True, augment=False, amp=False,
    base_channels=8, scale=2, expansion=3, aniso_block="conv", iso_block="res2net", deep_supervision=True,
    device="cpu", gpus=2, num_workers=3, threads=2, resume=True, validate=False, check_memory=False,
    init_from="PARENT", init_fold="all", progress_json=True)


def _parser():
    return command_parser(train_command)


def test_every_train_option_lands_in_the_config():
    parser = _parser()
    args = parser.parse_args(EVERY_OPTION)
    unset = options_left_at_default(parser, args, ignore=("fold", "dataset"))
    assert not unset, f"add {unset} to EVERY_OPTION (and its field to EXPECTED)"
    assert train_command.config_from_args(args) == EXPECTED
    # --fold (one fold) is the other spelling of --folds
    one = train_command.config_from_args(parser.parse_args(["DATA", "-o", "RUN", "--fold", "all"]))
    assert one.folds == ["all"]


def test_config_defaults_are_the_command_line_defaults():
    args = _parser().parse_args(["DATA", "-o", "RUN"])
    assert train_command.config_from_args(args) == TrainingConfig(dataset="DATA", output="RUN")


def test_record_round_trip_and_older_or_newer_records(tmp_path):
    save_training_config(EXPECTED, tmp_path)
    recorded = json.loads((tmp_path / RECORD_NAME).read_text())
    assert set(recorded) == {f.name for f in fields(TrainingConfig)}      # every field, defaults included
    assert load_training_config(tmp_path) == EXPECTED
    # a record written before a field existed takes its default; one from a later version keeps what it knows
    del recorded["grad_clip"]
    recorded["a_later_option"] = 1
    (tmp_path / RECORD_NAME).write_text(json.dumps(recorded))
    assert load_training_config(tmp_path) == EXPECTED
    assert load_training_config(tmp_path / "none") is None
    assert TrainingConfig(epochs=3).changed() == {"epochs": 3}


@pytest.mark.slow
def test_the_run_folder_records_the_configuration_it_trained_with(tmp_path):
    from RCSegNeXtCore.cli import main as cli
    from RCSegNeXtCore.phantom import make_phantom_dataset
    raw = make_phantom_dataset(tmp_path / "raw", 3, seed=0, size="small", progress=False)
    run = tmp_path / "run"
    assert cli(["train", str(raw), "-o", str(run), "--fold", "0", "--num-folds", "3", "--epochs", "1",
                "--iterations-per-epoch", "1", "--val-iterations", "1", "--base-channels", "4", "--patch-size",
                "16", "32", "32", "--device", "auto", "--num-workers", "0", "--threads", "1",
                "--no-validation"]) == 0
    recorded = load_training_config(run)
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert recorded == TrainingConfig(dataset=str(raw), output=str(run), num_folds=3, epochs=1,
                                      iterations_per_epoch=1, val_iterations=1, base_channels=4,
                                      patch_size=[16, 32, 32], device=device, num_workers=0, threads=1,
                                      validate=False)
    # the fold's checkpoints hold the configuration it was trained with
    from RCSegNeXtCore.checkpoint import load_checkpoint
    assert TrainingConfig.from_dict(load_checkpoint(run / "fold_0" / "checkpoint_final.pt")["config"]) == recorded


def test_no_parsed_arguments_below_the_command_layer():
    """Only cli.py and commands/ see argparse's Namespace; the core takes typed configuration objects."""
    found = []
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE).as_posix()
        if relative == "cli.py" or relative.startswith("commands/"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bargs\.|Namespace|argparse", line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_time_budget_shortens_the_run_without_changing_the_config(tmp_path):
    from training_helpers import tiny_cases, tiny_plans

    from RCSegNeXtCore.training.trainer import Trainer
    config = TrainingConfig(epochs=5, iterations_per_epoch=1, val_iterations=1, device="cpu", num_workers=0,
                            progress=False, threads=1, max_seconds=1e-6)
    cases = tiny_cases()
    trainer = Trainer(tiny_plans(), cases[:2], cases[2:], tmp_path, config)
    seen = []
    trainer.fit(on_epoch_end=lambda epoch, record: seen.append((epoch, record["epoch"])))
    assert seen == [(0, 1)] and len(trainer.history) == 1     # the budget ran out after the first epoch
    assert config.epochs == 5 and trainer.config.epochs == 5   # the configuration says what was asked for
    assert trainer.scheduler.total_epochs == 1                 # the schedule was fitted to the budget
    assert "time budget" in (tmp_path / "log.txt").read_text()
