"""Resampling, preprocess_case / restore_to_original and the on-disk cache (RCSegNeXtCore/data/preprocess.py,
resample.py, cache.py), checked against scipy.ndimage and hand-computed values, and on a real rectal MRI."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from RCSegNeXtCore.data.cache import list_preprocessed_cases, load_preprocessed_case, preprocess_dataset
from RCSegNeXtCore.data.dataset import write_dataset_json
from RCSegNeXtCore.data.io import Geometry, Image, write_image
from RCSegNeXtCore.planning import make_plans_from_values
from RCSegNeXtCore.data.preprocess import nonzero_bbox, normalize, preprocess_case, restore_to_original
from RCSegNeXtCore.data.resample import resample_array, resample_label, thick_axis
from RCSegNeXtCore.errors import DatasetError, PlanError

RNG = np.random.default_rng(0)


def _zoom(array, shape, order):
    """scipy reference on the same voxel-centre-aligned grid (grid_mode=True), edges replicated."""
    return ndi.zoom(array, [n / o for n, o in zip(shape, array.shape)], order=order, mode="nearest", grid_mode=True)


def _one_hot(label, num_classes):
    return np.eye(num_classes, dtype=np.float32)[label.astype(int)].transpose(3, 0, 1, 2)


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _plans(spacing, **kw):
    return make_plans_from_values(spacing, (8, 16, 16), **kw)


def _ball_case(shape=(12, 40, 36), spacing=(4.0, 0.875, 0.875)):
    """Image with a zero border (cropped away), a rectum-like ball (1) holding a smaller tumour (2)."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = RNG.normal(200.0, 30.0, shape).astype(np.float32)
    image[:, :4] = 0
    image[:, :, -3:] = 0
    label = np.zeros(shape, np.uint8)
    r = ((z - 6) * spacing[0]) ** 2 + ((y - 20) * spacing[1]) ** 2 + ((x - 16) * spacing[2]) ** 2
    label[r < 12.0 ** 2] = 1
    label[r < 6.0 ** 2] = 2
    geometry = Geometry(shape, spacing, (10.0, -20.0, 5.0), (1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0))
    return Image(image[None], geometry), label


# -- resampling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(9, 31, 12), (3, 10, 40)])
def test_linear_resampling_matches_scipy(shape):
    a = RNG.random((6, 20, 17)).astype(np.float32)
    got = resample_array(a[None], shape, None, 1, 1)[0]
    np.testing.assert_allclose(got, _zoom(a, shape, 1), atol=1e-5)
    # anisotropic: linear in-plane, nearest along the thick z axis (nnU-Net's separate-z scheme)
    got = resample_array(a[None], shape, 0, 1, 0)[0]
    ref = _zoom(_zoom(a, (6, *shape[1:]), 1), shape, 0)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_cubic_resampling_keeps_constants_and_follows_smooth_images():
    constant = np.full((5, 12, 14), 7.5, np.float32)
    got = resample_array(constant[None], (5, 30, 9), 0, 3, 0)[0]
    np.testing.assert_allclose(got, 7.5, atol=1e-5)
    y, x = np.meshgrid(np.linspace(0, np.pi, 24), np.linspace(0, np.pi, 20), indexing="ij")
    smooth = np.repeat((np.sin(y) * np.cos(x))[None], 4, 0).astype(np.float32)
    got = resample_array(smooth[None], (4, 48, 40), 0, 3, 0)[0]
    ref = _zoom(smooth, (4, 48, 40), 3)
    assert np.abs(got - ref)[:, 2:-2, 2:-2].max() < 0.01   # cubic convolution vs cubic B-spline
    assert np.abs(got - _zoom(smooth, (4, 48, 40), 1)).max() > 1e-3  # and really is not linear


def test_thick_axis_follows_nnunet_rule():
    assert thick_axis([4.0, 0.875, 0.875], [4.0, 0.875, 0.875], 3.0) == 0
    assert thick_axis([0.56, 3.6, 0.56], [1, 1, 1], 3.0) == 1          # any axis may be the thick one
    assert thick_axis([1.0, 1.0, 1.0], [1.0, 1.0, 4.0], 3.0) == 2      # else the target's thick axis
    assert thick_axis([2.0, 1.0, 1.0], [2.0, 1.0, 1.0], 3.0) is None
    assert thick_axis([4.0, 4.0, 1.0], [4.0, 4.0, 1.0], 3.0) is None   # two thick axes: no separate step


