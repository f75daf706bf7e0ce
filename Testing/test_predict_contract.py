"""What `rcsegnext predict` promises, checked so that removing the behaviour fails a test: --resize-to is exactly
resample -> predict -> resample back (also through the CLI flag), test-time mirroring uses the plan's axes, and the
--progress-json protocol (RCSegNeXtCore/inference/runner.py) line by line, with exit code 2 for one bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_helpers import tiny_plans

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.data.io import Geometry, Image, read_image, write_image
from RCSegNeXtCore.data.resample import resample_image, resample_probabilities
from RCSegNeXtCore.inference.model_folder import init_model_folder
from RCSegNeXtCore.inference.predictor import Predictor, resized_geometry

pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")

_c, _s = np.cos(np.radians(10)), np.sin(np.radians(10))
# near the tiny plan's spacing [3, 1, 1], oblique
GEOMETRY = Geometry((10, 44, 40), (3.0, 0.9, 1.1), (-12.0, 30.5, 7.25),
                    tuple(np.array([[_c, -_s, 0], [_s, _c, 0], [0, 0, 1]], float).ravel()))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return init_model_folder(tiny_plans(), tmp_path_factory.mktemp("model") / "Tiny", folds=(0,), seed=3)


def _image(geometry: Geometry = GEOMETRY, seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(300, 60, geometry.shape).astype(np.float32)
    array[:, :3, :] = 0
    return Image(array, geometry)


# -- --resize-to ----------------------------------------------------------------------------------------------
RESIZE = (7, 30, 52)   # fewer slices and rows, more columns: far from the input grid


def test_resize_to_is_resample_predict_resample_back(model_dir):
    image = _image()
    resized = Predictor(model_dir, device="cpu", resize_to=RESIZE).predict(image, keep_probabilities=True)

    # by hand, with the same core functions: resample to the grid of RESIZE voxels over the same extent (linear),
    # predict there, resample the probabilities back to the input grid, argmax
    target = resized_geometry(image.geometry, RESIZE)
    assert target.shape == RESIZE
    data = resample_image(image.array[None], target.shape, image.geometry.spacing, target.spacing, order=1,
                          order_thick_axis=1)
    on_target = Predictor(model_dir, device="cpu").predict(Image(data, target), keep_probabilities=True)
    assert on_target.probabilities.shape == (3, *RESIZE)
    back = resample_probabilities(on_target.probabilities, image.geometry.shape, target.spacing,
                                  image.geometry.spacing)

    assert resized.geometry == image.geometry and resized.probabilities.shape == (3, *GEOMETRY.shape)
    np.testing.assert_allclose(resized.probabilities, back, atol=1e-5)
    assert np.array_equal(resized.labels, back.argmax(0))
    # not vacuous: without the resize the same model gives other probabilities
    plain = Predictor(model_dir, device="cpu").predict(image, keep_probabilities=True)
    assert np.abs(plain.probabilities - resized.probabilities).max() > 1e-2


def test_resize_to_cli_flag(model_dir, tmp_path):
    image = _image(seed=1)
    write_image(image.array, image.geometry, tmp_path / "case.nii.gz")
    expected = Predictor(model_dir, device="cpu", resize_to=RESIZE).predict(image, keep_probabilities=True)
    assert cli(["predict", "-i", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "-m",
                str(model_dir), "--device", "cpu", "--save-probabilities",
                "--resize-to", *map(str, RESIZE)]) == 0
    written = read_image(tmp_path / "out.nii.gz")
    assert written.geometry.matches(GEOMETRY, 1e-5)
    probabilities = np.moveaxis(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_probabilities.nrrd"))),
                                -1, 0)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-4)
    assert np.array_equal(written.array, expected.labels)
    plain = Predictor(model_dir, device="cpu").predict(image, keep_probabilities=True)
    assert np.abs(probabilities - plain.probabilities).max() > 1e-2


# -- mirroring test-time augmentation over the plan's axes ---------------------------------------------------
class CountingNetwork(torch.nn.Module):
    """Counts the patches the sliding window feeds the network."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.patches = network, 0

    def forward(self, x):
        self.patches += x.shape[0]
        return self.network(x)


