"""ONNX export of model folders: fold_K/model.onnx + model.onnx.json written by init-model, import-official, training
and `rcsegnext export-onnx`; a file whose checkpoint, plan or bytes changed is stale and re-exported with PyTorch,
refused without it; the exported graph gives the network's logits."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO, require_module

from RCSegNeXtCore.checkpoint import save_checkpoint
from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.inference.model_folder import ModelFolder, init_model_folder
from RCSegNeXtCore.inference.onnx_export import (ensure_onnx, export_fold, metadata_path, onnx_path, onnx_status,
                                                 _trace_size)
from RCSegNeXtCore.planning import make_plans_from_values

# `import torch` (and onnx) fail in a child process started with this prelude, as where PyTorch is not installed
BLOCK = "import sys\nfor _name in {names!r}:\n    sys.modules[_name] = None\n"


def tiny_plans(**overrides):
    return make_plans_from_values([4.0, 0.875, 0.875], [8, 32, 32], base_channels=4, **overrides)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return init_model_folder(tiny_plans(), tmp_path_factory.mktemp("onnx") / "m", folds=(0, 1), seed=3)


def run_blocked(code: str, names=("torch",)) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(names=list(names)) + textwrap.dedent(code)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_init_model_writes_an_onnx_file_per_fold_with_what_it_was_made_from(model):
    plans = ModelFolder(model).plans
    for fold in (0, 1):
        status = onnx_status(model, fold)
        assert status.ok and status.path == model / f"fold_{fold}" / "model.onnx"
        meta = json.loads(metadata_path(status.path).read_text())
        assert meta["checkpoint"] == "checkpoint_final.pt" and meta["patch_size"] == [8, 32, 32]
        assert meta["opset"] >= 17 and meta["input"] == "image" and meta["output"] == "logits"
        assert meta["network_signature"] == plans.network_signature()
        assert {"checkpoint_sha256", "sha256", "torch", "onnx", "rcsegnext", "date"} <= set(meta)
    onnx = require_module("onnx")
    graph = onnx.load(str(onnx_path(model, 0))).graph
    shape = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert shape == ["batch", 1, 8, 32, 32]  # batch dynamic, the patch static


def test_exported_graph_gives_the_networks_logits(model):
    ort = require_module("onnxruntime")
    network = ModelFolder(model).load_networks([1])[0]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(onnx_path(model, 1)), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x})[0], expected, atol=1e-4, rtol=0)


def test_trace_size_is_the_smallest_input_the_network_takes():
    assert _trace_size(tiny_plans()) == [4, 8, 8]              # total stride [2, 8, 8]: two cells in z
    assert _trace_size(make_plans_from_values([4.0, 0.875, 0.875], [16, 320, 320])) == [8, 16, 16]


@pytest.mark.slow
def test_a_changed_checkpoint_plan_or_file_is_stale_and_exported_again(tmp_path):
    out = init_model_folder(tiny_plans(), tmp_path / "m", seed=1)
    assert onnx_status(out, 0).ok
    # new weights under the same name
    torch.manual_seed(5)
    plans = ModelFolder(out).plans
    save_checkpoint(out / "fold_0" / "checkpoint_final.pt", plans.build_network().state_dict(),
                    plans.network_signature())
    status = onnx_status(out, 0)
    assert status.state == "stale" and "checkpoint_final.pt changed since the export" in status.reason
    notes = []
    assert ensure_onnx(out, 0, log=notes.append) == onnx_path(out, 0) and onnx_status(out, 0).ok
    assert "exporting it again" in notes[0]
    # another patch size in plans.json
    plans.with_overrides(patch_size=[16, 32, 32]).save(out / "plans.json")
    assert "patch_size is [16, 32, 32]" in onnx_status(out, 0).reason
    export_fold(out, 0)
    assert onnx_status(out, 0).ok
    # the file's bytes, its metadata, the file itself
    path = onnx_path(out, 0)
    path.write_bytes(path.read_bytes() + b"\0")
    assert "SHA-256 mismatch" in onnx_status(out, 0).reason
    metadata_path(path).unlink()
    assert "model.onnx.json" in onnx_status(out, 0).reason
    path.unlink()
    assert onnx_status(out, 0).state == "missing"


def test_without_pytorch_a_stale_file_is_refused_and_a_current_one_used(tmp_path):
    out = init_model_folder(tiny_plans(), tmp_path / "m", seed=1)
    code = f"""
        from RCSegNeXtCore.inference.onnx_export import ensure_onnx, onnx_status
        print(ensure_onnx({str(out)!r}, 0))
        print(onnx_status({str(out)!r}, 0).state)
        assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        """
    ok = run_blocked(code)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == [str(onnx_path(out, 0)), "ok"]
    plans = ModelFolder(out).plans
    torch.manual_seed(9)
    save_checkpoint(out / "fold_0" / "checkpoint_final.pt", plans.build_network().state_dict(),
                    plans.network_signature())
    refused = run_blocked(code)
    assert refused.returncode != 0 and "ModelError" in refused.stderr
    assert "checkpoint_final.pt changed since the export" in refused.stderr
    assert "Exporting it again needs PyTorch" in refused.stderr and "rcsegnext export-onnx" in refused.stderr


@pytest.mark.slow
def test_export_onnx_command(tmp_path, capsys):
    out = init_model_folder(tiny_plans(), tmp_path / "m", folds=(0, "all"), seed=2, export_onnx=False)
    assert not onnx_path(out, 0).exists()
    assert cli(["export-onnx", str(out), "--folds", "0", "all"]) == 0
    first = capsys.readouterr().out
    assert "fold_0/model.onnx: exported" in first and "fold_all/model.onnx: exported" in first
    assert onnx_status(out, 0).ok and onnx_status(out, "all").ok
    assert cli(["export-onnx", str(out), "--folds", "0"]) == 0
    assert capsys.readouterr().out.strip() == "fold_0/model.onnx: up to date"
    assert cli(["export-onnx", str(out), "--checkpoint", "best"]) == 2
    assert "checkpoint_best.pt: not found" in capsys.readouterr().err


@pytest.mark.slow
def test_init_model_cli_exports_unless_told_not_to_and_says_why_when_onnx_is_missing(tmp_path, capsys):
    plans = tiny_plans().save(tmp_path / "plans.json")
    assert cli(["init-model", "--plans", str(plans), "-o", str(tmp_path / "a"), "--no-onnx"]) == 0
    assert not onnx_path(tmp_path / "a", 0).exists()
    assert cli(["init-model", "--plans", str(plans), "-o", str(tmp_path / "b")]) == 0
    assert "fold_0/model.onnx: exported for inference without PyTorch" in capsys.readouterr().out
    # the onnx package missing: init-model still makes the folder and says what to install
    done = run_blocked(f"""
        from RCSegNeXtCore.cli import main
        raise SystemExit(main(["init-model", "--plans", {str(plans)!r}, "-o", {str(tmp_path / "c")!r}]))
        """, names=("onnx",))
    assert done.returncode == 0, done.stderr
    assert "no ONNX file written" in done.stdout and "pip install onnx" in done.stdout
    assert (tmp_path / "c" / "fold_0" / "checkpoint_final.pt").is_file() and not onnx_path(tmp_path / "c", 0).exists()

