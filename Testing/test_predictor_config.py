"""PredictionConfig: every `rcsegnext predict` option lands in it, its defaults are the command line's, its
Predictor part is exactly Predictor's keyword arguments, and Predictor.from_config / run_prediction take it."""
from __future__ import annotations

import inspect

import numpy as np

from cli_helpers import command_parser, options_left_at_default
from RCSegNeXtCore.commands import predict as predict_command
from RCSegNeXtCore.inference.config import PREDICTOR_OPTIONS, PredictionConfig
from RCSegNeXtCore.inference.predictor import Predictor

EVERY_OPTION = ["-i", "IN", "-o", "OUT.seg.nrrd", "-m", "MODEL", "--folds", "0", "all", "--checkpoint", "best",
                "--device", "cpu", "--backend", "torch", "--threads", "2", "--tta", "--tile-overlap", "0.5",
                "--batch-tiles", "3",
                "--whole-volume", "--format", "seg.nrrd", "--save-probabilities", "--uncertainty", "--progress-json",
                "--resize-to", "4", "32", "32", "--overwrite", "--series", "T2"]
EXPECTED = PredictionConfig(
    model="MODEL", input="IN", output="OUT.seg.nrrd", folds=["0", "all"], checkpoint="best", device="cpu",
    tta=True, tile_overlap=0.5, batch_tiles=3, whole_volume_max_voxels=None, resize_to=[4, 32, 32], backend="torch",
    threads=2,
    format="seg.nrrd", save_probabilities=True, uncertainty=True, progress_json=True, overwrite=True, series="T2")


def _parser():
    return command_parser(predict_command)


def test_every_predict_option_lands_in_the_config():
    parser = _parser()
    args = parser.parse_args(EVERY_OPTION)
    unset = options_left_at_default(parser, args, ignore=("input", "output", "model"))
    assert not unset, f"add {unset} to EVERY_OPTION (and its field to EXPECTED)"
    assert predict_command.config_from_args(args) == EXPECTED
    defaults = predict_command.config_from_args(parser.parse_args(["-i", "IN", "-o", "OUT", "-m", "MODEL"]))
    assert defaults == PredictionConfig(model="MODEL", input="IN", output="OUT")


def test_predictor_options_are_the_predictors_keyword_arguments_with_the_same_defaults():
    parameters = dict(inspect.signature(Predictor.__init__).parameters)
    parameters.pop("self"), parameters.pop("model_dir")
    assert tuple(parameters) == PREDICTOR_OPTIONS
    assert {n: p.default for n, p in parameters.items()} == PredictionConfig().predictor_options()


def test_from_config_and_run_prediction_take_the_config(tmp_path):
    import SimpleITK as sitk

    from RCSegNeXtCore.inference.model_folder import init_model_folder
    from RCSegNeXtCore.inference.runner import run_prediction
    from RCSegNeXtCore.planning import make_plans_from_values
    plans = make_plans_from_values([4.0, 0.875, 0.875], [8, 32, 32], base_channels=4)
    model = init_model_folder(plans, tmp_path / "model", folds=(0, 1), seed=0, export_onnx=False)
    predictor = Predictor.from_config(PredictionConfig(model=str(model), folds=[1], device="cpu", tta=True,
                                                       backend="torch"))
    assert predictor.folds == [1] and predictor.tta and predictor.device.type == "cpu"
    assert predictor.backend == "torch" and predictor.engine.startswith("torch ")
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(300, 60, (8, 36, 36)).astype(np.float32))
    image.SetSpacing((0.875, 0.875, 4.0))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    config = PredictionConfig(model=str(model), input=str(tmp_path / "case.nii.gz"),
                              output=str(tmp_path / "out" / "case.nii.gz"), device="cpu", save_probabilities=True,
                              backend="torch")
    result = run_prediction(config)
    assert result.written == ["case"] and not result.failed
    assert (tmp_path / "out" / "case.nii.gz").is_file() and (tmp_path / "out" / "case_probabilities.nrrd").is_file()
