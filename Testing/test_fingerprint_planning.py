"""Dataset fingerprint, plans.json creation and the check -> plan -> preprocess round trip
(RCSegNeXtCore/data/fingerprint.py, planning.py, commands/plan.py, commands/preprocess.py)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from RCSegNeXtCore.cli import main
from RCSegNeXtCore.data.cache import list_preprocessed_cases, load_preprocessed_case
from RCSegNeXtCore.data.dataset import load_dataset, write_dataset_json
from RCSegNeXtCore.data.fingerprint import compute_fingerprint
from RCSegNeXtCore.data.io import Geometry, read_geometry, read_image, write_image
from RCSegNeXtCore.planning import fit_patch_size, make_plans, make_plans_from_values
from RCSegNeXtCore.data.preprocess import restore_to_original
from RCSegNeXtCore.data.resample import same_spacing
from RCSegNeXtCore.planning import plan_for_patch, total_stride
from RCSegNeXtCore.plans import Plans

PAPER_SPACING = [4.0, 0.875, 0.875]


def _synthetic_dataset(root, channel_names=None):
    """Three small cases with hand-known spacing, non-zero box and foreground values; returns what was written."""
    rng = np.random.default_rng(1)
    specs = [((10, 30, 28), (4.0, 0.875, 0.875)), ((12, 26, 30), (3.0, 0.8, 0.9)), ((9, 32, 32), (5.0, 1.0, 0.7))]
    written = []
    channel_names = channel_names or {"0": "T2"}
    for i, (shape, spacing) in enumerate(specs):
        image = rng.normal(300.0, 50.0, shape).astype(np.float32)
        image[:, :2 + i] = 0                              # zero rows in front: cropped away
        label = np.zeros(shape, np.uint8)
        label[2:6, 8:14, 9:15] = 1
        label[3:5, 10:12, 11:13] = 2
        geometry = Geometry(shape, spacing, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        for c in range(len(channel_names)):
            write_image(image * (c + 1), geometry, root / "imagesTr" / f"case{i}_{c:04d}.nii.gz")
        write_image(label, geometry, root / "labelsTr" / f"case{i}.nii.gz")
        written.append((image, label, spacing, [shape[0], shape[1] - 2 - i, shape[2]]))
    write_dataset_json(root, channel_names=channel_names, num_training=len(specs), name="synthetic")
    return written


def _one_hot(label, num_classes):
    return np.eye(num_classes, dtype=np.float32)[label.astype(int)].transpose(3, 0, 1, 2)


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# -- fingerprint ----------------------------------------------------------------------------------------------
def test_fingerprint_matches_numpy(tmp_path):
    written = _synthetic_dataset(tmp_path)
    fingerprint = compute_fingerprint(tmp_path, progress=False)
    json.dumps(fingerprint)                                          # JSON-able
    assert fingerprint["num_cases"] == 3
    for case, (*_, spacing, _) in zip(fingerprint["cases"], written):
        assert case["spacing"] == pytest.approx(spacing, rel=1e-6)  # NIfTI stores float32
    assert [c["shape_after_crop"] for c in fingerprint["cases"]] == [w[3] for w in written]
    assert fingerprint["median_spacing"] == [4.0, 0.875, 0.875]      # per-axis median of the three
    assert fingerprint["median_shape_after_crop"] == [10.0, 28.0, 30.0]  # crops 28/23/28 rows, 28/30/32 columns
    foreground = np.concatenate([image[label > 0] for image, label, *_ in written])   # < 10k voxels: all used
    stats = fingerprint["intensity_properties"]["0"]
    assert stats["mean"] == pytest.approx(foreground.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(foreground.std(), rel=1e-5)
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(foreground, 0.5), rel=1e-6)
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(foreground, 99.5), rel=1e-6)
    assert fingerprint["normalization"] == ["zscore"]                # MRI: per-case z-score
    assert fingerprint["labels"] == {"background": 0, "rectum": 1, "tumour": 2}


def test_fingerprint_per_channel_and_ct_normalisation(tmp_path):
    _synthetic_dataset(tmp_path, channel_names={"0": "T2", "1": "CT"})
    fingerprint = compute_fingerprint(load_dataset(tmp_path), progress=False)
    assert fingerprint["normalization"] == ["zscore", "ct"]
    one, two = (fingerprint["intensity_properties"][c] for c in ("0", "1"))
    assert two["mean"] == pytest.approx(2 * one["mean"], rel=1e-6)  # channel 1 was written as 2 x channel 0


# -- plans ------------------------------------------------------------------------------------------------------
def test_paper_plan_from_values():
    plans = make_plans_from_values(PAPER_SPACING, [16, 320, 320], base_channels=8)
    assert plans.strides == [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]   # paper Appendix A, Dataset A
    assert plans.patch_size == [16, 320, 320] and plans.batch_size == 2
    assert plans.architecture.base_channels == 8 and plans.architecture.num_classes == 3
    assert Plans.from_dict(json.loads(json.dumps(plans.to_dict()))) == plans


def test_patch_size_fits_small_median_images():
    assert fit_patch_size(PAPER_SPACING, [22, 400, 450]) == [16, 320, 320]
    # worked by hand: z 10 pools once (10 -> 5 < 8 stops); y 37, 38 and x 35, 36 are not divisible by the
    # strides plan_for_patch gives them, 40 is (40 -> 20 -> 10 -> 5, total 8)
    assert fit_patch_size(PAPER_SPACING, [10, 36.6, 34.2]) == [10, 40, 40]
    rng = np.random.default_rng(3)
    for _ in range(20):
        median = rng.uniform([3, 20, 20], [30, 500, 500])
        patch = fit_patch_size(PAPER_SPACING, median)
        _, strides = plan_for_patch(PAPER_SPACING, patch)
        stride = total_stride(strides)
        for p, m, d, s in zip(patch, median, (16, 320, 320), stride):
            assert p % s == 0 and p <= d and (p >= m or p == d)


def test_make_plans_from_fingerprint(tmp_path):
    _synthetic_dataset(tmp_path)
    dataset = load_dataset(tmp_path)
    fingerprint = compute_fingerprint(dataset, progress=False)
    plans = make_plans(fingerprint, dataset)
    assert plans.target_spacing == [4.0, 0.875, 0.875]
    assert plans.median_shape == [10, 28, 30]
    # y 28 pools twice (28 -> 14 -> 7, then 3.5 < 4 stops): divisible by 4; x 30 is not, 32 is
    assert plans.patch_size == [10, 28, 32]
    assert (plans.kernels, plans.strides) == tuple(plan_for_patch(plans.target_spacing, plans.patch_size))
    assert plans.labels == dataset.labels and plans.channel_names == {"0": "T2"}
    assert plans.intensity_properties == fingerprint["intensity_properties"]
    assert plans.dataset_name == "synthetic" and plans.num_training_cases == 3
    wider = make_plans(fingerprint, dataset, target_spacing=[2.0, 0.875, 0.875], base_channels=4)
    assert wider.target_spacing == [2.0, 0.875, 0.875] and wider.median_shape == [20, 28, 30]
    assert wider.architecture.base_channels == 4


def test_plan_command_from_values_and_errors(tmp_path, capsys):
    out = tmp_path / "plans.json"
    assert main(["plan", "--spacing", "4.0", "0.875", "0.875", "--patch", "16", "320", "320", "-o", str(out),
                 "--base-channels", "8", "--iso-block", "conv"]) == 0
    plans = Plans.load(out)
    assert plans.patch_size == [16, 320, 320] and plans.architecture.iso_block == "conv"
    assert plans == make_plans_from_values(PAPER_SPACING, [16, 320, 320], base_channels=8, iso_block="conv",
                                           slice_orientation="sagittal")   # without a dataset: this product's plane
    assert main(["plan", "-o", str(out)]) == 2
    assert "--spacing Z Y X" in capsys.readouterr().err
    assert main(["plan", "--spacing", "4.0", "0.875", "0.875", "--patch", "16", "300", "320", "-o", str(out)]) == 2
    assert "not divisible by the total pooling stride" in capsys.readouterr().err


# -- check -> plan -> preprocess -> restore ------------------------------------------------------------------
def _round_trip(dataset_dir, work, plan_args=()):
    """CLI check, plan and preprocess; returns (plans, {case_id: (original label, restored label)})."""
    assert main(["check", str(dataset_dir)]) == 0
    assert main(["plan", str(dataset_dir), "-o", str(work / "plans.json"), *plan_args]) == 0
    assert main(["preprocess", str(dataset_dir), "--plans", str(work / "plans.json"), "-o", str(work / "pre")]) == 0
    plans = Plans.load(work / "plans.json")
    dataset = load_dataset(dataset_dir)
    assert list_preprocessed_cases(work / "pre") == sorted(c.case_id for c in dataset.cases)
    results = {}
    for case in dataset.cases:
        original = read_image(case.label_path).array
        _, label, properties = load_preprocessed_case(work / "pre", case.case_id)
        restored = restore_to_original(_one_hot(np.asarray(label), plans.num_classes), properties).argmax(0)
        assert Geometry.from_dict(properties["original_geometry"]).matches(read_geometry(case.label_path))
        results[case.case_id] = (original, restored, properties)
    return plans, results


def test_synthetic_dataset_round_trip(tmp_path):
    written = _synthetic_dataset(tmp_path / "raw")
    plans, results = _round_trip(tmp_path / "raw", tmp_path)
    for (_, label, spacing, _), (case_id, (original, restored, properties)) in zip(written, sorted(results.items())):
        np.testing.assert_array_equal(original, label)
        if same_spacing(spacing, plans.target_spacing):
            assert properties["resampled"] is False
            np.testing.assert_array_equal(restored, original)
        else:
            assert properties["resampled"] is True
            # a 4 x 6 x 6 voxel box moved to 3/4 of its slices and back: coarse, but no class lost
            assert set(np.unique(restored)) == {0, 1, 2} and _dice(restored >= 1, original >= 1) > 0.7


@pytest.mark.parametrize("spacing", [(5.0, 2.5, 2.5), None])
def test_phantom_round_trip(tmp_path, spacing):
    """Small phantom: all cases at one spacing come back identical; with the phantom's random spacings each case
    comes back identical when it is at the median spacing, and otherwise with Dice >= 0.9 per class."""
    from RCSegNeXtCore.phantom import make_phantom_dataset
    raw = make_phantom_dataset(tmp_path / "raw", 3, seed=0, size="small", spacing=spacing, progress=False)
    plans, results = _round_trip(raw, tmp_path, ["--base-channels", "8"])
    exact = 0
    for case_id, (original, restored, properties) in results.items():
        if same_spacing(properties["spacing"], plans.target_spacing):
            assert properties["resampled"] is False
            np.testing.assert_array_equal(restored, original)
            exact += 1
        else:
            for value in np.unique(original)[1:]:
                assert _dice(restored == value, original == value) >= 0.9, (case_id, value)
    assert exact == (3 if spacing else 0)  # random spacings: the per-axis medians come from different cases


def _link(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)


def _sphere_label(geometry, centre_mm_offset=(0.0, 0.0, 0.0)):
    """Rectum-like ball (1) holding a tumour-like ball (2) at the volume centre, drawn on the image's grid."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    mm = [(a - n / 2) * s - o for a, n, s, o in zip((z, y, x), geometry.shape, geometry.spacing, centre_mm_offset)]
    r2 = mm[0] ** 2 + mm[1] ** 2 + mm[2] ** 2
    return np.where(r2 < 20.0 ** 2, np.where(r2 < 9.0 ** 2, 2, 1), 0).astype(np.uint8)


