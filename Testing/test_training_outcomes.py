"""What training promises, checked so that removing the behaviour fails a test: nnU-Net's exact 5-fold split, a short
run that really learns, checkpoint_best at the best EMA pseudo-Dice (and `predict --checkpoint best` using it),
`--gpus N --device cpu` as N gloo processes, and `rcsegnext demo --minutes` end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_helpers import tiny_cases, tiny_plans

from RCSegNeXtCore.checkpoint import load_checkpoint
from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.data.io import Geometry, write_image
from RCSegNeXtCore.inference.model_folder import ModelFolder, file_sha256, init_model_folder
from RCSegNeXtCore.inference.predictor import Predictor
from RCSegNeXtCore.training.splits import make_splits
from RCSegNeXtCore.training.trainer import TrainConfig, Trainer

LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"


def _subprocess(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "RCSegNeXtCore", *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout, env={**os.environ})


# -- the 5-fold split -----------------------------------------------------------------------------------------
# Expected validation lists computed once with scikit-learn 1.9.1, exactly as nnU-Net v2 splits a dataset:
#   keys = np.sort(case_ids); KFold(n_splits=5, shuffle=True, random_state=12345).split(keys) -> keys[val_idx]
# (scikit-learn is not a dependency: the lists are pinned here)
NNUNET_VAL_12 = [["case_000", "case_003", "case_008"], ["case_007", "case_010", "case_011"],
                 ["case_006", "case_009"], ["case_001", "case_004"], ["case_002", "case_005"]]
NNUNET_VAL_25 = [["PHANTOM_008", "PHANTOM_013", "PHANTOM_016", "PHANTOM_019", "PHANTOM_021"],
                 ["PHANTOM_003", "PHANTOM_010", "PHANTOM_012", "PHANTOM_015", "PHANTOM_017"],
                 ["PHANTOM_000", "PHANTOM_006", "PHANTOM_007", "PHANTOM_011", "PHANTOM_018"],
                 ["PHANTOM_014", "PHANTOM_020", "PHANTOM_022", "PHANTOM_023", "PHANTOM_024"],
                 ["PHANTOM_001", "PHANTOM_002", "PHANTOM_004", "PHANTOM_005", "PHANTOM_009"]]
NNUNET_VAL_7 = [["PHANTOM_004", "PHANTOM_007"], ["PHANTOM_001", "PHANTOM_005"], ["PHANTOM_002"], ["PHANTOM_006"],
                ["PHANTOM_003"]]   # ids PHANTOM_001 .. PHANTOM_007


@pytest.mark.parametrize("ids, expected", [
    ([f"case_{i:03d}" for i in range(12)], NNUNET_VAL_12),
    ([f"PHANTOM_{i:03d}" for i in range(25)], NNUNET_VAL_25),      # the demo's 25 phantom cases
    ([f"PHANTOM_{i:03d}" for i in range(1, 8)], NNUNET_VAL_7)])
def test_five_fold_split_is_exactly_nnunets(ids, expected):
    splits = make_splits(list(reversed(ids)), 5)        # the input order does not matter: ids are sorted first
    assert [s["val"] for s in splits] == expected
    for split, val in zip(splits, expected):
        assert split["train"] == sorted(set(ids) - set(val))


# -- a short run learns ---------------------------------------------------------------------------------------
def _fold_dir_model(tmp_path: Path, plans) -> Path:
    """A model folder holding only plans.json and dataset.json; the trainer writes fold_0/."""
    return init_model_folder(plans, tmp_path / "run", folds=())


@pytest.fixture
def restore_threads():
    """The trainer sets torch's CPU thread count for the process; put it back for the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_thirty_iterations_learn(tmp_path, restore_threads):
    """30 iterations on tiny synthetic cases (box 'rectum' with a 'tumour', image = labels + noise): the training
    loss falls and the held-out pseudo-Dice of the rectum rises well above the untrained network's. (The phantom
    needs ~200 iterations before any foreground appears: too slow for a test; the demo covers it.)
    Measured (1 or 2 CPU threads): loss 2.03 -> 0.48 (means of the first / last 5 iterations), rectum pseudo-Dice
    0.32 untrained -> 0.96. One thread: ~3 s, and no slowdown when other processes keep the cores busy."""
    cases = tiny_cases(4, seed=0)
    config = TrainConfig(epochs=1, iterations_per_epoch=30, val_iterations=4, lr=0.02, device="cpu", num_workers=0,
                         augment=False, progress=False, threads=1)
    trainer = Trainer(tiny_plans(), cases[:3], cases[3:], tmp_path / "fold_0", config)
    untrained = trainer.validate(0)
    losses = []
    step = trainer.train_step
    trainer.train_step = lambda images, labels: losses.append(step(images, labels)) or losses[-1]
    trainer.fit()
    trained = trainer.validate(1)
    assert len(losses) == 30
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert last < 0.6 * first, (first, last, losses)
    assert trained["val_loss"] < 0.6 * untrained["val_loss"], (untrained, trained)
    assert trained["dice_rectum"] > 0.5 and trained["dice_rectum"] > untrained["dice_rectum"] + 0.3, \
        (untrained, trained)


# -- checkpoint_best ------------------------------------------------------------------------------------------
# scripted pseudo-Dice per epoch: the raw best is epoch 2 (0.9, tied in 3), the EMA (0.9 old + 0.1 new) peaks in
# epoch 3: 0.2, 0.27, 0.333, 0.2997, 0.2697, 0.2428
SCRIPTED_DICE = [0.2, 0.9, 0.9, 0.0, 0.0, 0.0]


