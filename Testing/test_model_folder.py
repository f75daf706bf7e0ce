"""Model folders: init-model, refusals of folders that do not fit, weights_only loading, import-official."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REFERENCE as SHARED_REFERENCE, require_path

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.planning import make_plans_from_values
from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.inference.model_folder import ModelFolder, file_sha256, init_model_folder
from RCSegNeXtCore.plans import Plans

REFERENCE = SHARED_REFERENCE / "official_rcsegnext_reference.npz"


def tiny_plans(**overrides) -> Plans:
    return make_plans_from_values([4.0, 0.875, 0.875], [8, 32, 32], base_channels=4, **overrides)


def test_init_model_folder_loads_every_fold(tmp_path):
    out = init_model_folder(tiny_plans(), tmp_path / "m", folds=(0, 2), seed=3, export_onnx=False)
    model = ModelFolder(out)
    assert model.folds == [0, 2] and model.labels == {"background": 0, "rectum": 1, "tumour": 2}
    nets = model.load_networks()
    assert len(nets) == 2 and not nets[0].training
    # different folds get different random weights; the same seed reproduces them
    a, b = (dict(n.named_parameters())["stem.weight"] for n in nets)
    assert not torch.equal(a, b)
    again = ModelFolder(init_model_folder(tiny_plans(), tmp_path / "m2", folds=(0,), seed=3,
                                          export_onnx=False)).load_networks()[0]
    assert torch.equal(dict(again.named_parameters())["stem.weight"], a)
    # single-fold hash is the checkpoint file's SHA-256 (what sha256sum prints)
    import hashlib
    raw = (out / "fold_0" / "checkpoint_final.pt").read_bytes()
    assert model.weights_sha256([0]) == hashlib.sha256(raw).hexdigest() == file_sha256(out / "fold_0/checkpoint_final.pt")
    with pytest.raises(ModelError, match=r"fold\(s\) \[1\] not present"):
        model.load_networks(folds=[1])
    with pytest.raises(ModelError, match="checkpoint_best.pt"):
        model.checkpoint_path(0, "best")
    with pytest.raises(ModelError, match="already holds a model folder"):
        init_model_folder(tiny_plans(), out, export_onnx=False)


def test_init_model_cli_with_base_channels(tmp_path):
    tiny_plans().save(tmp_path / "plans.json")
    assert cli(["init-model", "--plans", str(tmp_path / "plans.json"), "-o", str(tmp_path / "m"),
                "--base-channels", "8", "--folds", "0", "1", "--no-onnx"]) == 0
    model = ModelFolder(tmp_path / "m")
    assert model.plans.architecture.base_channels == 8 and model.folds == [0, 1]
    assert model.load_networks()[0].stem.out_channels == 8
    assert cli(["init-model", "--plans", str(tmp_path / "plans.json"), "-o", str(tmp_path / "all"),
                "--folds", "all", "--no-onnx"]) == 0
    assert ModelFolder(tmp_path / "all").folds == ["all"]
    assert cli(["init-model", "--plans", str(tmp_path / "plans.json"), "-o", str(tmp_path / "bad"),
                "--folds", "first"]) == 2


def test_fold_all_is_accepted_and_selected_by_name(tmp_path):
    from RCSegNeXtCore.inference.predictor import Predictor
    only_all = ModelFolder(init_model_folder(tiny_plans(), tmp_path / "a", folds=("all",), export_onnx=False))
    assert (tmp_path / "a" / "fold_all" / "checkpoint_final.pt").is_file()
    assert only_all.folds == ["all"] and only_all.select_folds() == ["all"]   # no numbered fold: fold_all is used
    assert len(only_all.load_networks()) == 1
    both = ModelFolder(init_model_folder(tiny_plans(), tmp_path / "b", folds=(0, 1, "all"), seed=3,
                                         export_onnx=False))
    assert both.folds == [0, 1, "all"]
    assert both.select_folds() == [0, 1]                  # default: the numbered folds (cross-validation ensemble)
    assert both.select_folds(["all"]) == ["all"] and both.select_folds(["0", "fold_all"]) == [0, "all"]
    fold_all = (tmp_path / "b" / "fold_all" / "checkpoint_final.pt").read_bytes()
    assert both.weights_sha256(["all"]) == __import__("hashlib").sha256(fold_all).hexdigest()
    net_all, net_0 = both.load_networks(["all"])[0], both.load_networks([0])[0]
    assert not torch.equal(net_all.stem.weight, net_0.stem.weight)
    assert Predictor(tmp_path / "b", folds=["all"], device="cpu").folds == ["all"]
    with pytest.raises(ModelError, match=r"fold\(s\) \['all'\] not present"):
        ModelFolder(init_model_folder(tiny_plans(), tmp_path / "c", folds=(0,),
                                      export_onnx=False)).select_folds(["all"])
    with pytest.raises(ModelError, match="fold must be a number"):
        both.select_folds(["last"])


@pytest.mark.slow
def test_predict_cli_folds_all(tmp_path):
    from RCSegNeXtCore.data.io import Geometry, read_geometry, write_image
    model = init_model_folder(tiny_plans(), tmp_path / "m", folds=(0, "all"))
    geometry = Geometry((6, 36, 34), (4.0, 0.875, 0.875), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = np.random.default_rng(0).normal(300, 60, geometry.shape).astype(np.float32)
    write_image(array, geometry, tmp_path / "in.nii.gz")
    assert cli(["predict", "-i", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "-m", str(model),
                "--folds", "all", "--device", "cpu"]) == 0
    assert read_geometry(tmp_path / "out.nii.gz").matches(geometry, 1e-6)
    assert cli(["predict", "-i", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "bad.nii.gz"), "-m", str(model),
                "--folds", "3", "--device", "cpu"]) == 2                 # a clear error, exit 2
    assert not (tmp_path / "bad.nii.gz").exists()


def test_folder_whose_parts_do_not_fit_is_refused(tmp_path):
    out = init_model_folder(tiny_plans(), tmp_path / "m", export_onnx=False)
    data = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    data["labels"] = {"background": 0, "rectum": 1, "lesion": 2}
    (out / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelError, match=r"dataset.json labels .*lesion.* vs plans.json labels .*tumour"):
        ModelFolder(out)
    # weights made for another width than plans.json says
    other = init_model_folder(tiny_plans(), tmp_path / "w", base_channels=8, export_onnx=False)
    tiny_plans().save(other / "plans.json")
    with pytest.raises(ModelError, match=r"base_channels: checkpoint 8, plan 4"):
        ModelFolder(other).load_networks()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no plans.json"):
        ModelFolder(tmp_path / "empty")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    out = init_model_folder(tiny_plans(), tmp_path / "m", export_onnx=False)
    marker = tmp_path / "PWNED"
    checkpoint = out / "fold_0" / "checkpoint_final.pt"
    good = torch.load(checkpoint, weights_only=True)
    good["payload"] = _RunsCode(marker)
    torch.save(good, checkpoint)                      # a zip whose pickle calls os.system when unpickled
    with pytest.raises(ModelError, match="refused to load"):
        ModelFolder(out).load_networks()
    assert not marker.exists()
    # the file really is hostile: unsafe loading (never done by RCSegNeXt) runs the command
    canary = tmp_path / "CANARY"
    good["payload"] = _RunsCode(canary)
    torch.save(good, tmp_path / "hostile.pt")
    torch.load(tmp_path / "hostile.pt", weights_only=False)
    assert canary.exists()
    # a legacy (non-zip) pickle too
    with open(checkpoint, "wb") as handle:
        pickle.dump({"network": _RunsCode(marker)}, handle)
    with pytest.raises(ModelError):
        ModelFolder(out).load_networks()
    assert not marker.exists()
    # and through the CLI's import-official
    plans_path = tiny_plans().save(tmp_path / "plans.json")
    assert cli(["import-official", str(checkpoint), "-o", str(tmp_path / "imp"), "--plans", str(plans_path)]) == 2
    assert not marker.exists() and not (tmp_path / "imp").exists()


@pytest.mark.slow
def test_import_official_nnunet_checkpoint_reproduces_reference_output(tmp_path, capsys):
    ref = np.load(require_path(REFERENCE, "official reference state dict"))
    state = {k: torch.from_numpy(ref[k]) for k in ref.files if not k.startswith("__")}
    nnunet_like = {"network_weights": state, "current_epoch": 100, "trainer_name": "nnUNetTrainer_RCSegNeXt",
                   "inference_allowed_mirroring_axes": (0, 1, 2), "init_args": {"device": torch.device("cpu")},
                   "logging": {"ema_fg_dice": [np.float64(0.61), np.float32(0.7)]}}  # as nnU-Net v2 saves it
    torch.save(nnunet_like, tmp_path / "checkpoint_final.pth")
    plans = make_plans_from_values([4.0, 0.875, 0.875], [16, 64, 64])
    plans.save(tmp_path / "plans.json")
    assert cli(["import-official", str(tmp_path / "checkpoint_final.pth"), "-o", str(tmp_path / "m"),
                "--plans", str(tmp_path / "plans.json"), "--no-onnx"]) == 0  # the ONNX file: test_backends.py
    net = ModelFolder(tmp_path / "m").load_networks()[0]
    with torch.no_grad():
        out = net(torch.from_numpy(ref["__input__"]))
    np.testing.assert_allclose(out.numpy(), ref["__output__"], atol=1e-3, rtol=1e-3)
    # a plan of another width is refused with both values
    make_plans_from_values([4.0, 0.875, 0.875], [16, 64, 64], base_channels=16).save(tmp_path / "p16.json")
    assert cli(["import-official", str(tmp_path / "checkpoint_final.pth"), "-o", str(tmp_path / "m16"),
                "--plans", str(tmp_path / "p16.json")]) == 2
    assert "base_channels: checkpoint 32, plan 16" in capsys.readouterr().err