@pytest.mark.real_data
@pytest.mark.slow
def test_real_sagittal_dataset_round_trip(real_data, tmp_path):
    """ProstateX sagittal T2 (a DICOM series and two converted files) with drawn labels: the two cases at the
    median spacing come back identical, the one at 0.625 mm is resampled and comes back close."""
    prostatex = real_data / "prostatex"
    raw = tmp_path / "raw"
    sources = {"psx0000": prostatex / "ProstateX-0000" / "t2_tse_sag_dicom",
               "psx0001": prostatex / "ProstateX-0001" / "ProstateX-0001_t2_tse_sag.mha",
               "psx0218": prostatex / "ProstateX-0218" / "ProstateX-0218_t2_tse_sag.nii.gz"}
    for case_id, source in sources.items():
        suffix = "" if source.is_dir() else ("".join(source.suffixes[-2:]) if source.name.endswith(".gz")
                                             else source.suffix)
        _link(source, raw / "imagesTr" / f"{case_id}_0000{suffix}")
        geometry = read_geometry(source)
        write_image(_sphere_label(geometry), geometry, raw / "labelsTr" / f"{case_id}.nii.gz")
    write_dataset_json(raw, num_training=3)
    plans, results = _round_trip(raw, tmp_path, ["--base-channels", "8"])
    assert plans.target_spacing == pytest.approx([3.6, 0.5625, 0.5625], rel=1e-6)
    assert plans.slice_orientation == "sagittal"  # PIR series: the thick axis runs left-right
    for case_id in ("psx0000", "psx0001"):
        original, restored, properties = results[case_id]
        assert properties["resampled"] is False
        np.testing.assert_array_equal(restored, original)
    original, restored, properties = results["psx0218"]
    assert properties["resampled"] is True and properties["shape_after_resampling"][1] > 320
    for value in (1, 2):
        dice = _dice(restored == value, original == value)
        print(f"ProstateX-0218 class {value}: round-trip Dice via 0.5625 mm in-plane {dice:.4f}")
        assert dice > 0.9


