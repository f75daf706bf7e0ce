"""No silent wrong input: DICOM series checks in the reader, study folders, constant images, the model's slice plane.

Broken series are made inside each test from the real ProstateX sagittal T2 series (19 slices, 3.6 mm apart):
a slice cut in its pixel data or header, a 3-plane "localizer", a missing slice, a README beside the slices, and a
study folder (sagittal, an axial re-orientation of it and the localizer, one StudyInstanceUID). pydicom (a test-only
dependency) writes the fixtures; the product reads DICOM with SimpleITK alone.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import require_module, require_path

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.data.io import Geometry, Image, read_geometry, read_image, write_image
from RCSegNeXtCore.planning import make_plans_from_values
from RCSegNeXtCore.errors import ImageReadError
from RCSegNeXtCore.inference.model_folder import ModelFolder, init_model_folder
from RCSegNeXtCore.inference.predictor import Predictor, input_warnings
from RCSegNeXtCore.plans import Plans

pydicom = require_module("pydicom")

SERIES = "prostatex/ProstateX-0000/t2_tse_sag_dicom"
NAMES = [f"1-{k:02d}.dcm" for k in range(1, 20)]
SAGITTAL_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)   # the real series: rows run A->P, columns S->I, normal -x


@pytest.fixture(scope="module")
def series(real_data) -> Path:
    return require_path(real_data / SERIES, "real DICOM series")


def _model(folder: Path, plane) -> Path:
    plans = make_plans_from_values([5.0, 5.0, 5.0], [16, 32, 32], base_channels=4, slice_orientation=plane)
    return init_model_folder(plans, folder, folds=(0,), seed=0)


@pytest.fixture(scope="module")
def sagittal_model(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("model") / "Sagittal", "sagittal")


def _copy(series: Path, folder: Path, names=NAMES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copyfile(series / name, folder / name)   # copyfile: the copies are writable
    return folder


def _restack(folder: Path, names, iop, start, step, **attributes) -> None:
    """Give `names` the orientation `iop` and positions start + k * step (mm), and any other attributes."""
    for k, name in enumerate(names):
        ds = pydicom.dcmread(folder / name)
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [round(float(s + k * d), 4) for s, d in zip(start, step)]
        for key, value in attributes.items():
            setattr(ds, key, value)
        ds.save_as(folder / name)


def _localizer(series: Path, folder: Path, **attributes) -> Path:
    """13 slices in three planes (sagittal 5, coronal 4, axial 4), one series: a 3-plane localizer."""
    _copy(series, folder, NAMES[:13])
    _restack(folder, NAMES[:5], SAGITTAL_IOP, (6.56, -66.7, 56.3), (3.6, 0, 0), **attributes)
    _restack(folder, NAMES[5:9], (1, 0, 0, 0, 0, -1), (-90, -30, 90), (0, 12, 0), **attributes)
    _restack(folder, NAMES[9:13], (1, 0, 0, 0, 1, 0), (-90, -90, -20), (0, 0, 12), **attributes)
    return folder


def _axial(series: Path, folder: Path, **attributes) -> Path:
    """The series re-oriented as an axial stack (another series of the same study)."""
    _copy(series, folder)
    _restack(folder, NAMES, (1, 0, 0, 0, 1, 0), (-90, -90, -30), (0, 0, 3.6),
             SeriesInstanceUID=pydicom.uid.generate_uid(), SeriesDescription="t2_tse_tra", **attributes)
    return folder


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# -- item 7: an unreadable slice is refused, naming the file ---------------------------------------------------
def test_good_series_reads_exactly_as_gdcm_stacks_it(series):
    image = read_image(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    reference = reader.Execute()
    assert np.array_equal(image.array, sitk.GetArrayFromImage(reference)) and image.array.dtype == np.uint16
    assert image.geometry == Geometry.from_sitk(reference) == read_geometry(series)
    assert image.geometry.shape == (19, 320, 320) and image.geometry.slice_orientation() == "sagittal"
    np.testing.assert_allclose(image.geometry.spacing, (3.6, 0.5625, 0.5625), atol=1e-6)


@pytest.mark.parametrize("keep, reason", [(208734 - 5000, "pixel data cut off"), (600, "header cut off or corrupt")],
                         ids=["pixel_data_cut", "header_cut"])
def test_series_with_a_truncated_slice_is_refused_naming_the_file(series, tmp_path, keep, reason):
    folder = _copy(series, tmp_path / "sag")
    _truncate(folder / "1-07.dcm", keep)
    assert len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))) == 18   # GDCM drops it silently
    with pytest.raises(ImageReadError, match=rf"sag: file 1-07\.dcm cannot be read completely \({reason}\?\); "
                                             "re-export the series"):
        read_image(folder)
    with pytest.raises(ImageReadError, match=r"1-07\.dcm cannot be read completely"):
        read_geometry(folder)


def test_empty_dcm_file_is_refused(series, tmp_path):
    folder = _copy(series, tmp_path / "sag")
    (folder / "1-20.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"file 1-20\.dcm is empty"):
        read_image(folder)


def test_cli_refuses_a_truncated_series_and_writes_nothing(series, sagittal_model, tmp_path, capsys):
    folder = _copy(series, tmp_path / "sag")
    _truncate(folder / "1-07.dcm", 208734 - 5000)
    out = tmp_path / "out.seg.nrrd"
    code = cli(["predict", "-i", str(folder), "-o", str(out), "-m", str(sagittal_model), "--device", "cpu"])
    assert code != 0 and not out.exists() and list(tmp_path.iterdir()) == [folder]
    err = capsys.readouterr().err
    assert f"{folder}: file 1-07.dcm cannot be read completely (pixel data cut off?)" in err


# -- item 8: slices not parallel, or unequal gaps, are refused with the reason --------------------------------
def test_multi_plane_localizer_is_refused(series, tmp_path, sagittal_model, capsys):
    folder = _localizer(series, tmp_path / "localizer")
    with pytest.raises(ImageReadError, match=r"localizer: slices are not parallel \(3 orientations, up to 90\.0 deg "
                                             r"apart, tolerance 1 deg\): sagittal 5 .*coronal 4 .*axial 4 "):
        read_image(folder)
    out = tmp_path / "out.nii.gz"
    assert cli(["predict", "-i", str(folder), "-o", str(out), "-m", str(sagittal_model), "--device", "cpu"]) != 0
    assert "slices are not parallel" in capsys.readouterr().err and not out.exists()


def test_missing_slice_is_refused_with_its_positions(series, tmp_path):
    folder = _copy(series, tmp_path / "gap", [n for n in NAMES if n != "1-10.dcm"])
    with pytest.raises(ImageReadError, match=r"gap: slice gaps are not equal: 7\.20 mm between .* \(1-11\.dcm, "
                                             r"1-09\.dcm\), median gap 3\.60 mm \(tolerance 10%\)\. A slice is "
                                             "missing"):
        read_image(folder)


@pytest.mark.parametrize("along, across, tilt_deg, refused", [
    (0.2, 0.0, 0.0, None), (0.6, 0.0, 0.0, "slice gaps are not equal"),        # 5.6 % / 16.7 % of the 3.6 mm gap
    (0.0, 0.2, 0.0, None), (0.0, 1.0, 0.0, "is shifted 1.00 mm in-plane"),      # a sheared stack
    (0.0, 0.0, 0.5, None), (0.0, 0.0, 2.0, "slices are not parallel")])         # degrees, tolerance 1
def test_tolerances_for_slice_positions_and_orientations(series, tmp_path, along, across, tilt_deg, refused):
    folder = _copy(series, tmp_path / "sag")
    ds = pydicom.dcmread(folder / "1-10.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [round(x + along, 4), round(y + across, 4), z]   # the normal is x
    a = np.radians(tilt_deg)
    ds.ImageOrientationPatient = [0.0, round(np.cos(a), 6), round(np.sin(a), 6), 0.0, round(np.sin(a), 6),
                                  round(-np.cos(a), 6)]   # rotated in-plane about x: the same normal, another row
    ds.save_as(folder / "1-10.dcm")
    if refused is None:
        assert read_image(folder).array.shape == (19, 320, 320)
    else:
        with pytest.raises(ImageReadError, match=refused):
            read_image(folder)


def test_slice_without_position_is_refused(series, tmp_path):
    folder = _copy(series, tmp_path / "sag")
    ds = pydicom.dcmread(folder / "1-05.dcm")
    del ds.ImagePositionPatient
    ds.save_as(folder / "1-05.dcm")
    with pytest.raises(ImageReadError, match=r"file 1-05\.dcm has no valid ImagePositionPatient \('missing'\)"):
        read_image(folder)


# -- non-DICOM files beside the series: read, with a note -------------------------------------------------------
def test_readme_beside_the_series_is_ignored_with_a_note(series, tmp_path):
    folder = _copy(series, tmp_path / "sag")
    (folder / "README.txt").write_text("exported from PACS\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"README\.txt is not a DICOM image; ignored"):
        image = read_image(folder)
    assert np.array_equal(image.array, read_image(series).array)
    assert image.geometry == read_geometry(series)


# -- item 9: a study folder lists its series and segments the model's plane -----------------------------------
def _study(series: Path, root: Path) -> Path:
    root.mkdir()
    (root / "sag_t2").symlink_to(series, target_is_directory=True)
    _axial(series, root / "ax_t2")
    _localizer(series, root / "localizer", SeriesInstanceUID=pydicom.uid.generate_uid(),
               SeriesDescription="localizer")
    return root


@pytest.mark.slow
def test_study_folder_segments_the_model_plane_and_reports_the_rest(series, sagittal_model, tmp_path, capsys):
    study = _study(series, tmp_path / "study")
    out = tmp_path / "out"
    assert cli(["predict", "-i", str(study), "-o", str(out), "-m", str(sagittal_model), "--device", "cpu"]) == 0
    assert [p.name for p in out.iterdir()] == ["sag_t2.nii.gz"]
    assert read_geometry(out / "sag_t2.nii.gz").matches(read_geometry(series), 1e-6)
    text = capsys.readouterr().out
    assert "study folder" in text and "3 series" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert "sagittal" in rows["sag_t2"] and "19x320x320" in rows["sag_t2"] and rows["sag_t2"].endswith("segment")
    assert "t2_tse_tra" in rows["ax_t2"] and "skipped: axial series, the model was trained on sagittal" in rows["ax_t2"]
    assert "skipped: slices are not parallel" in rows["localizer"]
    assert "written 1" in text and "failed 0" in text
    # the progress line lists what was not segmented, and why
    assert cli(["predict", "-i", str(study), "-o", str(out), "-m", str(sagittal_model), "--device", "cpu",
                "--progress-json", "--overwrite"]) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    assert done["stage"] == "done" and done["written"] == ["sag_t2"] and done["failed"] == []
    skipped = {s["series"]: s["reason"] for s in done["skipped_series"]}
    assert set(skipped) == {"ax_t2", "localizer"} and "not parallel" in skipped["localizer"]


@pytest.mark.slow
def test_study_folder_series_option_and_no_match(series, sagittal_model, tmp_path, capsys):
    study = _study(series, tmp_path / "study")
    out = tmp_path / "out"
    assert cli(["predict", "-i", str(study), "-o", str(out), "-m", str(sagittal_model), "--device", "cpu",
                "--series", "T2_TSE_TRA"]) == 0                       # by SeriesDescription, any case
    assert [p.name for p in out.iterdir()] == ["ax_t2.nii.gz"]
    assert "axial series given to a model trained on sagittal" in capsys.readouterr().err
    (study / "sag_t2").unlink()                                        # no sagittal series left
    assert cli(["predict", "-i", str(study), "-o", str(tmp_path / "none"), "-m", str(sagittal_model),
                "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "no series in the sagittal plane; name one with --series" in captured.err
    assert "ax_t2" in captured.out and not (tmp_path / "none").exists()
    assert cli(["predict", "-i", str(study), "-o", str(tmp_path / "x"), "-m", str(sagittal_model), "--device", "cpu",
                "--series", "dwi"]) == 1
    assert "no series matches --series 'dwi'" in capsys.readouterr().err


@pytest.mark.slow
def test_study_folder_with_a_model_without_plane_segments_every_readable_series(series, tmp_path, capsys):
    model = _model(tmp_path / "NoPlane", None)
    study = _study(series, tmp_path / "study")
    out = tmp_path / "out"
    assert cli(["predict", "-i", str(study), "-o", str(out), "-m", str(model), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ax_t2.nii.gz", "sag_t2.nii.gz"]
    assert "the model records no slice plane" in capsys.readouterr().out


@pytest.mark.slow
def test_sub_folders_from_different_studies_stay_a_batch(series, sagittal_model, tmp_path, capsys):
    root = tmp_path / "batch"
    root.mkdir()
    (root / "patient_a").symlink_to(series, target_is_directory=True)
    _axial(series, root / "patient_b", StudyInstanceUID=pydicom.uid.generate_uid())
    out = tmp_path / "out"
    assert cli(["predict", "-i", str(root), "-o", str(out), "-m", str(sagittal_model), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["patient_a.nii.gz", "patient_b.nii.gz"]
    assert "study folder" not in capsys.readouterr().out


# -- item 10: a constant image; the slice plane recorded by plan / init-model --------------------------------
@pytest.mark.slow
def test_constant_image_is_refused_and_a_folder_run_continues(sagittal_model, tmp_path, capsys):
    geometry = Geometry((6, 40, 40), (3.6, 0.6, 0.6), (0, 0, 0), tuple(sitk.DICOMOrientImageFilter
                                                                       .GetDirectionCosinesFromOrientation("PIR")))
    predictor = Predictor(sagittal_model, device="cpu")
    with pytest.raises(ImageReadError, match=r"case Z: constant image \(every voxel = 0\): nothing to segment; "
                                             "check the series/export"):
        predictor.predict(Image(np.zeros(geometry.shape, np.float32), geometry), source="case Z")
    cases = tmp_path / "cases"
    write_image(np.zeros(geometry.shape, np.int16), geometry, cases / "blank.nii.gz")
    write_image(np.random.default_rng(0).normal(300, 60, geometry.shape).astype(np.float32), geometry,
                cases / "good.nii.gz")
    assert cli(["predict", "-i", str(cases), "-o", str(tmp_path / "out"), "-m", str(sagittal_model),
                "--device", "cpu"]) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.nii.gz"]
    assert "FAILED blank: case blank: constant image (every voxel = 0)" in capsys.readouterr().err


def test_plan_and_init_model_record_the_slice_plane(tmp_path, capsys):
    plan = ["plan", "--spacing", "5", "5", "5", "--patch", "16", "32", "32", "--base-channels", "4"]
    assert cli([*plan, "-o", str(tmp_path / "default.json")]) == 0
    assert "slice plane sagittal" in capsys.readouterr().out
    assert Plans.load(tmp_path / "default.json").slice_orientation == "sagittal"
    assert cli([*plan, "-o", str(tmp_path / "none.json"), "--slice-plane", "none"]) == 0
    assert Plans.load(tmp_path / "none.json").slice_orientation is None
    assert cli([*plan, "-o", str(tmp_path / "axial.json"), "--slice-plane", "axial"]) == 0
    assert Plans.load(tmp_path / "axial.json").slice_orientation == "axial"
    assert make_plans_from_values([5, 5, 5], [16, 32, 32]).slice_orientation is None   # the API: no plane unless asked

    init = ["init-model", "--plans", str(tmp_path / "default.json"), "--no-onnx"]   # ONNX: test_onnx_export.py
    assert cli([*init, "-o", str(tmp_path / "keep")]) == 0
    assert ModelFolder(tmp_path / "keep").plans.slice_orientation == "sagittal"
    assert cli([*init, "-o", str(tmp_path / "coronal"), "--slice-plane", "coronal"]) == 0
    assert ModelFolder(tmp_path / "coronal").plans.slice_orientation == "coronal"
    assert cli([*init, "-o", str(tmp_path / "unset"), "--slice-plane", "none"]) == 0
    assert ModelFolder(tmp_path / "unset").plans.slice_orientation is None

    # a coronal series given to the sagittal model made by `plan --spacing` is warned about
    coronal = Geometry((20, 256, 256), (4.0, 0.7, 0.7), (0, 0, 0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    assert coronal.slice_orientation() == "coronal"
    found = input_warnings(coronal, ModelFolder(tmp_path / "keep"), "case C")
    assert any("coronal series given to a model trained on sagittal" in m for m in found)
    assert not any("coronal series" in m for m in input_warnings(coronal, ModelFolder(tmp_path / "unset")))