@pytest.mark.parametrize("axes, mirrors", [([1, 2], 4), ([2], 2), ([0, 1, 2], 8)])
def test_tta_mirrors_exactly_the_plan_axes(tmp_path, axes, mirrors):
    model = init_model_folder(tiny_plans().with_overrides(mirror_axes=axes), tmp_path / "m", folds=(0,), seed=0,
                              export_onnx=False)
    image = _image(Geometry((10, 40, 36), (3.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    predictor = Predictor(model, device="cpu", tta=True, backend="torch")  # counts the torch network's patches
    predictor.networks = [CountingNetwork(n) for n in predictor.networks]
    steps = []
    prediction = predictor.predict(image, progress=lambda stage, done, total: steps.append((stage, done, total)))
    tiles = prediction.stats.tiles
    assert tiles >= 2 and prediction.stats.mirrors == mirrors
    assert predictor.networks[0].patches == mirrors * tiles                  # what the network really ran
    passes = [(done, total) for stage, done, total in steps if stage == "predict"]
    assert passes[-1] == (mirrors * tiles, mirrors * tiles)
    predictor.networks[0].patches = 0
    predictor.tta = False
    predictor.predict(image)
    assert predictor.networks[0].patches == tiles


# -- the --progress-json protocol -----------------------------------------------------------------------------
def _json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_progress_json_protocol_for_a_folder(model_dir, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_image(_image(seed=2).array, GEOMETRY, cases / "a_0000.nii.gz")         # its output exists: skipped
    far = Geometry((10, 40, 36), (3.0, 2.5, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))  # in-plane 2.5x: warned
    write_image(_image(far, seed=3).array, far, cases / "b_0000.nii.gz")
    (cases / "c_0000.nii.gz").write_bytes(b"\x1f\x8b not an image")              # fails
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.nii.gz").write_bytes(b"already segmented")
    code = cli(["predict", "-i", str(cases), "-o", str(out), "-m", str(model_dir), "--device", "cpu",
                "--progress-json"])
    captured = capsys.readouterr()
    lines = _json_lines(captured.out)                                             # stdout holds JSON only
    assert code == 1                                                              # a failed case: exit 1

    assert all(set(line) >= {"stage", "case", "done", "total"} and line["total"] == 3 for line in lines)
    # `done` = cases finished (written, skipped or failed) before the line
    finished = 0
    for line in lines:
        assert line["done"] == finished, line
        if line["stage"] in ("export", "error"):
            finished += 1
    assert [(line["stage"], line["case"]) for line in lines if line["stage"] != "predict"] == [
        ("export", "a"), ("preprocess", "b"), ("export", "b"), ("preprocess", "c"), ("error", "c"), ("done", None)]

    skipped = lines[0]
    assert skipped == {"stage": "export", "case": "a", "done": 0, "total": 3, "output": str(out / "a.nii.gz"),
                       "warnings": [], "skipped": True}
    predict = [line for line in lines if line["stage"] == "predict"]
    assert predict and all(line["case"] == "b" and line["done"] == 1 for line in predict)
    assert [line["tiles_done"] for line in predict] == list(range(1, predict[-1]["tiles_total"] + 1))
    export = next(line for line in lines if line["stage"] == "export" and line["case"] == "b")
    assert export["output"] == str(out / "b.nii.gz") and (out / "b.nii.gz").is_file() and "skipped" not in export
    assert len(export["warnings"]) == 1 and "spacing" in export["warnings"][0]
    error = next(line for line in lines if line["stage"] == "error")
    assert error["done"] == 2 and "c_0000.nii.gz" in error["message"]
    assert lines[-1] == {"stage": "done", "case": None, "done": 3, "total": 3, "written": ["b"], "skipped": ["a"],
                         "failed": [{"case": "c", "message": error["message"]}], "skipped_series": []}
    assert (out / "a.nii.gz").read_bytes() == b"already segmented"


def test_progress_json_single_bad_input_error_line_then_exit_2(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not an image")
    code = cli(["predict", "-i", str(broken), "-o", str(tmp_path / "o.nii.gz"), "-m", str(model_dir), "--device",
                "cpu", "--progress-json"])
    captured = capsys.readouterr()
    lines = _json_lines(captured.out)
    assert code == 2
    assert [line["stage"] for line in lines] == ["preprocess", "error"]
    assert lines[-1]["case"] == "broken" and lines[-1]["done"] == 0 and lines[-1]["total"] == 1
    assert "broken.nii.gz" in lines[-1]["message"]
    assert "rcsegnext predict: error:" in captured.err and not (tmp_path / "o.nii.gz").exists()
