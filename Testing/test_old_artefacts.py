"""Files written by release 0.1.0, before the core's modules moved (Testing/data/model_0.1.0: plans.json,
dataset.json and a one-epoch training checkpoint of a tiny 3-stage network), still load and mean the same:
a model folder predicts what 0.1.0 predicted, and training resumes from the checkpoint's full state."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_cases

from RCSegNeXtCore.inference.model_folder import ModelFolder
from RCSegNeXtCore.plans import Plans
from RCSegNeXtCore.training.state import load_training_checkpoint
from RCSegNeXtCore.training.config import TrainingConfig
from RCSegNeXtCore.training.trainer import Trainer

OLD = Path(__file__).resolve().parent / "data" / "model_0.1.0"
# a plans.json as 0.1.0 wrote it for a run with --deep-supervision (the training option inside "architecture")
OLD_PLANS_DS = OLD.parent / "plans_0.1.0_deep_supervision.json"
# what 0.1.0 computed for `_input()` with these weights: mean, std, two voxels per class
EXPECTED = {"mean": [0.3415004312992096, -0.2912020683288574, -0.5063723921775818],
            "std": [0.17329472303390503, 0.08688786625862122, 0.18858623504638672],
            "corner": [0.052527815103530884, -0.343204140663147, -0.49119219183921814],
            "centre": [0.3769458830356598, -0.27984461188316345, -0.383947491645813]}
WEIGHTS_SHA256 = "255ad29c312dc271026bc51a32f9c1f65615aa8f3e6852f4682518478f87c311"


def _input() -> torch.Tensor:
    z, y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32),
                             indexing="ij")
    return (torch.sin(3 * z + 2 * y) + torch.cos(5 * x * y))[None, None]


def test_old_model_folder_predicts_as_before():
    plans = Plans.load(OLD / "plans.json")
    assert plans.strides == [[2, 2, 2], [2, 2, 2]] and plans.architecture.base_channels == 4
    model = ModelFolder(OLD)
    assert model.folds == ["all"] and model.weights_sha256(["all"], "final") == WEIGHTS_SHA256
    network = model.load_networks(["all"], "final", torch.device("cpu"))[0].eval()
    with torch.no_grad():
        out = network(_input())[0]
    found = {"mean": out.mean(dim=(1, 2, 3)), "std": out.std(dim=(1, 2, 3)), "corner": out[:, 0, 0, 0],
             "centre": out[:, 8, 16, 16]}
    for key, values in EXPECTED.items():
        assert torch.allclose(found[key], torch.tensor(values), atol=1e-5), (key, found[key].tolist(), values)


def test_old_training_checkpoint_resumes(tmp_path):
    plans = Plans.load(OLD)
    state = load_training_checkpoint(OLD / "fold_all" / "checkpoint_final.pt", plans.network_signature())
    assert state["epoch"] == 0 and state["world_size"] == 1
    fold_dir = tmp_path / "fold_all"
    fold_dir.mkdir()
    shutil.copy(OLD / "fold_all" / "checkpoint_final.pt", fold_dir / "checkpoint_latest.pt")
    cases = tiny_cases(shape=(18, 40, 40))
    config = TrainingConfig(epochs=2, iterations_per_epoch=1, val_iterations=1, device="cpu", num_workers=0,
                            progress=False, threads=1)
    trainer = Trainer(plans, cases[:2], cases[2:], fold_dir, config)
    trainer.resume(fold_dir / "checkpoint_latest.pt")       # optimizer, scheduler, scaler, every random stream
    assert trainer.start_epoch == 1 and len(trainer.history) == 1
    trainer.fit()
    assert load_training_checkpoint(fold_dir / "checkpoint_final.pt", plans.network_signature())["epoch"] == 1


def test_old_plans_with_deep_supervision_load_and_keep_it_as_a_training_option():
    for path, value in ((OLD / "plans.json", False), (OLD_PLANS_DS, True)):
        plans = Plans.load(path)
        assert plans.legacy_training == {"deep_supervision": value}
        assert "deep_supervision" not in plans.to_dict()["architecture"] and "legacy_training" not in plans.to_dict()
        assert Plans.from_dict(plans.to_dict()).legacy_training == {}          # today's files: no such key
        assert plans.network_signature() == Plans.load(OLD).network_signature()  # the same network either way


@pytest.mark.slow
def test_old_run_folder_trained_with_deep_supervision_resumes_with_it(tmp_path):
    """A 0.1.0 run folder (plans.json with architecture.deep_supervision = true, a checkpoint with heads and the key in
    its signature, no training_config.json) resumes with deep supervision on, without --deep-supervision."""
    import json

    from RCSegNeXtCore.checkpoint import load_checkpoint
    from RCSegNeXtCore.cli import main as cli
    from RCSegNeXtCore.phantom import make_phantom_dataset
    from RCSegNeXtCore.training.config import load_training_config
    raw = make_phantom_dataset(tmp_path / "raw", 3, seed=0, size="small", progress=False)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD_PLANS_DS, run / "plans.json")
    command = ["train", str(raw), "-o", str(run), "--fold", "0", "--num-folds", "3", "--iterations-per-epoch", "1",
               "--val-iterations", "1", "--device", "cpu", "--num-workers", "0", "--threads", "1", "--no-validation"]
    assert cli([*command, "--epochs", "1"]) == 0
    assert load_training_config(run).deep_supervision
    latest = run / "fold_0" / "checkpoint_latest.pt"
    assert "ds_heads" in load_checkpoint(latest)
    # make it the run folder 0.1.0 left: its plans.json and signature, no recorded configuration
    shutil.copy(OLD_PLANS_DS, run / "plans.json")
    (run / "training_config.json").unlink()
    state = torch.load(latest, weights_only=True)
    state["network_signature"]["architecture"]["deep_supervision"] = True
    torch.save(state, latest)
    assert cli([*command, "--epochs", "2", "--resume"]) == 0
    final = load_checkpoint(run / "fold_0" / "checkpoint_final.pt")
    assert final["epoch"] == 1 and "ds_heads" in final
    assert load_training_config(run).deep_supervision
    assert "deep_supervision" not in json.loads((run / "plans.json").read_text())["architecture"]
