"""Fine-tuning (`train --init-from`), the training `--progress-json` lines and RUN/provenance.json.

Fast tests build tiny parents in process (a Trainer run of one iteration, or init-model); the slow ones run
`python -m RCSegNeXtCore train` as the Slicer module does and read its stdout line by line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import command_parser
from RCSegNeXtCore.checkpoint import load_checkpoint, save_checkpoint
from RCSegNeXtCore.cli import main as cli_main
from RCSegNeXtCore.commands import train as train_command
from RCSegNeXtCore.data.dataset import dataset_sha256, load_dataset, write_dataset_json
from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.hashing import file_sha256
from RCSegNeXtCore.inference.model_folder import init_model_folder, write_model_description
from RCSegNeXtCore.training.config import TrainingConfig
from RCSegNeXtCore.training.finetune import (FINETUNE_EPOCHS, FINETUNE_LR, load_parent_weights, open_parent)
from RCSegNeXtCore.training.provenance import read_provenance
from training_helpers import tiny_cases, tiny_plans

REPO = Path(__file__).resolve().parents[1]
RUN = ["--iterations-per-epoch", "2", "--val-iterations", "1", "--device", "cpu", "--num-workers", "0",
       "--threads", "1"]
SCRATCH = ["--epochs", "1", "--base-channels", "4", "--patch-size", "16", "32", "32", *RUN]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from RCSegNeXtCore.phantom import make_phantom_dataset
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom") / "raw", 3, seed=0, size="small",
                                progress=False)


def _config(**changes) -> TrainingConfig:
    return TrainingConfig(**{**dict(iterations_per_epoch=1, val_iterations=1, device="cpu", num_workers=0,
                                    progress=False, threads=1), **changes})


def trained_parent(folder: Path, plans=None) -> Path:
    """A tiny model folder whose fold_0 was really trained (one iteration of the Trainer)."""
    from RCSegNeXtCore.training.trainer import Trainer
    plans = plans or tiny_plans()
    write_model_description(folder, plans)
    cases = tiny_cases()
    Trainer(plans, cases[:2], cases[2:], folder / "fold_0", _config(epochs=1)).fit()
    return folder


def _json_lines(text: str):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- the command line --------------------------------------------------------------------------------------------
def test_fine_tuning_has_its_own_default_schedule():
    parser = command_parser(train_command)
    tune = train_command.config_from_args(parser.parse_args(["DATA", "-o", "RUN", "--init-from", "M"]))
    assert (tune.epochs, tune.lr, tune.init_from, tune.init_fold) == (FINETUNE_EPOCHS, FINETUNE_LR, "M", None)
    assert FINETUNE_EPOCHS < TrainingConfig().epochs and FINETUNE_LR < TrainingConfig().lr
    given = train_command.config_from_args(parser.parse_args(["DATA", "-o", "RUN", "--init-from", "M", "--epochs",
                                                              "7", "--lr", "0.02", "--init-fold", "2"]))
    assert (given.epochs, given.lr, given.init_fold) == (7, 0.02, 2)
    scratch = train_command.config_from_args(parser.parse_args(["DATA", "-o", "RUN"]))
    assert (scratch.epochs, scratch.lr) == (TrainingConfig().epochs, TrainingConfig().lr)


def test_options_that_change_the_plan_are_refused(raw, tmp_path, capsys):
    parent = init_model_folder(tiny_plans(), tmp_path / "parent", export_onnx=False)
    code = cli_main(["train", str(raw), "-o", str(tmp_path / "run"), "--fold", "all", "--init-from", str(parent),
                     "--patch-size", "8", "32", "32", "--base-channels", "8", "--progress-json", *RUN])
    out, err = capsys.readouterr()
    assert code == 2
    assert "--patch-size, --base-channels cannot be used with it" in err
    events = _json_lines(out)                                   # stdout: JSON lines only, the error last
    assert events[-1]["stage"] == "error" and "--patch-size, --base-channels" in events[-1]["message"]
    assert not (tmp_path / "run").exists()


def test_other_labels_are_refused_naming_both(raw, tmp_path, capsys):
    parent = init_model_folder(tiny_plans(), tmp_path / "parent", export_onnx=False)
    other = tmp_path / "other"
    other.mkdir()
    for sub in ("imagesTr", "labelsTr"):
        os.symlink(raw / sub, other / sub)
    write_dataset_json(other, labels={"background": 0, "rectum": 1, "lesion": 2}, num_training=3)
    code = cli_main(["train", str(other), "-o", str(tmp_path / "run"), "--init-from", str(parent), *RUN])
    err = capsys.readouterr().err
    assert code == 2
    assert "'lesion': 2}" in err and f"{parent}, has labels" in err and "'tumour': 2}" in err


def test_a_checkpoint_of_another_architecture_is_refused_before_preprocessing(raw, tmp_path, capsys):
    parent = init_model_folder(tiny_plans(base_channels=4), tmp_path / "parent", export_onnx=False)
    wider = tiny_plans(base_channels=8)                         # fold_0's weights replaced by a wider network's
    save_checkpoint(parent / "fold_0" / "checkpoint_final.pt", wider.build_network().state_dict(),
                    wider.network_signature())
    code = cli_main(["train", str(raw), "-o", str(tmp_path / "run"), "--fold", "all", "--init-from", str(parent),
                     *RUN])
    err = capsys.readouterr().err
    assert code == 2 and "base_channels: checkpoint 8, plan 4" in err
    assert not (tmp_path / "run" / "preprocessed").exists()


def test_fold_choice(tmp_path):
    plans = tiny_plans()
    one = init_model_folder(plans, tmp_path / "one", folds=(3,), export_onnx=False)
    assert open_parent(str(one)).fold == 3
    several = init_model_folder(plans, tmp_path / "several", folds=(0, 1), export_onnx=False)
    assert open_parent(str(several)).fold == 0 and open_parent(str(several), "1").fold == 1
    with_all = init_model_folder(plans, tmp_path / "with_all", folds=(0, 1, "all"), export_onnx=False)
    assert open_parent(str(with_all)).fold == "all"
    assert open_parent(str(with_all)).checkpoint == with_all / "fold_all" / "checkpoint_final.pt"
    with pytest.raises(ModelError, match=r"--init-fold 4: .* folds present: \[0, 1\]"):
        open_parent(str(several), 4)
    (several / "fold_1" / "checkpoint_final.pt").rename(several / "fold_1" / "checkpoint_best.pt")
    assert open_parent(str(several), 1).checkpoint.name == "checkpoint_best.pt"   # a fold that never finished


# -- the weights --------------------------------------------------------------------------------------------------
def test_the_parent_weights_are_loaded_exactly_and_then_trained(tmp_path):
    from RCSegNeXtCore.training.trainer import Trainer
    parent = open_parent(str(trained_parent(tmp_path / "parent")))
    expected = load_checkpoint(parent.checkpoint)["network"]
    cases = tiny_cases(seed=1)
    trainer = Trainer(tiny_plans(), cases[:2], cases[2:], tmp_path / "run" / "fold_0", _config(epochs=1, lr=1e-3))
    assert any(not torch.equal(v, expected[k]) for k, v in trainer.network.state_dict().items())  # seed differs
    load_parent_weights(trainer.network, parent, trainer.signature)
    loaded = trainer.network.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # the optimizer holds the network's own parameters: a step moves the loaded weights, with a fresh state
    assert trainer.start_epoch == 0 and not trainer.optimizer.state
    trainer.fit()
    after = load_checkpoint(tmp_path / "run" / "fold_0" / "checkpoint_final.pt")["network"]
    assert any(not torch.equal(after[k], expected[k]) for k in expected)
    # a network of another width is refused, naming the difference
    wide = Trainer(tiny_plans(base_channels=8), cases[:2], cases[2:], tmp_path / "wide", _config(epochs=1))
    with pytest.raises(ModelError, match="base_channels: checkpoint 4, plan 8"):
        load_parent_weights(wide.network, parent, wide.signature)


# -- provenance ---------------------------------------------------------------------------------------------------
def _tiny_dataset(root: Path, n: int = 2) -> Path:
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        image = sitk.GetImageFromArray(np.full((4, 6, 6), i, np.float32))
        label = sitk.GetImageFromArray(np.zeros((4, 6, 6), np.uint8))
        sitk.WriteImage(image, str(root / "imagesTr" / f"case_{i}_0000.nii.gz"))
        sitk.WriteImage(label, str(root / "labelsTr" / f"case_{i}.nii.gz"))
    write_dataset_json(root, num_training=n)
    return root


def test_dataset_hash_changes_with_a_case_file_only(tmp_path):
    root = _tiny_dataset(tmp_path / "raw")
    first = dataset_sha256(load_dataset(root))
    assert len(first) == 64 and dataset_sha256(load_dataset(root)) == first      # nothing changed
    os.utime(root / "labelsTr" / "case_1.nii.gz", (1, 1))                        # a touch is no change
    assert dataset_sha256(load_dataset(root)) == first
    label = np.zeros((4, 6, 6), np.uint8)
    label[1, 2, 2] = 1                                                           # a corrected segmentation
    sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "labelsTr" / "case_1.nii.gz"))
    changed = dataset_sha256(load_dataset(root))
    assert changed != first
    assert dataset_sha256(load_dataset(root), ["case_0"]) != changed             # a subset of the cases


def test_read_provenance_of_folders_without_one(tmp_path):
    assert read_provenance(tmp_path) is None
    (tmp_path / "provenance.json").write_text("[1, 2]")
    assert read_provenance(tmp_path) is None
    (tmp_path / "provenance.json").write_text('{"mode": "scratch"}')
    assert read_provenance(tmp_path) == {"mode": "scratch"}


# -- end to end, as the Slicer module runs it ----------------------------------------------------------------------
def _core(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "RCSegNeXtCore", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=600)


@pytest.fixture(scope="module")
def scratch_parent(raw, tmp_path_factory):
    run = tmp_path_factory.mktemp("parent") / "parent"
    result = _core(str(raw), "-o", str(run), "--fold", "all", *SCRATCH, cwd=run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.slow
def test_fine_tune_run_reports_progress_as_json_and_records_provenance(raw, scratch_parent, tmp_path):
    scratch = read_provenance(scratch_parent)
    assert scratch["mode"] == "scratch" and scratch["parent"] is None and scratch["cases"] == 3
    assert scratch["dataset_sha256"] == dataset_sha256(load_dataset(raw))

    run = tmp_path / "tuned"
    result = _core(str(raw), "-o", str(run), "--fold", "all", "--init-from", str(scratch_parent), "--epochs", "2",
                   *RUN, "--progress-json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    events = _json_lines(result.stdout)                         # every stdout line is one JSON object
    stages = [e["stage"] for e in events]
    assert stages[:3] == ["plan", "preprocess", "preprocess"] and stages[-2:] == ["export", "done"]
    assert events[1] == {"stage": "preprocess", "done": 0, "total": 3} and events[2]["done"] == 3
    train = [e for e in events if e["stage"] == "train"]
    assert [e["epoch"] for e in train] == [1, 2] and [e["done"] for e in train] == [1, 2]
    keys = {"stage", "fold", "epoch", "epochs", "done", "total", "loss", "val_loss", "pseudo_dice", "seconds",
            "eta_s"}
    for event in train:
        assert set(event) == keys and event["fold"] == "all" and event["epochs"] == event["total"] == 2
        # fold "all": pseudo-Dice on the training cases, as nnU-Net's fold all (the panel shows it)
        assert set(event["pseudo_dice"]) == {"rectum", "tumour"} and event["val_loss"] > 0 and event["loss"] > 0
        assert all(0 <= v <= 1 for v in event["pseudo_dice"].values())
    assert train[-1]["eta_s"] == 0
    assert events[-1] == {"stage": "done", "model": str(run.resolve()), "done": 2, "total": 2}
    assert "initialised from" in result.stderr and "epoch 2/2" in result.stderr     # the log went to stderr
    assert "pseudo-Dice is measured on the training cases" in result.stderr

    assert (run / "plans.json").read_bytes() == (scratch_parent / "plans.json").read_bytes()   # plan unchanged
    for name in ("dataset.json", "fold_all/checkpoint_final.pt", "fold_all/model.onnx"):
        assert (run / name).is_file(), name
    tuned = read_provenance(run)
    parent_checkpoint = scratch_parent / "fold_all" / "checkpoint_final.pt"
    assert tuned["mode"] == "fine-tune" and tuned["cases"] == 3 and tuned["epochs"] == 2
    assert tuned["parent"] == {"path": str(scratch_parent.resolve()), "name": "parent", "fold": "all",
                               "checkpoint": "checkpoint_final.pt",
                               "weights_sha256": file_sha256(parent_checkpoint), "provenance": scratch}
    assert tuned["dataset_sha256"] == scratch["dataset_sha256"] and tuned["dataset"] == str(raw.resolve())


@pytest.mark.slow
def test_a_validated_fold_reports_pseudo_dice_and_validation(raw, scratch_parent, tmp_path):
    result = _core(str(raw), "-o", str(tmp_path / "run"), "--fold", "0", "--num-folds", "3", "--init-from",
                   str(scratch_parent), "--epochs", "1", *RUN, "--progress-json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    events = _json_lines(result.stdout)
    train = [e for e in events if e["stage"] == "train"]
    assert len(train) == 1 and train[0]["fold"] == 0 and isinstance(train[0]["val_loss"], float)
    assert set(train[0]["pseudo_dice"]) == {"rectum", "tumour"}
    assert {"stage": "validate", "fold": 0} in events and events[-1]["stage"] == "done"
    assert read_provenance(tmp_path / "run")["cases"] == 2            # fold 0 of 3 trains on 2 cases


@pytest.mark.slow
def test_an_interrupted_fine_tune_resumes_its_own_state(raw, scratch_parent, tmp_path):
    run = tmp_path / "tuned"
    args = [str(raw), "-o", str(run), "--fold", "all", "--init-from", str(scratch_parent), "--epochs", "3",
            "--iterations-per-epoch", "6", *RUN[2:]]
    proc = subprocess.Popen([sys.executable, "-m", "RCSegNeXtCore", "train", *args, "--progress-json"],
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
    for line in proc.stdout:                                     # killed right after the first epoch's line
        if json.loads(line)["stage"] == "train":
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    fold = run / "fold_all"
    assert not (fold / "checkpoint_final.pt").exists()
    stopped_after = load_checkpoint(fold / "checkpoint_latest.pt")["epoch"] + 1

    again = _core(*args, cwd=tmp_path)                           # without --resume: refused
    assert again.returncode == 2 and "--resume" in again.stderr
    # --resume without --init-from: the run goes on from its own checkpoint, as the fine-tune it started as
    resumed = _core(*[a for a in args if a not in ("--init-from", str(scratch_parent))], "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint_latest.pt after epoch {stopped_after}" in resumed.stdout
    log = (fold / "log.txt").read_text()
    assert log.count("initialised from") == 1                    # the parent's weights were not loaded again
    assert len(json.loads((fold / "metrics.json").read_text())) == 3
    assert read_provenance(run)["mode"] == "fine-tune"


def test_fold_all_monitors_its_training_cases_as_nnunet():
    """Fold "all" has no held-out cases: its pseudo-Dice runs on the training cases (nnU-Net's fold all), unless
    val_iterations is 0; other folds keep their held-out cases."""
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.pipeline import monitored_cases
    train, held_out = ["a", "b"], ["c"]
    assert monitored_cases("all", train, [], TrainingConfig()) == train
    assert monitored_cases("all", train, [], TrainingConfig(val_iterations=0)) == []
    assert monitored_cases(0, train, held_out, TrainingConfig()) == held_out
    assert monitored_cases(0, train, [], TrainingConfig()) == []


def test_resumed_fold_all_of_0_1_restarts_its_moving_average(tmp_path):
    """A fold "all" checkpoint whose score followed the training loss (no pseudo-Dice: RCSegNeXt 0.1) resumed with
    monitored cases: the moving average restarts instead of mixing -loss with Dice; without them it is kept."""
    from dataclasses import replace

    from RCSegNeXtCore.training.state import LATEST
    from RCSegNeXtCore.training.trainer import EpochBudget, Trainer
    torch.set_num_threads(1)
    cases = tiny_cases()
    config = TrainingConfig(epochs=2, iterations_per_epoch=1, val_iterations=1, device="cpu", num_workers=0,
                            progress=False, threads=1)
    old = Trainer(tiny_plans(), cases, [], tmp_path, replace(config, epochs=1))
    old.fit()
    assert old.ema is not None and old.ema < 0                        # -training loss
    kept = Trainer(tiny_plans(), cases, [], tmp_path / "kept", config)
    kept.resume(tmp_path / LATEST)
    assert kept.ema == pytest.approx(old.ema)
    resumed = Trainer(tiny_plans(), cases, cases, tmp_path / "resumed", config)
    resumed.resume(tmp_path / LATEST)
    assert resumed.ema is None and resumed.best_ema is None and resumed.start_epoch == 1
    record = resumed.run_epoch(1, EpochBudget(2, None))
    dices = [v for k, v in record.items() if k.startswith("dice_")]
    assert dices and record["ema_score"] == pytest.approx(float(np.nanmean(dices)))
