"""DICOM SEG export (`predict --format dcm`, inference/dicom_seg.py) on the real ProstateX sagittal T2 series.

The SEG is read back by highdicom (`segread`) and by pydicom, and checked against the source: same study and frame
of reference, the source series referenced, per segment the .seg.nrrd's name and SNOMED codes, and every frame,
placed by its own ImagePositionPatient / PixelSpacing / ImageOrientationPatient on the grid SimpleITK reads from
the series, equal to the label map there. A copy of the series whose file names run against the slice order
checks that frames follow positions, not files.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import require_module, require_path

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.data.io import Geometry, read_image, write_image
from RCSegNeXtCore.errors import RCSegNeXtError
from RCSegNeXtCore.inference.export import OUTPUT_FORMATS, provenance, segmentation_metadata, write_prediction
from RCSegNeXtCore.inference.model_folder import init_model_folder
from RCSegNeXtCore.planning import make_plans_from_values

pydicom = require_module("pydicom")
highdicom = require_module("highdicom", "highdicom (the dicom extra)")

SERIES = "prostatex/ProstateX-0000/t2_tse_sag_dicom"
LABELS = {"background": 0, "rectum": 1, "tumour": 2}


@pytest.fixture(scope="module")
def series(real_data) -> Path:
    return require_path(real_data / SERIES, "real DICOM series")


@pytest.fixture(scope="module")
def reversed_names(series, tmp_path_factory) -> Path:
    """The series with its file names in the reverse of the slice order (GDCM sorts by position regardless)."""
    folder = tmp_path_factory.mktemp("reversed") / "series"
    folder.mkdir()
    files = sorted(series.glob("*.dcm"))
    for k, path in enumerate(files):
        shutil.copyfile(path, folder / f"im{len(files) - k:03d}.dcm")
    return folder


@pytest.fixture(scope="module")
def sagittal_model(tmp_path_factory) -> Path:
    plans = make_plans_from_values([5.0, 5.0, 5.0], [16, 32, 32], base_channels=4, slice_orientation="sagittal")
    return init_model_folder(plans, tmp_path_factory.mktemp("model") / "Sagittal", folds=(0,), seed=0,
                             export_onnx=False)


def _label_map(shape, tumour: bool) -> np.ndarray:
    """Boxes placed asymmetrically on every axis, so a flipped or shifted frame shows."""
    labels = np.zeros(shape, np.uint8)
    labels[3:9, 100:180, 90:150] = 1
    if tumour:
        labels[5:7, 120:140, 100:112] = 2
    return labels


def _sitk_geometry(folder: Path) -> Geometry:
    """The series' grid as SimpleITK itself reads it (not through the product's reader)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return Geometry.from_sitk(reader.Execute())


def _terminology(entry: str):
    """(category, type, region) as (scheme, value, meaning) from a .seg.nrrd TerminologyEntry tag."""
    parts = entry.split("~")
    code = lambda text: tuple(text.split("^")) if text.split("^")[0] else None  # noqa: E731
    return code(parts[1]), code(parts[2]), code(parts[5])


def _item_code(dataset, keyword):
    items = getattr(dataset, keyword, None)
    if not items:
        return None
    return items[0].CodingSchemeDesignator, items[0].CodeValue, items[0].CodeMeaning


