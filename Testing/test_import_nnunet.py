"""`rcsegnext import-nnunet`: nnU-Net v2's results folder of the official RCSegNeXt code -> a model folder
(RCSegNeXtCore/nnunet_import.py, commands/import_nnunet.py).

The results folder is Testing/data/nnunet_results/: plans.json and dataset.json written by nnU-Net v2.1.2's own
fingerprint extractor and planner (benchmarks/parity/import_fixture.py, run once in the parity environment), and
checkpoints built here in the format nnU-Net's save_checkpoint writes (its keys and value types are recorded in
checkpoint_structure.json by the same script, from a checkpoint nnU-Net itself saved) with the official reference
weights from ../shared/reference. No nnU-Net is needed."""
from __future__ import annotations

import json
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REFERENCE, require_path

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.errors import ModelError, PlanError
from RCSegNeXtCore.inference.model_folder import ModelFolder
from RCSegNeXtCore.nnunet_import import find_results, import_nnunet_results, load_nnunet_checkpoint
from RCSegNeXtCore.planning import plan_kernels_and_strides
from RCSegNeXtCore.plans import RESAMPLING_DEFAULTS, Plans

FIXTURE = Path(__file__).resolve().parent / "data" / "nnunet_results" / \
    "nnUNetTrainerRCSegNeXt__nnUNetPlans__3d_fullres"
NPZ = REFERENCE / "official_rcsegnext_reference.npz"


@pytest.fixture(scope="module")
def reference():
    require_path(NPZ, "official reference weights")
    with np.load(NPZ, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def nnunet_checkpoint(weights: dict, epoch: int = 100) -> dict:
    """A checkpoint as nnU-Net v2.1.2's nnUNetTrainer.save_checkpoint writes it (checkpoint_structure.json)."""
    state = OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in weights.items() if not k.startswith("__"))
    plans = json.loads((FIXTURE / "plans.json").read_text())
    dataset_json = json.loads((FIXTURE / "dataset.json").read_text())
    group = {"lr": 1e-4, "momentum": 0.99, "dampening": 0, "weight_decay": 3e-5, "nesterov": True, "maximize": False,
             "foreach": None, "differentiable": False, "fused": None, "params": list(range(len(state)))}
    return {
        "network_weights": state,
        "optimizer_state": {"state": {i: {"momentum_buffer": torch.zeros_like(v)} for i, v in enumerate(state.values())},
                            "param_groups": [group]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)] * 2, "ema_fg_dice": [np.float64(0.5)] * 2,
                    "dice_per_class_or_region": [[np.float64(0.7), np.float64(0.3)]] * 2,
                    "train_losses": [np.float64(-0.4)] * 2, "val_losses": [np.float64(-0.3)] * 2,
                    "lrs": [0.01, 0.0099], "epoch_start_timestamps": [1.0, 2.0], "epoch_end_timestamps": [1.5, 2.5]},
        "_best_ema": np.float64(0.5),
        "current_epoch": epoch,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json,
                      "unpack_dataset": True, "device": torch.device("cuda", 0)},
        "trainer_name": "nnUNetTrainerRCSegNeXt",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def test_the_built_checkpoint_has_the_structure_nnunet_saves():
    recorded = json.loads((FIXTURE / "checkpoint_structure.json").read_text())
    built = nnunet_checkpoint({"stem.weight": np.zeros((2, 1, 1, 1, 1), np.float32)})
    assert set(built) == set(recorded["keys"])
    assert set(built["logging"]) == set(recorded["keys"]["logging"])
    assert set(built["init_args"]) == set(recorded["keys"]["init_args"])
    assert recorded["keys"]["_best_ema"] == "numpy.float64" and recorded["keys"]["init_args"]["device"] == "torch.device"


def _results(tmp_path: Path, reference: dict) -> Path:
    """The fixture folder with fold_0 (final + best), fold_1 (final) and fold_2 (a run still going: latest only)."""
    results = tmp_path / "results" / FIXTURE.name
    shutil.copytree(FIXTURE, results)
    checkpoint = nnunet_checkpoint(reference)
    for name in ("fold_0/checkpoint_final.pth", "fold_0/checkpoint_best.pth", "fold_1/checkpoint_final.pth",
                 "fold_2/checkpoint_latest.pth"):
        (results / name).parent.mkdir(exist_ok=True)
        torch.save(checkpoint, results / name)
    return results