@pytest.mark.real_data
@pytest.mark.parametrize("target", [None, pytest.param((3.0, 0.8, 0.8), marks=pytest.mark.slow),
                                    pytest.param((4.0, 0.875, 0.875), marks=pytest.mark.slow)])
def test_real_rectal_dataset_round_trip(real_data, tmp_path, target):
    """The real rectal T2 with its tumour mask: exact at its own spacing, Dice >= 0.9 through another spacing."""
    folder = real_data / "rectal_filitto"
    raw = tmp_path / "raw"
    _link(folder / "rectal_ca_ax_t2.nii.gz", raw / "imagesTr" / "rectal_0000.nii.gz")
    _link(folder / "rectal_ca_ax_t2_tumor.nii.gz", raw / "labelsTr" / "rectal.nii.gz")
    write_dataset_json(raw, labels={"background": 0, "tumour": 1}, num_training=1)
    spacing_args = [] if target is None else ["--spacing", *map(str, target)]
    plans, results = _round_trip(raw, tmp_path, ["--patch", "16", "64", "64", *spacing_args])
    assert plans.slice_orientation == "axial"  # an axial rectal series
    original, restored, properties = results["rectal"]
    dice = _dice(restored == 1, original == 1)
    print(f"rectal tumour round trip via spacing {plans.target_spacing}: preprocessed shape "
          f"{properties['shape_after_resampling']}, Dice {dice:.4f}")
    if target is None:
        assert properties["resampled"] is False
        np.testing.assert_array_equal(restored, original)
    else:
        assert properties["resampled"] is True and dice >= 0.9
