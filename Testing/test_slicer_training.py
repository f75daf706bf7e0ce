"""'Improve the model' (RCSegNeXtLib.training_run, logic.train / fineTune / datasetSummary, models' provenance):
recorded `train --progress-json` lines parsed; then real `python -m RCSegNeXtCore train` subprocesses on a tiny
phantom dataset: progress per epoch, Cancel kills the tree and Resume finishes the run, the model is installed with
its provenance and selected, fine-tuning it records the parent, a refused dataset reports why."""
from __future__ import annotations

import json
import shutil
import sys
import time

import numpy as np
import pytest

from slicer_headless import module_on_path

module_on_path()
from RCSegNeXtLib import runner as runner_module  # noqa: E402
from RCSegNeXtLib.controller import CANCELLED, DONE, FAILED  # noqa: E402
from RCSegNeXtLib.logic import RCSegNeXtLogic  # noqa: E402
from RCSegNeXtLib.models import list_models  # noqa: E402
from RCSegNeXtLib.training_run import (RUN_RECORD, TrainingRunController, cpu_training_seconds,  # noqa: E402
                                       default_runs_root, stage_text, training_time_warning)

RECORDED = [  # a real `train --fold all --progress-json` run, plus a fold with validation cases (pseudo-Dice)
    '{"stage": "plan"}',
    '{"stage": "preprocess", "done": 0, "total": 4}',
    '{"stage": "preprocess", "done": 4, "total": 4}',
    '{"stage": "train", "fold": "all", "epoch": 1, "epochs": 2, "done": 1, "total": 2, "loss": 2.145, '
    '"val_loss": null, "pseudo_dice": {}, "seconds": 0.61, "eta_s": 0.61}',
    '{"stage": "train", "fold": 0, "epoch": 3, "epochs": 25, "done": 3, "total": 25, "loss": 0.4123, '
    '"val_loss": 0.52, "pseudo_dice": {"rectum": 0.8, "tumour": 0.553, "other": null}, "seconds": 10.0, '
    '"eta_s": 240.0}',
    '{"stage": "export"}',
    '{"stage": "done", "model": "run2", "done": 2, "total": 2}',
    '{"stage": "error", "message": "case_007: label value 7 is not in dataset.json"}',
]
# tiny network and schedule (1-3 s of training on 2 shared cores); the rest of each run is process start-up
TINY = ["--iterations-per-epoch", "2", "--val-iterations", "1", "--num-workers", "0", "--threads", "1"]
TINY_PLAN = ["--base-channels", "4", "--patch-size", "16", "32", "32"]


def test_training_progress_lines_parse_into_status_text():
    events = [runner_module.parse_progress_line(line) for line in RECORDED]
    assert all(e is not None for e in events)
    assert [e.stage for e in events] == ["plan", "preprocess", "preprocess", "train", "train", "export", "done",
                                         "error"]
    first, third = events[3], events[4]
    assert first.fraction == 0.5 and third.fraction == pytest.approx(3 / 25)
    assert first.text == "epoch 1/2, loss 2.15, about 1 s left"  # fold all: no pseudo-Dice
    assert third.text == ("epoch 3/25, loss 0.41, validation loss 0.52, pseudo-Dice rectum 0.80 tumour 0.55, about "
                          "4 min left")
    assert [stage_text(e) for e in events[:3]] == ["Planning the network from the dataset...",
                                                  "Preparing the cases: 0 of 4", "Preparing the cases: 4 of 4"]
    assert stage_text(third).startswith("Epoch 3/25, loss 0.41")
    assert events[6].fraction == 1.0 and events[7].text.startswith("error: case_007")
    assert runner_module.format_duration(3 * 3600) == "3.0 h" and runner_module.format_duration(3 * 86400) == \
        "3.0 days"


def test_train_command_is_accepted_by_the_core_cli():
    from RCSegNeXtCore.cli import build_parser
    parser = build_parser()
    command = runner_module.build_train_command("/opt/Slicer/bin/PythonSlicer", "/data/ds", "/runs/r", "/models/m",
                                                init_fold="all", device="cuda", epochs=7, resume=True,
                                                extra_args=["--threads", "2"])
    assert command[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "RCSegNeXtCore", "train"]
    args = parser.parse_args(command[3:])
    assert (args.dataset, args.output, args.fold, args.init_from, args.init_fold) == \
        ("/data/ds", "/runs/r", "all", "/models/m", "all")
    assert args.resume and args.epochs == 7 and args.device == "cuda" and args.threads == 2 and args.progress_json
    plain = parser.parse_args(runner_module.build_train_command("py", "d", "r")[3:])
    assert plain.init_from is None and not plain.resume and plain.device == "auto" and plain.fold == "all"
    with pytest.raises(ValueError, match="init_fold needs init_from"):
        runner_module.build_train_command("py", "d", "r", init_fold=0)


