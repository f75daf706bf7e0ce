"""RCSegNeXtCore.data.dataset: nnU-Net v2 raw layout, dataset.json, read_case, DICOM-folder cases."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RCSegNeXtCore.data.dataset import (DEFAULT_LABELS, Case, load_dataset, read_case, scan_dataset,
                                        write_dataset_json)
from RCSegNeXtCore.data.io import Geometry, read_image, write_image
from RCSegNeXtCore.errors import DatasetError

GEOMETRY = Geometry((4, 10, 8), (4.0, 0.875, 0.875), (-10.0, 20.0, 30.0),
                    sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation("PIR"))


def _label(seed: int) -> np.ndarray:
    label = np.zeros(GEOMETRY.shape, np.uint8)
    label[1:3, 2:7, 2:6] = 1
    label[2, 3:5, 3:5] = 2 if seed % 2 == 0 else 1
    return label


def make_dataset(root: Path, case_ids=("case_002", "case_000", "case_001"), ext=".nii.gz", channels=1) -> Path:
    rng = np.random.default_rng(0)
    for case_id in case_ids:
        for c in range(channels):
            image = rng.normal(300, 50, GEOMETRY.shape).astype(np.float32)
            write_image(image, GEOMETRY, root / "imagesTr" / f"{case_id}_{c:04d}{ext}")
        write_image(_label(len(case_id)), GEOMETRY, root / "labelsTr" / f"{case_id}{ext}")
    names = {str(c): f"T2_{c}" for c in range(channels)}
    write_dataset_json(root, channel_names=names, file_ending=ext, num_training=len(case_ids))
    return root


def test_load_dataset_finds_sorted_cases_and_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "ds", channels=2)
    write_image(np.zeros(GEOMETRY.shape, np.float32), GEOMETRY, root / "imagesTs" / "new_0000.nii.gz")
    write_image(np.zeros(GEOMETRY.shape, np.float32), GEOMETRY, root / "imagesTs" / "new_0001.nii.gz")
    dataset = load_dataset(root)
    assert dataset.root == root
    assert [c.case_id for c in dataset.cases] == ["case_000", "case_001", "case_002"]
    assert dataset.cases[0].image_paths == [root / "imagesTr/case_000_0000.nii.gz",
                                            root / "imagesTr/case_000_0001.nii.gz"]
    assert dataset.cases[0].label_path == root / "labelsTr/case_000.nii.gz"
    assert dataset.labels == {"background": 0, "rectum": 1, "tumour": 2} == DEFAULT_LABELS
    assert dataset.label_names == {0: "background", 1: "rectum", 2: "tumour"}
    assert dataset.channel_names == {"0": "T2_0", "1": "T2_1"} and dataset.num_channels == 2
    assert dataset.file_ending == ".nii.gz" and dataset.dataset_json["numTraining"] == 3
    assert [(c.case_id, c.label_path, len(c.image_paths)) for c in dataset.test_cases] == [("new", None, 2)]
    assert dataset.case("case_001") is dataset.cases[1]
    with pytest.raises(DatasetError, match="no case 'nope'"):
        dataset.case("nope")


def test_half_written_and_hidden_files_are_ignored(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "imagesTr" / ".case_003_0000.1a2b3c4d.part.nii.gz").write_bytes(b"partial")
    (root / "labelsTr" / ".DS_Store").write_bytes(b"x")
    assert len(load_dataset(root).cases) == 3


def test_read_case_shapes_dtypes_and_exact_values(tmp_path):
    root = make_dataset(tmp_path / "ds", channels=2)
    case = load_dataset(root).cases[1]
    image, label = read_case(case)
    assert image.array.shape == (2, 4, 10, 8) and image.array.dtype == np.float32
    assert label.array.shape == (4, 10, 8) and label.array.dtype == np.uint8
    for c in range(2):  # independent read through SimpleITK
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(case.image_paths[c])))
        assert np.array_equal(image.array[c], expected)
    assert np.array_equal(label.array, _label(len(case.case_id)))
    assert image.geometry == label.geometry
    assert np.allclose(image.geometry.index_to_physical(), GEOMETRY.index_to_physical(), atol=1e-4)
    image, none = read_case(Case("x", case.image_paths[:1], None))
    assert none is None and image.array.shape == (1, 4, 10, 8)


def test_read_case_refuses_instead_of_fixing(tmp_path):
    root = make_dataset(tmp_path / "ds")
    case = load_dataset(root).cases[0]
    shifted = Geometry(GEOMETRY.shape, GEOMETRY.spacing, (-10.0, 25.0, 30.0), GEOMETRY.direction)
    write_image(_label(0), shifted, case.label_path)
    with pytest.raises(DatasetError, match=r"case case_000: label origin \(-10, 25, 30\) mm differs from image "
                                           r"origin \(-10, 20, 30\)"):
        read_case(case)
    write_image(np.full(GEOMETRY.shape, 3, np.uint8), GEOMETRY, case.label_path)
    read_case(case)  # 3 is a valid uint8 label when the caller gives no label set...
    with pytest.raises(DatasetError, match=r"label values 3 \(320 voxels\) are not declared"):
        read_case(case, labels=[0, 1, 2])  # ...and refused against dataset.json's
    case.label_path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"case case_000: .*case_000.nii.gz: file is empty"):
        read_case(case)


def test_mixed_formats_and_dicom_folder_case(tmp_path):
    root = make_dataset(tmp_path / "ds", case_ids=("a",))
    write_image(np.ones(GEOMETRY.shape, np.int16), GEOMETRY, root / "imagesTr" / "b_0000.nrrd")
    write_image(_label(0), GEOMETRY, root / "labelsTr" / "b.mha")
    # a DICOM series folder as a case image: write the slices with SimpleITK
    series = root / "imagesTr" / "c_0000"
    series.mkdir()
    volume = sitk.GetImageFromArray(np.arange(4 * 10 * 8, dtype=np.int16).reshape(4, 10, 8))
    volume.SetSpacing((0.875, 0.875, 4.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our series UID so GDCM sees one series
    uid = "1.2.826.0.1.3680043.2.1125.1.1"
    for k in range(4):
        dicom_slice = volume[:, :, k]
        for key, value in {"0020|0032": f"0\\0\\{4.0 * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0020|0013": str(k + 1), "0020|000d": uid + ".0", "0020|000e": uid,
                           "0008|0018": f"{uid}.{k + 1}", "0008|0060": "MR", "0028|0030": "0.875\\0.875",
                           "0018|0050": "4.0"}.items():
            dicom_slice.SetMetaData(key, value)
        writer.SetFileName(str(series / f"{k + 1}.dcm"))
        writer.Execute(dicom_slice)
    write_image(np.zeros((4, 10, 8), np.uint8), read_image(series).geometry, root / "labelsTr" / "c.nii.gz")
    json_path = root / "dataset.json"
    json_path.write_text(json_path.read_text(encoding="utf-8").replace('"numTraining": 1', '"numTraining": 3'), encoding="utf-8")

    dataset = load_dataset(root)
    assert [c.case_id for c in dataset.cases] == ["a", "b", "c"]
    assert dataset.cases[2].image_paths == [series]
    image, label = read_case(dataset.cases[2])
    assert image.array.shape == (1, 4, 10, 8)
    assert np.array_equal(image.array[0], np.arange(320, dtype=np.float32).reshape(4, 10, 8))
    assert np.allclose(image.geometry.spacing, (4.0, 0.875, 0.875))
    assert read_case(dataset.cases[1])[0].array.shape == (1, 4, 10, 8)


def test_load_dataset_refuses_a_broken_layout_listing_all_problems(tmp_path):
    root = make_dataset(tmp_path / "ds")
    shutil.copy(root / "imagesTr" / "case_000_0000.nii.gz", root / "imagesTr" / "case_000_0000.nrrd")
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    text = str(info.value)
    assert "2 problem(s)" in text and "duplicate case id" in text and "case_001: has an image but no label" in text
    assert "rcsegnext check" in text
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "absent")


def test_write_dataset_json(tmp_path):
    path = write_dataset_json(tmp_path / "new", num_training=5, description="phantom")
    content = json.loads(path.read_text(encoding="utf-8"))
    assert content == {"channel_names": {"0": "T2"}, "labels": {"background": 0, "rectum": 1, "tumour": 2},
                       "numTraining": 5, "file_ending": ".nii.gz", "description": "phantom"}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    with pytest.raises(DatasetError, match="background = 0"):
        write_dataset_json(tmp_path, labels={"background": 0, "tumour": 2})
    with pytest.raises(DatasetError, match="file_ending '.png'"):
        write_dataset_json(tmp_path, file_ending=".png")


def test_dataset_json_v1_modality_is_read_as_channel_names(tmp_path):
    root = make_dataset(tmp_path / "ds")
    content = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    content["modality"] = content.pop("channel_names")
    (root / "dataset.json").write_text(json.dumps(content), encoding="utf-8")
    dataset, problems = scan_dataset(root)
    assert problems == [] and dataset.channel_names == {"0": "T2_0"}


# ---- real data: a small dataset built in tmp from the real files (never copied into the repo) ----------------

def test_real_dicom_series_as_case_image(real_data, tmp_path):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "imagesTr" / "ProstateX-0000_0000").symlink_to(real_data / "prostatex/ProstateX-0000/t2_tse_sag_dicom")
    (root / "imagesTr" / "ProstateX-0001_0000.mha").symlink_to(
        real_data / "prostatex/ProstateX-0001/ProstateX-0001_t2_tse_sag.mha")
    (root / "labelsTr").mkdir()
    write_dataset_json(root, labels={"background": 0, "prostate_lesion": 1}, num_training=2)
    dataset, problems = scan_dataset(root)
    assert [p.message for p in problems] == ["has an image but no label in labelsTr/"] * 2
    image, label = read_case(dataset.cases[0])
    assert image.array.shape == (1, 19, 320, 320) and label is None
    assert np.allclose(image.geometry.spacing, (3.6, 0.5625, 0.5625), atol=1e-4)
    assert int(image.array.max()) == 1115
