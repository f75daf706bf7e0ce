"""Predictor and `rcsegnext predict`: exact input grid, restore path, folders (resumable, failures), progress JSON,
`python -m RCSegNeXtCore predict`, input warnings, --resize-to, and the real sagittal DICOM series."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_path

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.data.io import Geometry, Image, read_geometry, read_image, write_image
from RCSegNeXtCore.planning import make_plans_from_values
from RCSegNeXtCore.inference.model_folder import ModelFolder, init_model_folder
from RCSegNeXtCore.inference.predictor import Predictor, input_warnings, resized_geometry

REPO = Path(__file__).resolve().parents[1]
_c, _s = np.cos(np.radians(15)), np.sin(np.radians(15))
SAGITTAL = Geometry((9, 44, 40), (3.6, 0.6, 0.6), (-20.0, 15.5, 40.25),
                    tuple(np.array([[_s, 0, _c], [_c, 0, -_s], [0, -1, 0]], float).ravel()))  # k ~ L: PIR-like


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    plans = make_plans_from_values([4.0, 0.875, 0.875], [8, 32, 32], base_channels=4)
    return init_model_folder(plans, tmp_path_factory.mktemp("model") / "RandomModel", folds=(0, 1), seed=0)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor(model_dir, device="cpu")


def _image(geometry=SAGITTAL, seed=0, zero_border=True) -> Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(300, 60, geometry.shape).astype(np.float32)
    if zero_border:
        array[:, :4, :] = 0          # outside the body: cropped by preprocessing, restored as background
    return Image(array, geometry)


@pytest.mark.slow
def test_prediction_on_the_exact_input_grid(predictor):
    image = _image()
    prediction = predictor.predict(image, keep_probabilities=True)
    assert prediction.geometry == image.geometry
    assert prediction.labels.shape == SAGITTAL.shape and prediction.labels.dtype == np.uint8
    probs = prediction.probabilities
    assert probs.shape == (3, *SAGITTAL.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(prediction.labels, probs.argmax(0))
    assert (probs[0, :, :4, :] == 1.0).all()            # the zero region cropped away is background
    # default: tiles at the plan's patch size (instance norms see a training-sized extent), never one whole pass
    assert prediction.stats.networks == 2 and prediction.stats.mode == "tiles"
    assert all(s >= p for s, p in zip(prediction.stats.padded_shape, (8, 32, 32)))   # padded up to the patch
    # a volume larger than the patch: tiles by default; the whole-volume pass only as an explicit opt-in (faster, but
    # instance norms then see another extent than in training: not the same result)
    large = _image(Geometry((6, 60, 56), (4.0, 0.875, 0.875), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)), seed=2,
                   zero_border=False)
    tiled = predictor.predict(large, keep_probabilities=True)
    # in-plane stride 8: a 32-voxel patch is 4 bottleneck cells, so tiles overlap by half: y 60 -> 3, x 56 -> 3
    assert tiled.stats.mode == "tiles" and tiled.stats.tile_grid == [1, 3, 3]
    whole = Predictor(predictor.model.path, device="cpu", whole_volume_max_voxels=10**9).predict(
        large, keep_probabilities=True)
    assert whole.stats.mode == "whole-volume" and whole.stats.forward_passes == 2
    np.testing.assert_allclose(whole.probabilities.sum(0), 1.0, atol=1e-4)
    assert not np.allclose(whole.probabilities, tiled.probabilities, atol=1e-3)


def test_cli_writes_seg_nrrd_and_labelmap_on_the_input_grid(model_dir, tmp_path):
    write_image(_image().array, SAGITTAL, tmp_path / "case.nrrd")
    for name in ("out.seg.nrrd", "out.nii.gz"):
        assert cli(["predict", "-i", str(tmp_path / "case.nrrd"), "-o", str(tmp_path / name), "-m",
                    str(model_dir), "--device", "cpu"]) == 0
        geometry = read_geometry(tmp_path / name)
        assert geometry.matches(SAGITTAL, 1e-5), geometry.differences(SAGITTAL)
    import SimpleITK as sitk
    header = sitk.ReadImage(str(tmp_path / "out.seg.nrrd"))
    assert header.GetMetaData("Segment0_Name") == "Rectum" and header.GetMetaData("RCSegNeXt_Model") == "RandomModel"
    assert header.GetMetaData("RCSegNeXt_WeightsSHA256") == ModelFolder(model_dir).weights_sha256()


def _case_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cases"
    folder.mkdir()
    small = Geometry((6, 30, 28), (4.0, 0.875, 0.875), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for i in range(2):
        write_image(_image(small, seed=i).array, small, folder / f"case{i}_0000.nii.gz")
    (folder / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b not really a gzip file")
    return folder


def test_folder_run_is_resumable_and_reports_every_failure(model_dir, tmp_path, capsys):
    folder = _case_folder(tmp_path)
    out = tmp_path / "out"
    args = ["predict", "-i", str(folder), "-o", str(out), "-m", str(model_dir), "--folds", "0", "--device", "cpu",
            "--format", "seg.nrrd", "--progress-json"]
    assert cli(args) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(p.name for p in out.iterdir()) == ["case0.seg.nrrd", "case1.seg.nrrd"]
    assert {line["stage"] for line in lines} == {"preprocess", "predict", "export", "error", "done"}
    assert all(set(line) >= {"stage", "case", "done", "total"} and line["total"] == 3 for line in lines)
    error = next(line for line in lines if line["stage"] == "error")
    assert error["case"] == "broken" and "broken_0000.nii.gz" in error["message"]
    assert lines[-1]["stage"] == "done" and lines[-1]["written"] == ["case0", "case1"]
    assert [f["case"] for f in lines[-1]["failed"]] == ["broken"]
    predict_lines = [line for line in lines if line["stage"] == "predict"]
    assert predict_lines[-1]["tiles_done"] == predict_lines[-1]["tiles_total"]
    stamp = (out / "case0.seg.nrrd").stat().st_mtime_ns
    assert cli(args[:-1]) == 1                                   # again: done cases are skipped, failure reported
    captured = capsys.readouterr()
    assert "skipped (already there) 2" in captured.out and "FAILED broken" in captured.err
    assert (out / "case0.seg.nrrd").stat().st_mtime_ns == stamp
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_python_dash_m_predict_with_progress_json(model_dir, tmp_path):
    write_image(_image().array, SAGITTAL, tmp_path / "case.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "RCSegNeXtCore", "predict", "-i", str(tmp_path / "case.nii.gz"),
                           "-o", str(tmp_path / "case.seg.nrrd"), "-m", str(model_dir), "--device", "cpu", "--threads", "1",
                           "--progress-json", "--save-probabilities"],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["stage"] == "preprocess" and lines[-1]["stage"] == "done" and lines[-1]["written"] == ["case"]
    assert read_geometry(tmp_path / "case.seg.nrrd").matches(SAGITTAL, 1e-5)
    assert (tmp_path / "case_probabilities.nrrd").is_file()


def test_bad_single_input_is_a_clear_error(model_dir, tmp_path, capsys):
    assert cli(["predict", "-i", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "-m",
                str(model_dir)]) == 2
    assert "missing.nii.gz: no such file" in capsys.readouterr().err
    write_image(_image().array, SAGITTAL, tmp_path / "case.nii.gz")
    assert cli(["predict", "-i", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "o.png"), "-m",
                str(model_dir)]) == 2
    assert "unknown format" in capsys.readouterr().err


def test_warns_for_an_axial_series_given_to_a_sagittal_model(model_dir, tmp_path):
    model = ModelFolder(model_dir)
    axial = Geometry((20, 256, 256), (3.0, 0.43, 0.43), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert axial.slice_orientation() == "axial" and SAGITTAL.slice_orientation() == "sagittal"
    found = input_warnings(axial, model, "case A")
    assert len(found) == 1 and "spacing" in found[0] and "case A" in found[0]   # 0.43 vs 0.875
    data = json.loads((model_dir / "dataset.json").read_text(encoding="utf-8"))
    labelled = tmp_path / "m"
    init_model_folder(model.plans, labelled, {**data, "slice_orientation": "sagittal"})
    found = input_warnings(axial, ModelFolder(labelled), "case A")
    assert any("axial series given to a model trained on sagittal" in m for m in found)
    assert input_warnings(SAGITTAL, ModelFolder(labelled)) == []
    with pytest.warns(UserWarning, match="axial series"):
        Predictor(labelled, device="cpu").predict(_image(Geometry((4, 40, 40), (3.0, 0.875, 0.875), (0, 0, 0),
                                                                  axial.direction)))


def test_resize_to_keeps_the_extent_and_maps_back(model_dir):
    g = Geometry((10, 40, 30), (2.0, 1.0, 0.5), (5.0, 6.0, 7.0), SAGITTAL.direction)
    r = resized_geometry(g, (5, 20, 60))
    assert r.spacing == (4.0, 2.0, 0.25)
    corner = lambda geo, idx: geo.index_to_physical() @ np.array([*idx, 1.0])  # noqa: E731
    # voxel-edge corners (index -0.5 and n-0.5) coincide
    for lo in (True, False):
        idx_g = [-0.5 if lo else n - 0.5 for n in reversed(g.shape)]
        idx_r = [-0.5 if lo else n - 0.5 for n in reversed(r.shape)]
        np.testing.assert_allclose(corner(g, idx_g), corner(r, idx_r), atol=1e-9)
    prediction = Predictor(model_dir, device="cpu", resize_to=(6, 36, 36)).predict(_image(), keep_probabilities=True)
    assert prediction.geometry == SAGITTAL and prediction.labels.shape == SAGITTAL.shape
    np.testing.assert_allclose(prediction.probabilities.sum(0), 1.0, atol=1e-4)


@pytest.mark.slow
def test_real_sagittal_dicom_series_gives_exactly_its_geometry(real_data, model_dir, tmp_path):
    series = require_path(real_data / "prostatex" / "ProstateX-0000" / "t2_tse_sag_dicom", "real DICOM series")
    assert cli(["predict", "-i", str(series), "-o", str(tmp_path / "sag.seg.nrrd"), "-m", str(model_dir),
                "--folds", "0", "--device", "cpu"]) == 0
    expected = read_geometry(series)
    written = read_image(tmp_path / "sag.seg.nrrd")
    assert written.geometry.matches(expected, 1e-6), written.geometry.differences(expected)
    assert written.geometry.shape == (19, 320, 320) and expected.slice_orientation() == "sagittal"


def test_find_cases_names_and_channels(tmp_path):
    from RCSegNeXtCore.inference.runner import find_cases
    for name in ("a_0000.nii.gz", "b.nrrd", "scan_2023.nii.gz", ".hidden.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "series1").mkdir()
    cases, folder = find_cases(tmp_path)
    assert folder and [c.case_id for c in cases] == ["a", "b", "scan_2023", "series1"]
    (tmp_path / "a_0001.nii.gz").write_bytes(b"x")
    two = {c.case_id: [p.name for p in c.paths] for c in find_cases(tmp_path, num_channels=2)[0]}
    assert two["a"] == ["a_0000.nii.gz", "a_0001.nii.gz"]


@pytest.mark.slow
def test_real_folder_of_dicom_series_with_a_bad_one(real_data, model_dir, tmp_path):
    series = require_path(real_data / "prostatex" / "ProstateX-0000" / "t2_tse_sag_dicom", "real DICOM series")
    cases = tmp_path / "series"
    cases.mkdir()
    (cases / "ProstateX-0000").symlink_to(series, target_is_directory=True)
    (cases / "empty_series").mkdir()
    assert cli(["predict", "-i", str(cases), "-o", str(tmp_path / "out"), "-m", str(model_dir), "--folds", "0",
                "--device", "cpu"]) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ProstateX-0000.nii.gz"]
    assert read_geometry(tmp_path / "out" / "ProstateX-0000.nii.gz").matches(read_geometry(series), 1e-6)


def test_tta_uses_the_plan_mirror_axes_and_folds_selection(model_dir):
    small = Geometry((4, 40, 36), (4.0, 0.875, 0.875), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = _image(small, zero_border=False)
    plain = Predictor(model_dir, folds=[1], device="cpu").predict(image, keep_probabilities=True)
    mirrored = Predictor(model_dir, folds=[1], device="cpu", tta=True).predict(image, keep_probabilities=True)
    assert plain.stats.mirrors == 1 and plain.stats.networks == 1
    assert mirrored.stats.mirrors == 8 and mirrored.stats.forward_passes == 8 * mirrored.stats.tiles == 8 * 4
    assert not np.allclose(plain.probabilities, mirrored.probabilities)   # a random net is not flip-invariant
    np.testing.assert_allclose(mirrored.probabilities.sum(0), 1.0, atol=1e-4)