def test_cpu_warning_estimates_the_time_from_cases_epochs_and_plan(tmp_path):
    assert training_time_warning(20, "auto", gpu_found=True) == "" and training_time_warning(20, "cuda") == ""
    paper = training_time_warning(20, "auto", gpu_found=False)
    # 100 x 250 iterations x 6.70 s x 8 (batch 2 x [16, 320, 320] = 8 x the measured voxels) + 20 x 1 s
    assert cpu_training_seconds(20, 100, 250, [16, 320, 320], 2, 32) == pytest.approx(100 * 250 * 6.7 * 8 + 20)
    assert "no CUDA GPU" in paper and "15.5 days" in paper and "20 case(s)" in paper and "100 epochs" in paper
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    from RCSegNeXtCore.planning import make_plans_from_values
    parent = init_model_folder(make_plans_from_values([5.0, 5.0, 5.0], [16, 32, 32], base_channels=4),
                               tmp_path / "parent", export_onnx=False)
    tuned = training_time_warning(4, "cpu", mode="finetune", parent_model_dir=parent)
    assert "device cpu" in tuned and "25 epochs" in tuned and "[16, 32, 32] at width 4" in tuned
    assert "2 epochs x 2 iterations" in training_time_warning(4, "cpu", extra_args=["--epochs", "2", *TINY])


def test_start_refuses_what_cannot_work(tmp_path):
    run = TrainingRunController(tmp_path / "models", python=sys.executable)
    assert run.runs_root == default_runs_root(tmp_path / "models") == tmp_path / "runs"
    from RCSegNeXtCore.errors import DatasetError, ModelError
    with pytest.raises(DatasetError, match="no dataset.json"):
        run.start(tmp_path)
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(ModelError, match="select the model"):
        run.start(tmp_path, mode="finetune")
    with pytest.raises(ValueError, match="mode"):
        run.start(tmp_path, mode="transfer")
    assert not (tmp_path / "runs").exists() and not run.running and not run.canResume
    assert RCSegNeXtLogic.datasetSummary(tmp_path / "nothing").text.startswith("No training cases yet")


# -- real training subprocesses --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from RCSegNeXtCore.phantom import make_phantom_dataset
    return make_phantom_dataset(tmp_path_factory.mktemp("improve") / "Dataset501_Corrections", 4, seed=0,
                                size="small", progress=False)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(run: TrainingRunController, condition, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while run.running and time.monotonic() < deadline:
        report = run.poll()
        if condition(report):
            return report
        time.sleep(0.05)
    raise AssertionError(f"condition not reached: {run.report.state} {run.report.status} {run.report.message}")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform.startswith("win"), reason="process tree checked through /proc")
