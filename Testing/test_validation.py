"""`check_dataset` / `rcsegnext check`: each bad input gives its own message naming the case, both values and what
to do; all problems are reported together; nothing is changed on disk."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RCSegNeXtCore.cli import main
from RCSegNeXtCore.data.dataset import write_dataset_json
from RCSegNeXtCore.data.io import Geometry, read_image, write_image
from RCSegNeXtCore.data.validation import Problem, check_dataset, inspect_dataset

GEOMETRY = Geometry((4, 10, 8), (4.0, 0.875, 0.875), (-10.0, 20.0, 30.0),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(300, 50, GEOMETRY.shape).astype(np.float32)


def _label() -> np.ndarray:
    label = np.zeros(GEOMETRY.shape, np.uint8)
    label[1:3, 2:7, 2:6] = 1
    label[2, 3:5, 3:5] = 2
    return label


def make_clean(root: Path, cases=("p0", "p1")) -> Path:
    for i, case_id in enumerate(cases):
        write_image(_image(i), GEOMETRY, root / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_image(_label(), GEOMETRY, root / "labelsTr" / f"{case_id}.nii.gz")
    write_dataset_json(root, num_training=len(cases))
    return root


@pytest.fixture
def clean(tmp_path) -> Path:
    return make_clean(tmp_path / "ds")


def only_problem(root: Path) -> Problem:
    problems = check_dataset(root)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_clean_dataset_has_no_problem(clean):
    assert check_dataset(clean) == []


def _geometry(**changes) -> Geometry:
    values = dict(shape=GEOMETRY.shape, spacing=GEOMETRY.spacing, origin=GEOMETRY.origin,
                  direction=GEOMETRY.direction)
    values.update(changes)
    return Geometry(**values)


def test_label_size_mismatch(clean):
    write_image(np.zeros((4, 5, 4), np.uint8), _geometry(shape=(4, 5, 4)), clean / "labelsTr/p1.nii.gz")
    problem = only_problem(clean)
    assert problem.case_id == "p1"
    assert "label size (z,y,x) (4, 5, 4) differs from image size (4, 10, 8)" in problem.message
    assert "resample the label onto the image grid" in problem.hint


def test_label_on_coarser_grid_names_size_and_spacing(clean):
    coarse = _geometry(shape=(4, 5, 4), spacing=(4.0, 1.75, 1.75))
    write_image(np.zeros(coarse.shape, np.uint8), coarse, clean / "labelsTr/p0.nii.gz")
    messages = [p.message for p in check_dataset(clean)]
    assert len(messages) == 2 and all(p.startswith("label ") for p in messages)
    assert "label spacing (z,y,x) (4, 1.75, 1.75) mm differs from image spacing (4, 0.875, 0.875) mm" in messages[1]


def test_label_spacing_mismatch(clean):
    write_image(_label(), _geometry(spacing=(3.0, 0.875, 0.875)), clean / "labelsTr/p0.nii.gz")
    problem = only_problem(clean)
    assert problem.case_id == "p0" and "(3, 0.875, 0.875) mm differs from image spacing (4, 0.875, 0.875)" \
        in problem.message


def test_label_origin_mismatch(clean):
    write_image(_label(), _geometry(origin=(-10.0, 22.5, 30.0)), clean / "labelsTr/p0.nii.gz")
    problem = only_problem(clean)
    assert "label origin (-10, 22.5, 30) mm differs from image origin (-10, 20, 30) mm" in problem.message
    assert "fix the label's origin" in problem.hint


def test_label_direction_mismatch(clean):
    a = np.deg2rad(10)
    rotated = (1.0, 0.0, 0.0, 0.0, np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a))
    write_image(_label(), _geometry(direction=rotated), clean / "labelsTr/p0.nii.gz")
    problem = only_problem(clean)
    assert re.search(r"label direction \w{3} \(1, 0, 0, 0, 0\.98\d*, -0\.17\d*.*\) differs from image direction "
                     r"LPS \(1, 0, 0, 0, 1, 0, 0, 0, 1\)", problem.message), problem.message


def test_label_with_flipped_axis_same_grid(clean):
    label = _label()
    flipped = Geometry(GEOMETRY.shape, GEOMETRY.spacing, (-10.0, 20.0 + 9 * 0.875, 30.0),
                       (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    write_image(label[:, ::-1, :], flipped, clean / "labelsTr/p1.nii.gz")
    problem = only_problem(clean)
    assert problem.message.startswith("label is stored with a flipped j axis: direction LAS")
    assert "vs image LPS" in problem.message and "same voxel grid" in problem.message
    assert "(this maps it exactly)" in problem.hint


def test_label_values_outside_dataset_json(clean):
    label = _label()
    label[0, 0, :3] = 5
    label[0, 1, 0] = 7
    write_image(label, GEOMETRY, clean / "labelsTr/p0.nii.gz")
    problem = only_problem(clean)
    assert "label values 5 (3 voxels), 7 (1 voxels) are not declared in dataset.json labels [0, 1, 2]" \
        in problem.message
    assert "add the labels to dataset.json" in problem.hint


def test_non_integer_label_values(clean):
    label = _label().astype(np.float32)
    label[1, 2, 2] = 0.5  # a mask resampled with linear interpolation
    write_image(label, GEOMETRY, clean / "labelsTr/p0.nii.gz")
    problem = only_problem(clean)
    assert "label has non-integer values 0.5 (1 voxels)" in problem.message and "nearest-neighbour" in problem.hint


def test_non_finite_voxels(clean):
    image = _image()
    image[0, 0, 0], image[1, 1, 1] = np.nan, np.inf
    write_image(image, GEOMETRY, clean / "imagesTr/p1_0000.nii.gz")
    problem = only_problem(clean)
    assert problem.case_id == "p1" and "channel 0000 has 2 non-finite voxel(s) (NaN/inf) of 320" in problem.message
    assert "nothing is replaced automatically" in problem.hint


def test_2d_and_4d_images(clean):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 8), np.float32)), str(clean / "imagesTr/p0_0000.nii.gz"))
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(_image())] * 3)
    sitk.WriteImage(four_d, str(clean / "imagesTr/p1_0000.nii.gz"))
    problems = check_dataset(clean)
    assert [p.case_id for p in problems] == ["p0", "p1"]
    assert "p0_0000.nii.gz: is 2D with size (8, 10)" in problems[0].message
    assert "p1_0000.nii.gz: is 4D with size (8, 10, 4, 3)" in problems[1].message
    assert all(p.hint == "store each case and channel as one 3D scalar volume" for p in problems)


def test_empty_and_truncated_files(clean):
    (clean / "imagesTr/p0_0000.nii.gz").write_bytes(b"")
    data = (clean / "labelsTr/p1.nii.gz").read_bytes()
    (clean / "labelsTr/p1.nii.gz").write_bytes(data[: len(data) // 2])
    problems = check_dataset(clean)
    assert [p.case_id for p in problems] == ["p0", "p1"], [str(p) for p in problems]
    assert "p0_0000.nii.gz: file is empty (0 bytes)" in problems[0].message
    assert problems[1].message.startswith("label ") and "p1.nii.gz: file is truncated or corrupt" in problems[1].message
    assert all("re-export or re-copy the file" in p.hint for p in problems)


def test_missing_channel_and_channel_grid_mismatch(tmp_path):
    root = make_clean(tmp_path / "ds")
    write_dataset_json(root, channel_names={"0": "T2", "1": "ADC"}, num_training=2)
    write_image(_image(), _geometry(spacing=(3.0, 0.875, 0.875)), root / "imagesTr/p0_0001.nii.gz")
    problems = check_dataset(root)
    assert [p.case_id for p in problems] == ["p1", "p0"], [str(p) for p in problems]
    assert problems[0].message == "missing channel(s) _0001 of 2 declared in dataset.json"
    assert problems[0].hint.startswith("add p1_0001 to imagesTr/")
    assert "channel 0001 spacing (z,y,x) (3, 0.875, 0.875) mm differs from channel 0000 spacing" in problems[1].message


def test_duplicate_case_id(clean):
    write_image(_image(), GEOMETRY, clean / "imagesTr/p0_0000.nrrd")
    write_image(_label(), GEOMETRY, clean / "labelsTr/p0.mha")
    problems = check_dataset(clean)
    assert len(problems) == 2 and {p.case_id for p in problems} == {"p0"}
    assert "channel 0 is stored 2 times: p0_0000.nii.gz, p0_0000.nrrd (duplicate case id)" in problems[0].message
    assert "label is stored 2 times: p0.mha, p0.nii.gz (duplicate case id)" in problems[1].message


def test_missing_label_and_label_without_image(clean):
    (clean / "labelsTr/p0.nii.gz").rename(clean / "labelsTr/p9.nii.gz")
    problems = check_dataset(clean)
    assert [str(p) for p in problems] == [
        "p0: has an image but no label in labelsTr/ — add labelsTr/p0.nii.gz or move the case to imagesTs/",
        "p9: has a label (p9.nii.gz) but no image in imagesTr/ — add imagesTr/p9_0000.nii.gz or remove the label"]


def test_label_with_channel_suffix(clean):
    (clean / "labelsTr/p1.nii.gz").rename(clean / "labelsTr/p1_0000.nii.gz")
    problems = check_dataset(clean)
    assert [str(p) for p in problems] == [
        "p1: has an image but no label in labelsTr/ — add labelsTr/p1.nii.gz or move the case to imagesTs/",
        "p1_0000: has a label (p1_0000.nii.gz) but no image in imagesTr/ — rename it to labelsTr/p1.nii.gz"]


def test_misnamed_and_unreadable_entries(clean):
    shutil.copy(clean / "imagesTr/p0_0000.nii.gz", clean / "imagesTr/p2.nii.gz")
    (clean / "imagesTr/notes.txt").write_text("hello", encoding="utf-8")
    problems = check_dataset(clean)
    assert [p.case_id for p in problems] == ["notes", "p2"]
    assert "notes.txt is not an image file this tool reads" in problems[0].message
    assert "p2.nii.gz is not named CASE_XXXX" in problems[1].message and "p2_0000.nii.gz" in problems[1].hint


@pytest.mark.parametrize("content, expected", [
    (None, "dataset.json is missing"),
    ("{not json", "is not valid JSON"),
    ({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz"}, "has no \"labels\" mapping"),
    ({"labels": {"background": 0, "tumour": 2}, "channel_names": {"0": "T2"}, "file_ending": ".nii.gz"},
     "label values [0, 2] are not consecutive from 0"),
    ({"labels": {"background": 0, "lesion": [1, 2]}, "channel_names": {"0": "T2"}, "file_ending": ".nii.gz"},
     "label 'lesion' has value [1, 2]; region-based"),
    ({"labels": {"background": 0, "rectum": 1, "tumour": 2}, "channel_names": {"0": "T2"}, "file_ending": ".png"},
     "\"file_ending\" is \".png\""),
    ({"labels": {"background": 0, "rectum": 1, "tumour": 2}, "channel_names": {"0": "T2"}, "file_ending": ".nii.gz",
      "numTraining": 5}, "numTraining is 5 but imagesTr/ holds 2 case(s)"),
])
def test_dataset_json_problems(clean, content, expected):
    path = clean / "dataset.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    problems = check_dataset(clean)
    assert any(p.case_id == "dataset.json" and expected in p.message for p in problems), [str(p) for p in problems]


def test_every_problem_reported_at_once_and_nothing_changed(clean):
    make_clean(clean, cases=("p0", "p1", "p2", "p3"))
    image = _image()
    image[0, 0, 0] = np.nan
    write_image(image, GEOMETRY, clean / "imagesTr/p0_0000.nii.gz")
    write_image(_label(), _geometry(origin=(0.0, 0.0, 0.0)), clean / "labelsTr/p1.nii.gz")
    write_image(np.full(GEOMETRY.shape, 9, np.uint8), GEOMETRY, clean / "labelsTr/p2.nii.gz")
    (clean / "labelsTr/p3.nii.gz").unlink()
    before = {p: p.read_bytes() for p in clean.rglob("*") if p.is_file()}
    problems = check_dataset(clean)
    assert [p.case_id for p in problems] == ["p3", "p0", "p1", "p2"], [str(p) for p in problems]
    assert before == {p: p.read_bytes() for p in clean.rglob("*") if p.is_file()}


def test_check_command_output_and_exit_codes(clean, tmp_path, capsys):
    assert main(["check", str(clean), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 training case(s), 0 test case(s), channels 0: T2" in out
    assert "spacing (z,y,x) mm: min (4, 0.875, 0.875)" in out and "orientations: LPS (2)" in out
    assert "label 1 rectum: 72 voxels in 2 case(s)" in out and "label 2 tumour: 8 voxels in 2 case(s)" in out
    assert out.rstrip().endswith("OK: no problems found")

    (clean / "labelsTr/p0.nii.gz").unlink()
    write_image(np.full(GEOMETRY.shape, 4, np.uint8), GEOMETRY, clean / "labelsTr/p1.nii.gz")
    assert main(["check", str(clean), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "2 problem(s) in 2 case(s)/file(s); nothing was changed:" in lines
    problem_lines = lines[lines.index("2 problem(s) in 2 case(s)/file(s); nothing was changed:") + 1:]
    assert len(problem_lines) == 2 and all(re.match(r"^p[01]: .+ — .+$", line) for line in problem_lines)

    assert main(["check", str(tmp_path / "absent")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err


# ---- real data: small datasets built in tmp from the real files (symlinks; never copied into the repo) ---------

def _real_dataset(root: Path, image: Path, label: Path, labels: dict, case_id: str) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image_ext = "".join(image.suffixes[-2:]) if image.name.endswith(".nii.gz") else image.suffix
    (root / "imagesTr" / f"{case_id}_0000{image_ext}").symlink_to(image)
    (root / "labelsTr" / f"{case_id}.nii.gz").symlink_to(label)
    write_dataset_json(root, labels=labels, num_training=1)
    return root


def test_real_flipped_lesion_mask_is_refused(real_data, tmp_path):
    case = real_data / "prostatex/ProstateX-0000"
    root = _real_dataset(tmp_path / "ds", case / "ProstateX-0000_t2w.mha", case / "ProstateX-0000_lesion.nii.gz",
                         {"background": 0, "lesion": 1}, "ProstateX-0000")
    problem = only_problem(root)
    assert problem.case_id == "ProstateX-0000"
    assert problem.message.startswith("label is stored with a flipped j axis: direction LAS")
    assert "vs image LPS" in problem.message
    # the hint is right: nearest-neighbour resampling onto the image grid maps the mask exactly (512 voxels)
    image = sitk.ReadImage(str(case / "ProstateX-0000_t2w.mha"))
    mask = sitk.ReadImage(str(case / "ProstateX-0000_lesion.nii.gz"))
    fixed = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert int(sitk.GetArrayViewFromImage(fixed).sum()) == 512
    (root / "labelsTr/ProstateX-0000.nii.gz").unlink()
    sitk.WriteImage(fixed, str(root / "labelsTr/ProstateX-0000.nii.gz"))
    assert check_dataset(root) == []


def test_real_empty_mask_on_coarser_grid_is_refused(real_data, tmp_path):
    case = real_data / "prostatex/ProstateX-0001"
    root = _real_dataset(tmp_path / "ds", case / "ProstateX-0001_t2w.mha",
                         case / "ProstateX-0001_lesion_empty_2mm.nii.gz", {"background": 0, "lesion": 1},
                         "ProstateX-0001")
    messages = [p.message for p in check_dataset(root)]
    assert "label size (z,y,x) (19, 128, 84) differs from image size (19, 384, 384)" in messages[0]
    assert "label spacing (z,y,x) (3, 2, 2) mm differs from image spacing (3, 0.5, 0.5) mm" in messages[1]
    assert all(m.startswith("label ") for m in messages)


def test_real_rectal_case_passes(real_data, tmp_path):
    case = real_data / "rectal_filitto"
    root = _real_dataset(tmp_path / "ds", case / "rectal_ca_ax_t2.nii.gz", case / "rectal_ca_ax_t2_tumor.nii.gz",
                         {"background": 0, "tumour": 1}, "rectal_filitto")
    report = inspect_dataset(root)
    assert report.problems == []
    assert report.label_voxels == {0: 512 * 512 * 30 - 54700, 1: 54700}
    assert report.orientations == {"LPS": 1}
    assert np.allclose(report.spacings[0], (3.0, 0.4297, 0.4297), atol=1e-4)
    assert read_image(root / "labelsTr/rectal_filitto.nii.gz").array.dtype == np.uint8
