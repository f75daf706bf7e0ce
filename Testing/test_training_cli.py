"""End to end: `Training/train.py` (not importing the installed package) trains on a small phantom, the run folder
is a model folder `rcsegnext predict` takes; bad input gets clear errors."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RCSegNeXtCore.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1", "--base-channels", "4",
        "--patch-size", "16", "32", "32", "--device", "cpu", "--num-workers", "0"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from RCSegNeXtCore.phantom import make_phantom_dataset
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom") / "raw", 3, seed=0, size="small",
                                progress=False)


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Training/train.py under `python -S`: site-packages on PYTHONPATH for torch & co, but no .pth files, so the
    editable install of RCSegNeXtCore is invisible and the script must find the package next to itself."""
    paths = os.pathsep.join(site.getsitepackages())
    env = {**os.environ, "PYTHONPATH": paths}
    return subprocess.run([sys.executable, "-S", str(REPO / "Training" / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)


@pytest.mark.slow
def test_train_script_then_predict(phantom, tmp_path):
    run = tmp_path / "run"
    result = _script(str(phantom), "-o", str(run), "--fold", "0", "--num-folds", "3", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("plans.json", "dataset.json", "splits_final.json", "fold_0/checkpoint_final.pt",
                 "fold_0/checkpoint_best.pt", "fold_0/checkpoint_latest.pt", "fold_0/log.txt",
                 "fold_0/metrics.json", "fold_0/metrics.csv", "fold_0/validation/metrics.json", "report.md",
                 "fold_0/model.onnx", "fold_0/model.onnx.json"):
        assert (run / name).is_file(), name
    assert "fold_0/model.onnx: exported for inference without PyTorch" in result.stdout
    plans = json.loads((run / "plans.json").read_text())
    assert plans["architecture"]["base_channels"] == 4 and plans["patch_size"] == [16, 32, 32]
    splits = json.loads((run / "splits_final.json").read_text())
    assert len(splits) == 3 and all(len(s["val"]) == 1 for s in splits)
    held_out = splits[0]["val"][0]
    assert (run / "fold_0" / "validation" / f"{held_out}.nii.gz").is_file()
    assert "device cpu" in result.stdout and "AMP off" in result.stdout and "ETA" in result.stdout

    out = tmp_path / "pred.seg.nrrd"
    image = phantom / "imagesTr" / f"{held_out}_0000.nii.gz"
    assert cli_main(["predict", "-i", str(image), "-o", str(out), "-m", str(run), "--device", "cpu"]) == 0
    pred = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(image))
    assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetSpacing(), ref.GetSpacing())

    # a second run into the same folder without --resume is refused
    again = _script(str(phantom), "-o", str(run), "--fold", "0", "--num-folds", "3", *TINY, "--no-validation",
                    cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    # another architecture on top of the run's checkpoints is refused with the difference named
    other = _script(str(phantom), "-o", str(run), "--fold", "0", "--num-folds", "3", *TINY[:-8],
                    "--base-channels", "8", "--patch-size", "16", "32", "32", "--device", "cpu", "--resume",
                    "--no-validation", cwd=tmp_path)
    assert other.returncode == 2 and "base_channels: checkpoint 4, plan 8" in other.stderr


def test_train_refuses_more_folds_than_cases(phantom, tmp_path, capsys):
    code = cli_main(["train", str(phantom), "-o", str(tmp_path / "run"), "--fold", "0", *TINY])
    assert code == 2
    assert "3 case(s), fewer than the 5 folds" in capsys.readouterr().err


def test_train_refuses_oversized_cpu_configuration(phantom, tmp_path, capsys, monkeypatch):
    from RCSegNeXtCore.training import memory
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 2 * 2 ** 30)
    code = cli_main(["train", str(phantom), "-o", str(tmp_path / "run"), "--fold", "all", "--device", "cpu",
                     "--patch-size", "16", "320", "320", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "only 2.0 GiB is free; try --batch-size 1 --patch-size" in err
    assert not (tmp_path / "run" / "preprocessed").exists()       # refused before any slow work


def test_training_without_pytorch_says_what_to_install(tmp_path):
    """Inference runs without PyTorch, training cannot: a clear message and exit 2, not a traceback."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from RCSegNeXtCore.cli import main\n"
            f"sys.exit(main(['train', {str(tmp_path / 'dataset')!r}, '-o', {str(tmp_path / 'run')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "rcsegnext train: error: this needs PyTorch" in result.stderr and "pip install torch" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