def test_label_resampling_matches_one_hot_reference_and_keeps_classes():
    label = np.zeros((6, 24, 24), np.uint8)
    label[1:5, 4:18, 5:20] = 2
    label[2:4, 8:12, 8:13] = 3
    label[5, 22, 22] = 4                               # a single voxel: would vanish when downsampled
    shape = (6, 11, 13)
    got = resample_label(label, shape, (1.0, 1.0, 1.0), (1.0, 2.2, 1.9), order=1, order_thick_axis=1)
    assert set(np.unique(got)) == {0, 2, 3, 4}        # class 1 (absent) not invented, 4 not lost
    weights = np.stack([_zoom((label == v).astype(np.float32), shape, 1) for v in range(5)])
    ref = weights.argmax(0)
    top2 = np.sort(weights, 0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4                # where the reference has no tie
    rescued = got == 4
    assert rescued.sum() == 1 and ref[rescued][0] != 4        # the one voxel where class 4 was put back
    np.testing.assert_array_equal(got[clear & ~rescued], ref[clear & ~rescued])
    assert got.dtype == np.uint8


# -- one case -------------------------------------------------------------------------------------------------
def test_nonzero_bbox_by_hand():
    data = np.zeros((2, 5, 6, 7), np.float32)
    data[0, 1, 2, 3] = 1
    data[1, 3, 4, 1] = -2
    assert nonzero_bbox(data) == [[1, 4], [2, 5], [1, 4]]
    assert nonzero_bbox(np.zeros((1, 2, 3, 4))) == [[0, 2], [0, 3], [0, 4]]


def test_normalisation_schemes_by_hand():
    data = np.array([[[[0.0, 10.0], [20.0, 30.0]]], [[[-50.0, 0.0], [50.0, 100.0]]]], np.float32)  # (2, 1, 2, 2)
    stats = {"1": {"mean": 10.0, "std": 20.0, "percentile_00_5": -20.0, "percentile_99_5": 60.0}}
    out = normalize(data, ["zscore", "ct"], stats)
    np.testing.assert_allclose(out[0].ravel(), (np.array([0, 10, 20, 30]) - 15.0) / np.sqrt(125.0), rtol=1e-6)
    np.testing.assert_allclose(out[1].ravel(), [-1.5, -0.5, 2.0, 2.5], rtol=1e-6)   # clipped to [-20, 60]
    np.testing.assert_array_equal(normalize(data, ["none", "none"]), data)
    with pytest.raises(PlanError, match="1 normalisation scheme"):
        normalize(data, ["zscore"])
    with pytest.raises(PlanError, match="no intensity statistics"):
        normalize(data, ["zscore", "ct"], {})


def test_case_at_target_spacing_crops_normalises_and_restores_exactly():
    image, label = _ball_case()
    plans = _plans(image.geometry.spacing)
    case = preprocess_case(image, plans, label)
    assert case.properties["crop_bbox"] == [[0, 12], [4, 40], [0, 33]]
    crop = image.array[0, :, 4:, :33]
    expected = (crop - crop.mean()) / crop.std()
    np.testing.assert_allclose(case.data[0], expected, rtol=1e-4, atol=1e-4)
    assert case.data.dtype == np.float32 and case.label.dtype == np.int8
    np.testing.assert_array_equal(case.label, label[:, 4:, :33])
    properties = json.loads(json.dumps(case.properties))          # JSON-able
    assert properties["resampled"] is False
    assert Geometry.from_dict(properties["original_geometry"]) == image.geometry
    for value in ("1", "2"):
        where = np.array(properties["class_locations"][value])
        assert len(where) == min(10_000, int((case.label == int(value)).sum()))
        assert (case.label[tuple(where.T)] == int(value)).all()
    restored = restore_to_original(_one_hot(case.label, 3), properties)
    assert restored.shape == (3, *image.geometry.shape) and restored.dtype == np.float32
    np.testing.assert_array_equal(restored.argmax(0), label)
    np.testing.assert_array_equal(restored[:, :, :4], np.eye(3)[0][:, None, None, None] * np.ones((1, 12, 4, 36)))


def test_case_is_resampled_to_target_spacing_and_restored():
    image, label = _ball_case()
    plans = _plans((2.0, 1.5, 1.2))
    case = preprocess_case(image, plans, label)
    shape = [round(12 * 4.0 / 2.0), round(36 * 0.875 / 1.5), round(33 * 0.875 / 1.2)]
    assert case.properties["shape_after_resampling"] == shape == list(case.data.shape[1:])
    assert case.properties["shape_after_crop"] == [12, 36, 33]
    assert set(np.unique(case.label)) == {0, 1, 2}
    back = restore_to_original(torch.from_numpy(_one_hot(case.label, 3)), case.properties).argmax(0)
    assert _dice(back == 2, label == 2) > 0.85 and _dice(back >= 1, label >= 1) > 0.9


def test_bad_inputs_are_refused_with_both_values():
    image, label = _ball_case()
    plans = _plans(image.geometry.spacing)
    with pytest.raises(DatasetError, match=r"label shape .*\(12, 40, 35\).*\(12, 40, 36\)"):
        preprocess_case(image, plans, label[..., :35])
    bad = label.copy()
    bad[0, 0, 0] = 5
    with pytest.raises(DatasetError, match=r"label values \[5\]"):
        preprocess_case(image, plans, bad)
    with pytest.raises(DatasetError, match="2 channel.*expects 1"):
        preprocess_case(Image(np.concatenate([image.array] * 2), image.geometry), plans)
    nan = image.array.copy()
    nan[0, 5, 5, 5] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        preprocess_case(Image(nan, image.geometry), plans)
    case = preprocess_case(image, plans, label)
    with pytest.raises(ValueError, match="preprocessed to"):
        restore_to_original(np.zeros((3, 2, 2, 2), np.float32), case.properties)


# -- on-disk cache ---------------------------------------------------------------------------------------------
def _write_dataset(root, num_cases=3):
    for i in range(num_cases):
        image, label = _ball_case(shape=(10 + i, 40, 36))
        write_image(image.array[0], image.geometry, root / "imagesTr" / f"case{i}_0000.nii.gz")
        write_image(label, image.geometry, root / "labelsTr" / f"case{i}.nii.gz")
    write_dataset_json(root, num_training=num_cases)
    return root


def test_cache_writes_loads_resumes_and_refuses_a_changed_plan(tmp_path):
    root = _write_dataset(tmp_path / "raw")
    out = tmp_path / "pre"
    plans = _plans((4.0, 0.875, 0.875))
    assert preprocess_dataset(root, plans, out, progress=False) == ["case0", "case1", "case2"]
    assert list_preprocessed_cases(out) == ["case0", "case1", "case2"]
    data, label, properties = load_preprocessed_case(out, "case1")
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and label.dtype == np.int8
    assert data.shape[1:] == label.shape == tuple(properties["shape_after_resampling"])
    image, reference = _ball_case(shape=(11, 40, 36))
    np.testing.assert_array_equal(restore_to_original(_one_hot(np.asarray(label), 3), properties).argmax(0),
                                  reference)
    # resumable: a half-written case (no .json yet) is redone, done cases are left alone
    (out / "case2.json").unlink()
    (out / "case2.npy").write_bytes(b"truncated")
    stamp = os.stat(out / "case0.npy").st_mtime_ns
    assert list_preprocessed_cases(out) == ["case0", "case1"]
    preprocess_dataset(root, plans, out, progress=False)
    assert os.stat(out / "case0.npy").st_mtime_ns == stamp
    assert load_preprocessed_case(out, "case2", mmap=False)[0].shape[0] == 1
    # a replaced label file makes its case (only) out of date
    image, label = _ball_case(shape=(11, 40, 36))
    write_image(np.where(label == 2, 0, label).astype(np.uint8), image.geometry, root / "labelsTr" / "case1.nii.gz")
    preprocess_dataset(root, plans, out, progress=False)
    assert os.stat(out / "case0.npy").st_mtime_ns == stamp
    assert load_preprocessed_case(out, "case1")[2]["classes_present"] == [0, 1]
    # a different preprocessing plan is refused, a different width is not
    preprocess_dataset(root, plans.with_overrides(base_channels=8), out, progress=False)
    with pytest.raises(PlanError, match=r"different plan \(target_spacing: \[4.0, 0.875, 0.875\] \(cached\) vs "
                                        r"\[3.0, 0.875, 0.875\]"):
        preprocess_dataset(root, _plans((3.0, 0.875, 0.875)), out, progress=False)
    preprocess_dataset(root, _plans((3.0, 0.875, 0.875)), out, overwrite=True, progress=False)
    assert load_preprocessed_case(out, "case0")[2]["target_spacing"] == [3.0, 0.875, 0.875]
    with pytest.raises(DatasetError, match="'case9' is not preprocessed"):
        load_preprocessed_case(out, "case9")


@pytest.mark.slow
def test_cache_in_parallel_gives_the_same_arrays(tmp_path):
    root = _write_dataset(tmp_path / "raw", num_cases=2)
    plans = _plans((3.0, 1.0, 1.0))
    preprocess_dataset(root, plans, tmp_path / "serial", workers=1, progress=False)
    preprocess_dataset(root, plans, tmp_path / "parallel", workers=2, progress=False)
    for case_id in ("case0", "case1"):
        a, b = load_preprocessed_case(tmp_path / "serial", case_id), load_preprocessed_case(tmp_path / "parallel",
                                                                                             case_id)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