def _placed(seg_path: Path, geometry: Geometry, n_segments: int) -> np.ndarray:
    """(segments, z, y, x): every frame placed by its own position, orientation and spacing on `geometry`."""
    ds = pydicom.dcmread(seg_path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    orientation = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    assert np.allclose(spacing, geometry.spacing[1:], atol=1e-4)
    assert np.allclose(orientation[:3], geometry.direction_matrix[:, 0], atol=1e-4)   # along a row: x (i)
    assert np.allclose(orientation[3:], geometry.direction_matrix[:, 1], atol=1e-4)   # down a column: y (j)
    to_index = np.linalg.inv(geometry.index_to_physical())
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    placed = np.zeros((n_segments, *geometry.shape), np.uint8)
    seen = set()
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = (to_index @ np.array([*position, 1.0]))[:3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3, (i, j, k)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        seen.add((segment, int(round(k))))
        placed[segment - 1, int(round(k))] = frame
    assert len(seen) == int(ds.NumberOfFrames)     # no frame placed twice
    return placed


@pytest.mark.parametrize("which, tumour", [("original", True), ("reversed", False)])
def test_seg_of_a_label_map_fits_the_source_series(series, reversed_names, tmp_path, which, tumour):
    folder = series if which == "original" else reversed_names
    image = read_image(folder)
    geometry = _sitk_geometry(folder)
    assert image.geometry.matches(geometry)
    labels = _label_map(geometry.shape, tumour)
    out = write_prediction(labels, image.geometry, tmp_path / "seg.dcm", LABELS,
                           provenance("ModelX", "ab" * 32, "openvino 2026 (CPU)"), source=folder)

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    seg = highdicom.seg.segread(out)
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.SeriesDescription == "RCSegNeXt segmentation"
    assert seg.SegmentationType == "BINARY"
    referenced = seg.ReferencedSeriesSequence
    assert [r.SeriesInstanceUID for r in referenced] == [sources[0].SeriesInstanceUID]
    assert {i.ReferencedSOPInstanceUID for i in referenced[0].ReferencedInstanceSequence} == \
        {s.SOPInstanceUID for s in sources}

    # segments: the .seg.nrrd's names and codes, the algorithm and its version / model
    nrrd = segmentation_metadata(LABELS, geometry)
    assert seg.number_of_segments == 2
    for index, item in enumerate(seg.SegmentSequence):
        assert item.SegmentLabel == nrrd[f"Segment{index}_Name"]
        tag = nrrd[f"Segment{index}_Tags"].split("TerminologyEntry:")[1].rstrip("|")
        category, type_, region = _terminology(tag)
        assert _item_code(item, "SegmentedPropertyCategoryCodeSequence") == category
        assert _item_code(item, "SegmentedPropertyTypeCodeSequence") == type_
        assert _item_code(item, "AnatomicRegionSequence") == region
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "RCSegNeXt" and "ModelX" in algorithm.AlgorithmParameters
        assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Rectum", "Tumor"]

    # pixels: each frame where its own header puts it, on SimpleITK's grid of the source
    placed = _placed(out, geometry, 2)
    assert np.array_equal(placed[0], labels == 1) and placed[0].any()
    assert np.array_equal(placed[1], labels == 2) and placed[1].any() == tumour  # empty tumour kept, empty

    # each frame references the source instance at its position
    by_position = {tuple(np.round([float(v) for v in s.ImagePositionPatient], 3)): s.SOPInstanceUID for s in sources}
    for item in pydicom.dcmread(out, stop_before_pixels=True).PerFrameFunctionalGroupsSequence:
        position = tuple(np.round([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient], 3))
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert by_position[position] == source


def test_label_map_on_another_grid_is_refused(series, tmp_path):
    image = read_image(series)
    g = image.geometry
    shifted = Geometry(g.shape, g.spacing, tuple(o + 2.0 for o in g.origin), g.direction)
    with pytest.raises(RCSegNeXtError, match="not on the grid of the DICOM series.*lies on no instance"):
        write_prediction(_label_map(g.shape, True), shifted, tmp_path / "seg.dcm", LABELS, source=series)
    resampled = Geometry((g.shape[0], 160, 160), (g.spacing[0], 1.125, 1.125), g.origin, g.direction)
    with pytest.raises(RCSegNeXtError, match="size"):
        write_prediction(np.zeros(resampled.shape, np.uint8), resampled, tmp_path / "seg.dcm", LABELS, source=series)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow   # two predictions (~8 s on 2 shared cores)
def test_predict_writes_a_seg_equal_to_the_label_map(series, sagittal_model, tmp_path, capsys):
    assert "dcm" in OUTPUT_FORMATS
    out = tmp_path / "out"
    assert cli(["predict", "-i", str(series), "-o", str(out / "case.nrrd"), "-m", str(sagittal_model),
                "--device", "cpu", "--backend", "torch"]) == 0
    assert cli(["predict", "-i", str(series), "-o", str(out / "case.dcm"), "-m", str(sagittal_model),
                "--device", "cpu", "--backend", "torch"]) == 0
    labels = read_image(out / "case.nrrd").array
    placed = _placed(out / "case.dcm", _sitk_geometry(series), 2)
    assert np.array_equal(placed[0], labels == 1) and np.array_equal(placed[1], labels == 2)
    seg = highdicom.seg.segread(out / "case.dcm")
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "Sagittal" in algorithm.AlgorithmParameters   # the model folder's name


def test_non_dicom_input_is_refused_before_any_work(series, tmp_path, capsys):
    image = read_image(series)
    nifti = write_image(image.array, image.geometry, tmp_path / "in" / "case.nii.gz")
    missing_model = tmp_path / "no_model"        # never opened: the input is refused first
    for args in (["-i", str(nifti), "-o", str(tmp_path / "out" / "case.dcm")],
                 ["-i", str(nifti), "-o", str(tmp_path / "out") + "/", "--format", "dcm"],
                 ["-i", str(nifti.parent), "-o", str(tmp_path / "out"), "--format", "dcm"]):
        assert cli(["predict", *args, "-m", str(missing_model)]) == 2
        err = capsys.readouterr().err
        assert "(DICOM SEG) needs a DICOM series input" in err and "write .seg.nrrd or a label map" in err
        assert not (tmp_path / "out").exists()


def test_missing_highdicom_names_the_extra(series, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "highdicom", None)   # import highdicom -> ImportError
    assert cli(["predict", "-i", str(series), "-o", str(tmp_path / "case.dcm"), "-m", str(tmp_path / "no_model")]) == 2
    assert "pip install rcsegnext[dicom]" in capsys.readouterr().err
    image = read_image(series)
    with pytest.raises(RCSegNeXtError, match=r"needs the highdicom package.*pip install rcsegnext\[dicom\]"):
        write_prediction(np.zeros(image.geometry.shape, np.uint8), image.geometry, tmp_path / "x.dcm", LABELS,
                         source=series)
    assert not list(tmp_path.iterdir())