def test_checkpoint_best_is_the_best_ema_epoch_and_predict_loads_it(tmp_path, monkeypatch, restore_threads):
    from RCSegNeXtCore.training import logs
    monkeypatch.setattr(logs, "plot_progress", lambda history, path: False)   # no progress.png: not tested here
    plans = tiny_plans()
    run = _fold_dir_model(tmp_path, plans)
    cases = tiny_cases(3)
    config = TrainConfig(epochs=len(SCRIPTED_DICE), iterations_per_epoch=1, val_iterations=1, device="cpu",
                         num_workers=0, augment=False, progress=False, threads=1)
    trainer = Trainer(plans, cases[:2], cases[2:], run / "fold_0", config)
    trainer.validate = lambda epoch: {"val_loss": 1.0, "dice_rectum": SCRIPTED_DICE[epoch],
                                      "dice_tumour": SCRIPTED_DICE[epoch]}
    weights = {}                                  # the network after each epoch, as checkpoint_latest saved it
    save = trainer.save

    def recording_save(name, epoch):
        save(name, epoch)
        if name == LATEST:
            weights[epoch] = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    trainer.save = recording_save
    trainer.fit()

    history = json.loads((run / "fold_0" / "metrics.json").read_text())
    ema = [r["ema_score"] for r in history]
    np.testing.assert_allclose(ema, [0.2, 0.27, 0.333, 0.2997, 0.26973, 0.242757], atol=1e-9)
    best_epoch = int(np.argmax(ema))
    assert best_epoch == 2
    best = load_checkpoint(run / "fold_0" / BEST)
    assert best["epoch"] == best_epoch and best["best_ema"] == pytest.approx(max(ema))
    for key, value in best["network"].items():
        assert torch.equal(value, weights[best_epoch][key]), key
    final = load_checkpoint(run / "fold_0" / FINAL)
    assert final["epoch"] == len(SCRIPTED_DICE) - 1
    assert any(not torch.equal(final["network"][k], best["network"][k]) for k in final["network"])
    log = (run / "fold_0" / "log.txt").read_text().splitlines()
    assert [line.split("  ")[1].split()[1] for line in log if "(new best)" in line] == ["1/6", "2/6", "3/6"]

    # predict --checkpoint best: those weights, and their SHA-256 in the output
    predictor = Predictor(run, folds=[0], checkpoint="best", device="cpu", backend="torch")
    for key, value in predictor.networks[0].state_dict().items():
        assert torch.equal(value, best["network"][key]), key
    geometry = Geometry((8, 36, 36), (3.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = np.random.default_rng(0).normal(0, 1, geometry.shape).astype(np.float32)
    write_image(image, geometry, tmp_path / "case.nii.gz")
    for checkpoint in ("best", "final"):
        out = tmp_path / f"{checkpoint}.seg.nrrd"
        assert cli(["predict", "-i", str(tmp_path / "case.nii.gz"), "-o", str(out), "-m", str(run), "--folds", "0",
                    "--checkpoint", checkpoint, "--device", "cpu"]) == 0
        header = sitk.ReadImage(str(out)).GetMetaData("RCSegNeXt_WeightsSHA256")
        assert header == file_sha256(run / "fold_0" / f"checkpoint_{checkpoint}.pt")
        assert header == ModelFolder(run).weights_sha256([0], checkpoint)
    assert file_sha256(run / "fold_0" / BEST) != file_sha256(run / "fold_0" / FINAL)


# -- --gpus N --device cpu ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("phantom") / "raw"
    assert cli(["phantom", str(raw), "--cases", "4", "--size", "small", "--no-progress"]) == 0
    return raw


@pytest.mark.slow
def test_gpus_two_with_device_cpu_trains_in_two_gloo_processes(phantom, tmp_path):
    run = tmp_path / "run"
    result = _subprocess("train", str(phantom), "-o", str(run), "--fold", "0", "--num-folds", "2", "--epochs", "1",
                         "--iterations-per-epoch", "2", "--val-iterations", "2", "--base-channels", "4",
                         "--patch-size", "16", "32", "32", "--device", "cpu", "--gpus", "2", "--threads", "1",
                         "--num-workers", "0", "--no-validation")
    assert result.returncode == 0, result.stderr[-3000:]
    final = load_checkpoint(run / "fold_0" / FINAL)
    assert final["world_size"] == 2 and len(final["rank_states"]) == 2
    assert final["rank_states"][0]["sampler"] != final["rank_states"][1]["sampler"]   # each rank its own patches
    log = (run / "fold_0" / "log.txt").read_text()
    assert "device cpu x2" in log and log.count("epoch 1/1") == 1                    # rank 0 alone logs


# -- the demo -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_with_a_time_budget_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    # 5 cases: fold 0 trains on 4, holds out 1; a 3 s budget stops training after its first epoch (of 40)
    result = _subprocess("demo", "--out", str(out), "--minutes", "0.05", "--cases", "5", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo finished in" in result.stdout
    config = json.loads((out / "run" / "training_config.json").read_text())
    assert config["max_seconds"] == pytest.approx(3.0)
    history = json.loads((out / "run" / "fold_0" / "metrics.json").read_text())
    assert 1 <= len(history) < 40
    assert "time budget" in (out / "run" / "fold_0" / "log.txt").read_text()
    held_out = json.loads((out / "run" / "splits_final.json").read_text())[0]["val"]
    assert held_out == ["PHANTOM_000"]
    assert (out / "predictions" / "PHANTOM_000.seg.nrrd").is_file()
    assert "| PHANTOM_000 |" in (out / "dice_table.md").read_text()
    assert (out / "held_out_sagittal.png").stat().st_size > 1000