def test_nnunet_checkpoints_load_with_weights_only(tmp_path, reference):
    results = _results(tmp_path, reference)
    loaded = load_nnunet_checkpoint(results / "fold_0" / "checkpoint_final.pth")
    assert loaded["trainer_name"] == "nnUNetTrainerRCSegNeXt" and loaded["_best_ema"] == 0.5
    assert loaded["init_args"]["device"] == torch.device("cuda", 0)
    found = find_results(results.parent)                                 # the parent folder finds its one results folder
    assert found.configuration == "3d_fullres" and found.trainer == "nnUNetTrainerRCSegNeXt"
    assert sorted(found.folds) == ["0", "1"] and sorted(found.folds["0"]) == ["best", "final"]


@pytest.mark.slow
def test_import_nnunet_gives_the_official_output_and_nnunets_preprocessing(tmp_path, reference, capsys):
    results = _results(tmp_path, reference)
    out = tmp_path / "model"
    assert cli(["import-nnunet", str(results), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped fold 2" not in printed                               # fold_2 has no final checkpoint: not a fold
    plans = Plans.load(out)
    nnunet = json.loads((FIXTURE / "plans.json").read_text())
    config = nnunet["configurations"]["3d_fullres"]
    assert plans.target_spacing == config["spacing"] == [4.0, 0.875, 0.875]
    assert plans.transpose_forward == nnunet["transpose_forward"] == [0, 1, 2]
    assert plans.patch_size == config["patch_size"] == [16, 256, 256]
    assert plans.normalization == ["zscore"] and plans.mirror_axes == [0, 1, 2] and plans.batch_size == 2
    assert plans.resampling == RESAMPLING_DEFAULTS                        # nnU-Net's orders: 3/0, 1/0, 1/0
    assert (plans.kernels, plans.strides) == plan_kernels_and_strides([4.0, 0.875, 0.875])
    assert plans.median_spacing == nnunet["original_median_spacing_after_transp"]
    model = ModelFolder(out)
    assert model.folds == [0, 1]
    assert (out / "fold_0" / "checkpoint_best.pt").is_file() and not (out / "fold_1" / "checkpoint_best.pt").exists()
    network = model.load_networks([0], "final", torch.device("cpu"))[0].eval()
    with torch.inference_mode():
        output = network(torch.from_numpy(reference["__input__"]))
    assert (output - torch.from_numpy(reference["__output__"])).abs().max().item() < 1e-4
    # again without --overwrite: refused, nothing replaced
    assert cli(["import-nnunet", str(results), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_code_is_refused_and_never_run(tmp_path, reference):
    results = _results(tmp_path, reference)
    marker = tmp_path / "ran"
    hostile = nnunet_checkpoint(reference)
    hostile["init_args"]["callback"] = _RunsCode(marker)
    torch.save(hostile, results / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(ModelError, match="weights_only=True failed.*Unsupported global"):
        import_nnunet_results(results, tmp_path / "model")
    assert not marker.exists() and not (tmp_path / "model").exists()
    with open(results / "fold_1" / "checkpoint_final.pth", "wb") as handle:   # a legacy (non-zip) pickle too
        pickle.dump({"network_weights": _RunsCode(marker)}, handle)
    with pytest.raises(ModelError):
        import_nnunet_results(results, tmp_path / "model", folds=["1"])
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    ({"use_mask_for_norm": [True]}, "use_mask_for_norm"),
    ({"normalization_schemes": ["RescaleTo01Normalization"]}, "normalisation"),
    ({"patch_size": [18, 256, 256]}, "not divisible by the total stride"),
    ({"resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": True}},
     "force_separate_z"),
])
def test_plans_that_cannot_be_reproduced_are_refused(tmp_path, reference, change, message):
    results = _results(tmp_path, reference)
    plans = json.loads((results / "plans.json").read_text())
    plans["configurations"]["3d_fullres"].update(change)
    (results / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PlanError, match=message):
        import_nnunet_results(results, tmp_path / "model", folds=["1"])
    assert not (tmp_path / "model").exists()


def test_a_folder_without_results_is_named(tmp_path):
    with pytest.raises(ModelError, match="TRAINER__PLANS__CONFIGURATION"):
        find_results(tmp_path)
    assert cli(["import-nnunet", str(tmp_path / "missing"), "-o", str(tmp_path / "m")]) == 2
