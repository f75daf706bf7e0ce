"""Inference backends (inference/backends.py): every installed engine gives PyTorch's logits on the exported fold, the
numeric and thread settings are the fixed ones, `select_backend`'s order, and no torch import on the engine path."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REFERENCE, REPO, require_module, require_path

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.inference.backends import (ENGINE_ORDER, BackendError, available_cores, describe, engine_installed,
                                              make_backend, select_backend)
from RCSegNeXtCore.inference.model_folder import ModelFolder, init_model_folder
from RCSegNeXtCore.inference.onnx_export import onnx_path
from RCSegNeXtCore.planning import make_plans_from_values

# max |logit difference| to PyTorch allowed per engine on the tiny random model (measured: ~2e-6 and ~1e-5)
TOLERANCE = {"onnxruntime": 1e-4, "openvino": 1e-3}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    plans = make_plans_from_values([4.0, 0.875, 0.875], [8, 32, 32], base_channels=8)
    return init_model_folder(plans, tmp_path_factory.mktemp("backends") / "m", seed=4)


@pytest.fixture(scope="module")
def tiles_and_logits(model):
    tiles = np.random.default_rng(1).standard_normal((2, 1, 8, 32, 32)).astype(np.float32)
    network = ModelFolder(model).load_networks()[0]
    return tiles, make_backend("torch", network=network).logits(tiles)


@pytest.mark.parametrize("engine", ENGINE_ORDER)
def test_each_engine_gives_the_torch_backends_logits(engine, model, tiles_and_logits):
    require_module(engine)
    tiles, expected = tiles_and_logits
    backend = make_backend(engine, onnx_file=onnx_path(model, 0))
    logits = backend.logits(tiles)
    assert logits.shape == (2, 3, 8, 32, 32) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() <= TOLERANCE[engine]
    assert (logits.argmax(1) == expected.argmax(1)).mean() > 0.999
    one = backend.logits(tiles[1:])  # another batch size: dynamic batch (OpenVINO compiles it once more)
    assert np.abs(one - expected[1:]).max() <= TOLERANCE[engine]


@pytest.mark.parametrize("engine", ENGINE_ORDER)
def test_engine_settings_are_the_fixed_ones_and_results_are_the_callers(engine, model, tiles_and_logits):
    require_module(engine)
    tiles, _ = tiles_and_logits
    backend = make_backend(engine, onnx_file=onnx_path(model, 0))
    settings = backend.settings
    assert settings["engine"] == engine and settings["precision"] == "f32"
    assert settings["threads"] == available_cores() == len(os.sched_getaffinity(0))
    if engine == "onnxruntime":
        assert settings["memory_arena"] is False
    assert describe(settings).startswith(f"{engine} {settings['version']} (") and "f32" in describe(settings)
    first = backend.logits(tiles[:1])
    kept = first.copy()
    backend.logits(tiles[1:])  # OpenVINO reuses its output buffer: the first result must not change
    np.testing.assert_array_equal(first, kept)
    out = np.empty_like(first)
    assert backend.logits(tiles[:1], out=out) is out
    np.testing.assert_array_equal(out, kept)
    assert make_backend(engine, onnx_file=onnx_path(model, 0), threads=1).settings["threads"] == 1


def test_openvino_precision_hint_is_f32_unless_asked(model):
    require_module("openvino")
    with pytest.raises(BackendError, match="use one of"):
        make_backend("openvino", onnx_file=onnx_path(model, 0), openvino_precision="int8")
    default = make_backend("openvino", onnx_file=onnx_path(model, 0), openvino_precision="default").settings
    assert default["precision_hint"] == "default" and default["precision"] in ("f32", "bf16", "f16")


def test_select_backend_order_is_fixed():
    def only(*names):
        return lambda name: name in names
    every = only("torch", *ENGINE_ORDER)
    assert ENGINE_ORDER == ("openvino", "onnxruntime")
    assert select_backend("auto", "cpu", every).name == "openvino"
    assert select_backend("auto", "auto", every, gpu=lambda: False).name == "openvino"
    assert select_backend("auto", "cpu", only("torch", "onnxruntime")).name == "onnxruntime"
    fallback = select_backend("auto", "cpu", only("torch"))
    assert fallback.name == "torch" and "pip install openvino" in fallback.note and "\n" not in fallback.note
    assert select_backend("auto", "cpu", every).note is None
    # a GPU: PyTorch
    assert select_backend("auto", "cuda", every).name == "torch"
    assert select_backend("auto", "auto", every, gpu=lambda: True).name == "torch"
    assert select_backend("torch", "cpu", every).name == "torch"
    assert select_backend("onnxruntime", "cpu", every).name == "onnxruntime"
    with pytest.raises(BackendError, match="pip install openvino"):
        select_backend("openvino", "cpu", only("torch"))
    with pytest.raises(BackendError, match="runs on the CPU"):
        select_backend("openvino", "cuda", every)
    with pytest.raises(BackendError, match="PyTorch is not installed"):
        select_backend("torch", "cpu", only(*ENGINE_ORDER))
    with pytest.raises(BackendError, match="no backend"):
        select_backend("auto", "cpu", only())
    with pytest.raises(BackendError, match="use auto"):
        select_backend("tensorrt", "cpu", every)


def test_engine_path_imports_no_torch(model):
    """With `import torch` failing (as where PyTorch is not installed): the backends module, select_backend('auto')
    and every installed engine on the exported fold work, and torch was never imported."""
    engines = [e for e in ENGINE_ORDER if require_module(e)]
    code = f"""
        import sys
        sys.modules["torch"] = None
        import numpy as np
        from RCSegNeXtCore.inference.backends import make_backend, select_backend
        from RCSegNeXtCore.inference.onnx_export import ensure_onnx
        path = ensure_onnx({str(model)!r}, 0)
        print(select_backend("auto", "auto").name)
        tiles = np.zeros((1, 1, 8, 32, 32), np.float32)
        for engine in {engines!r}:
            print(engine, make_backend(engine, onnx_file=path).logits(tiles).shape)
        loaded = [m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None]
        assert not loaded, loaded
        """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ENGINE_ORDER[0]
    assert lines[1:] == [f"{e} (1, 3, 8, 32, 32)" for e in engines]


def test_torch_backend_settings():
    network = torch.nn.Conv3d(1, 3, 1)
    backend = make_backend("torch", network=network)
    assert backend.settings["engine"] == "torch" and backend.settings["precision"] == "f32"
    assert backend.logits(np.ones((1, 1, 2, 2, 2), np.float32)).shape == (1, 3, 2, 2, 2)
    with pytest.raises(BackendError, match="needs the fold's ONNX file"):
        make_backend("openvino")


@pytest.mark.slow
def test_imported_official_weights_give_the_official_logits_through_onnx(tmp_path, capsys):
    """import-official writes fold_0/model.onnx; every installed engine reproduces the official network's output
    on the reference input (full width, the [16, 64, 64] reference patch)."""
    ref = np.load(require_path(REFERENCE / "official_rcsegnext_reference.npz", "official reference"))
    torch.save({k: torch.from_numpy(ref[k]) for k in ref.files if not k.startswith("__")}, tmp_path / "weights.pt")
    make_plans_from_values([4.0, 0.875, 0.875], [16, 64, 64]).save(tmp_path / "plans.json")
    assert cli(["import-official", str(tmp_path / "weights.pt"), "-o", str(tmp_path / "m"),
                "--plans", str(tmp_path / "plans.json")]) == 0
    assert "fold_0/model.onnx: exported" in capsys.readouterr().out
    engines = [e for e in ENGINE_ORDER if engine_installed(e)]
    if not engines:
        require_module("openvino")
    for engine in engines:
        logits = make_backend(engine, onnx_file=onnx_path(tmp_path / "m", 0)).logits(ref["__input__"])
        np.testing.assert_allclose(logits, ref["__output__"], atol=2e-3, rtol=1e-3, err_msg=engine)


@pytest.fixture(scope="module")
def case_file(tmp_path_factory):
    """A 2-fold tiny model (ONNX exported) and a case of 2 x 2 x 2 tiles that needs resampling in-plane."""
    from RCSegNeXtCore.data.io import Geometry, write_image
    folder = tmp_path_factory.mktemp("predict_backends")
    plans = make_plans_from_values([4.0, 0.875, 0.875], [8, 32, 32], base_channels=4)
    model = init_model_folder(plans, folder / "m", folds=(0, 1), seed=5)
    geometry = Geometry((12, 44, 40), (4.0, 0.8, 0.9), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = np.random.default_rng(2).normal(300, 60, geometry.shape).astype(np.float32)
    write_image(image, geometry, folder / "case.nii.gz")
    return model, folder / "case.nii.gz"


@pytest.mark.parametrize("tta", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_every_backend_gives_the_torch_backends_labels_and_probabilities(case_file, tta):
    """The same sliding window (tiles, Gaussian, mirrors, both folds, restore) on each backend: labels equal and
    probabilities within 1e-4 of the torch backend's (which equals today's device path: test_sliding_window)."""
    from RCSegNeXtCore.data.io import read_image
    from RCSegNeXtCore.inference.predictor import Predictor
    model, path = case_file
    image = read_image(path)
    reference = Predictor(model, device="cpu", tta=tta, backend="torch")
    expected = reference.predict(image, keep_probabilities=True)
    assert expected.stats.networks == 2 and expected.stats.tiles == 8 and expected.stats.mirrors == (8 if tta else 1)
    assert reference.engine.startswith("torch ") and reference.metadata()["RCSegNeXt_Engine"] == reference.engine
    for engine in ENGINE_ORDER:
        require_module(engine)
        predictor = Predictor(model, device="cpu", tta=tta, backend=engine)
        got = predictor.predict(image, keep_probabilities=True)
        assert predictor.backend == engine and predictor.engine == describe(predictor.settings)
        assert predictor.metadata()["RCSegNeXt_Engine"].startswith(f"{engine} ")
        assert np.abs(got.probabilities - expected.probabilities).max() < 1e-4, engine
        np.testing.assert_array_equal(got.labels, expected.labels)
    with pytest.raises(BackendError, match="--whole-volume needs the torch backend"):
        Predictor(model, device="cpu", backend=ENGINE_ORDER[0], whole_volume_max_voxels=None)
    assert Predictor(model, device="cpu", whole_volume_max_voxels=None).backend == "torch"  # auto: torch for that


@pytest.mark.slow
def test_cli_predicts_without_torch_and_gives_the_torch_backends_labels(case_file, tmp_path):
    """The real `python -m RCSegNeXtCore predict` in a process where `import torch` fails: default backend (the
    first installed engine), reading, preprocessing, sliding window, restore and the .seg.nrrd writer without
    torch; its labels are the torch backend's, its provenance names the engine, torch was never loaded."""
    import SimpleITK as sitk
    require_module(ENGINE_ORDER[0])
    model, path = case_file
    out = tmp_path / "blocked.seg.nrrd"
    code = f"""
        import runpy, sys
        sys.modules["torch"] = None
        sys.argv = ["rcsegnext", "predict", "-i", {str(path)!r}, "-o", {str(out)!r}, "-m", {str(model)!r},
                    "--tta", "--progress-json"]
        try:
            runpy.run_module("RCSegNeXtCore", run_name="__main__")
        finally:
            loaded = [m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None]
            print("torch modules loaded:", loaded, file=sys.stderr)
        """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "torch modules loaded: []" in done.stderr and f"engine: {ENGINE_ORDER[0]} " in done.stderr
    assert f'"engine": "{ENGINE_ORDER[0]} ' in done.stdout
    assert cli(["predict", "-i", str(path), "-o", str(tmp_path / "torch.seg.nrrd"), "-m", str(model), "--tta",
                "--backend", "torch"]) == 0
    blocked, with_torch = sitk.ReadImage(str(out)), sitk.ReadImage(str(tmp_path / "torch.seg.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(blocked), sitk.GetArrayFromImage(with_torch))
    assert blocked.GetMetaData("RCSegNeXt_Engine").startswith(f"{ENGINE_ORDER[0]} ")
    assert with_torch.GetMetaData("RCSegNeXt_Engine").startswith("torch ")