def test_train_cancel_resume_install_then_fine_tune(dataset, tmp_path):
    models_root = tmp_path / "settings" / "RCSegNeXt" / "models"
    selected = []
    logic = RCSegNeXtLogic()
    summary = logic.datasetSummary(dataset)
    assert summary.ok and summary.cases == 4 and summary.text == "4 training case(s); check: no problems."

    declined = []  # the CPU-time warning is asked first; declining starts nothing
    assert logic.train(dataset, models_root, device="cpu", gpuFound=False, python=sys.executable,
                       confirm=lambda warning: declined.append(warning) or False) is None
    assert "expect about" in declined[0] and not (tmp_path / "settings" / "RCSegNeXt" / "runs").exists()

    # from scratch: 3 epochs of 12 iterations, cancelled once the first epoch is checkpointed
    run = logic.train(dataset, models_root, device="cpu", epochs=3, name="rectal-v1", python=sys.executable,
                      extraArgs=[*TINY_PLAN, *TINY[2:], "--iterations-per-epoch", "12"], gpuFound=False,
                      onInstalled=selected.append)
    assert run is logic.trainingRun and "device cpu" in run.report.warnings[0]
    run_dir = tmp_path / "settings" / "RCSegNeXt" / "runs" / "rectal-v1"
    assert run.runDir == run_dir and (run_dir / RUN_RECORD).is_file()
    report = wait_for(run, lambda r: len(r.epochs) >= 1)
    assert report.epochs[0].raw["epoch"] == 1 and report.status.startswith("Epoch 1/3, loss ")
    assert (run_dir / "fold_all" / "checkpoint_latest.pt").is_file()
    tree = [run.pid, *runner_module._descendants(run.pid)]
    report = run.cancel()
    assert report.state == CANCELLED and "Resume continues it from its last finished epoch" in report.status
    assert [p for p in tree if alive(p)] == [] and run.canResume and list_models(models_root) == []

    report = run.resume()
    report = run.wait(timeout=180)
    assert report.state == DONE, (report.status, report.message)
    epochs = [e.raw["epoch"] for e in report.epochs]
    assert epochs[0] >= 2 and epochs[-1] == 3 and epochs == sorted(set(epochs))  # continued, one event per epoch
    assert len(json.loads((run_dir / "fold_all" / "metrics.json").read_text())) == 3

    # installed (without the run's cache and resume state), with provenance, and selected
    [model] = list_models(models_root)
    assert model.name == "rectal-v1" and selected == [report.model] and report.model.path == model.path
    assert report.status == "Done: installed and selected model 'rectal-v1'." and report.fraction == 1.0
    assert not (model.path / "preprocessed").exists() and not (model.path / "fold_all/checkpoint_latest.pt").exists()
    from RCSegNeXtCore.data.dataset import dataset_sha256, load_dataset
    training = model.provenance["training"]
    assert training["mode"] == "scratch" and training["cases"] == 4 and model.parent is None
    assert training["dataset_sha256"] == dataset_sha256(load_dataset(dataset))
    assert model.provenance["folds"] == ["all"] and "trained from scratch on 4 case(s)" in model.description

    # fine-tune the installed model: its plan, a short run, the parent recorded
    tuned = logic.fineTune(dataset, model.path, models_root, device="cpu", epochs=1, name="rectal-v2",
                           python=sys.executable, extraArgs=TINY, gpuFound=False, onInstalled=selected.append,
                           wait=True, timeout=180)
    assert tuned.report.state == DONE, (tuned.report.status, tuned.report.message)
    v2 = {m.name: m for m in list_models(models_root)}["rectal-v2"]
    assert selected[-1].name == "rectal-v2" and v2.parent == "rectal-v1"
    assert v2.training["mode"] == "fine-tune" and v2.training["parent"]["fold"] == "all"
    assert "fine-tuned from 'rectal-v1' (fold all) on 4 case(s)" in v2.description
    assert json.loads((v2.path / "plans.json").read_text()) == json.loads((model.path / "plans.json").read_text())


@pytest.mark.slow
def test_a_refused_dataset_reports_the_problem_and_keeps_the_run_folder(dataset, tmp_path):
    import SimpleITK as sitk
    broken = tmp_path / "Dataset502_Broken"
    shutil.copytree(dataset, broken)
    case = sorted((broken / "labelsTr").iterdir())[0]
    labels = sitk.ReadImage(str(case))
    array = sitk.GetArrayFromImage(labels)
    array[array == 2] = 7  # a label value dataset.json does not declare
    fixed = sitk.GetImageFromArray(array.astype(np.uint8))
    fixed.CopyInformation(labels)
    sitk.WriteImage(fixed, str(case))
    case_id = case.name.split(".")[0]
    summary = RCSegNeXtLogic.datasetSummary(broken)
    assert not summary.ok and summary.cases == 4 and any(case_id in p for p in summary.problems)

    run = TrainingRunController(tmp_path / "models", python=sys.executable)
    run.start(broken, device="cpu", epochs=1, name="broken", extra_args=[*TINY_PLAN, *TINY])
    report = run.wait(timeout=180)
    assert report.state == FAILED and report.message.startswith("training process ")
    assert f"case {case_id}: label values 7" in report.message, report.message
    assert report.status.startswith(f"Training failed: case {case_id}: label values 7")
    assert run.canResume and (tmp_path / "runs" / "broken").is_dir()
    assert list_models(tmp_path / "models") == []
