"""plans.json format 2: the official pipeline's choices as named plan fields (transpose_forward, target_spacing_rule,
resampling.image_interpolation / label_rule / restore), their effect on preprocessing and inference, and format 1
files keeping RCSegNeXt 0.1's behaviour (RCSegNeXtCore/plans.py, planning.py, data/resample.py, data/preprocess.py,
data/cache.py, inference/predictor.py). nnU-Net's own code is compared in benchmarks/parity/preprocessing.py and
inference.py; here its rules are checked on hand-made cases, against scipy where it computes them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from RCSegNeXtCore.data.cache import preprocess_dataset, preprocessing_signature
from RCSegNeXtCore.data.dataset import write_dataset_json
from RCSegNeXtCore.data.io import Geometry, Image, write_image
from RCSegNeXtCore.data.preprocess import preprocess_case, restore_to_original
from RCSegNeXtCore.data.resample import resample_image, resample_label, resample_probabilities
from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.planning import make_plans, make_plans_from_values, target_spacing, transpose_for
from RCSegNeXtCore.plans import (PLANS_FORMAT_VERSION, RESAMPLING_DEFAULTS, V1_RESAMPLING, Plans,
                                 resampling_settings)

DATA = Path(__file__).resolve().parent / "data"
V1_FILES = [DATA / "model_0.1.0" / "plans.json", DATA / "plans_0.1.0_deep_supervision.json"]
RNG = np.random.default_rng(3)
# spacings of the parity phantom set (benchmarks/parity/phantom_sets.py): median 7.25 mm, 10th percentile 6.05 mm
SLICES = [5.0, 6.5, 7.0, 7.0, 7.5, 8.0, 9.0, 10.0]


def _zoom(array, shape, order):
    return ndi.zoom(array, [n / o for n, o in zip(shape, array.shape)], order=order, mode="nearest", grid_mode=True)


def _case(shape=(10, 30, 28), spacing=(6.5, 2.0, 2.0)):
    """A noisy image with a zero border and a two-class blob, on a rotated grid."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = RNG.normal(300.0, 60.0, shape).astype(np.float32)
    image[:, :3] = 0
    label = np.zeros(shape, np.uint8)
    r = ((z - shape[0] / 2) * spacing[0]) ** 2 + ((y - 15) * spacing[1]) ** 2 + ((x - 14) * spacing[2]) ** 2
    label[r < 16.0 ** 2] = 1
    label[r < 8.0 ** 2] = 2
    image[label > 0] += 150.0
    return Image(image[None], Geometry(shape, spacing, (5.0, -3.0, 1.0), (1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0))), label


def _thick_last(image: Image, label: np.ndarray):
    """The same case stored with the array axes (y, x, z) (benchmarks/parity/phantom_sets.permuted)."""
    axes = (1, 2, 0)
    g = image.geometry
    geometry = Geometry(tuple(g.shape[a] for a in axes), tuple(g.spacing[a] for a in axes), g.origin, g.direction)
    return Image(np.ascontiguousarray(image.array[0].transpose(axes))[None], geometry), \
        np.ascontiguousarray(label.transpose(axes))


# -- the format ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.name)
def test_format_1_files_get_the_values_0_1_used_and_keep_them_when_saved(path, tmp_path):
    assert json.loads(path.read_text())["format_version"] == 1
    plans = Plans.load(path)
    assert plans.transpose_forward == [0, 1, 2] and plans.transpose_backward == [0, 1, 2]
    assert plans.target_spacing_rule == "median"
    assert plans.resampling == V1_RESAMPLING
    assert plans.resampling["restore"] == "probabilities" and plans.resampling["restore_order_thick_axis"] == 1
    assert plans.resampling["image_interpolation"] == "bicubic" and plans.resampling["label_rule"] == "keep_classes"
    saved = json.loads(plans.save(tmp_path / "plans.json").read_text())
    assert saved["format_version"] == PLANS_FORMAT_VERSION == 2
    assert "probability_order_thick_axis" not in saved["resampling"]
    assert Plans.load(tmp_path / "plans.json") == plans                 # the same behaviour, now explicit


def test_new_plans_get_the_official_values():
    plans = make_plans_from_values([4.0, 0.875, 0.875], [16, 320, 320])
    assert plans.resampling == RESAMPLING_DEFAULTS
    assert (plans.resampling["restore"], plans.resampling["restore_order_thick_axis"]) == ("logits", 0)
    assert (plans.resampling["image_interpolation"], plans.resampling["label_rule"]) == ("bspline", "nnunet")
    assert plans.transpose_forward == [0, 1, 2] and plans.target_spacing_rule == "given"
    data = plans.to_dict()
    assert data["format_version"] == 2 and data["transpose_forward"] == [0, 1, 2]
    partial = {**data, "resampling": {"restore": "probabilities"}}      # a format 2 file: missing keys default
    assert Plans.from_dict(partial).resampling == {**RESAMPLING_DEFAULTS, "restore": "probabilities"}


@pytest.mark.parametrize("change, message", [
    ({"transpose_forward": [0, 0, 1]}, "transpose_forward"),
    ({"target_spacing_rule": "mean"}, "target_spacing_rule"),
    ({"resampling": {"restore": "labels"}}, "restore"),
    ({"resampling": {"image_interpolation": "lanczos"}}, "image_interpolation"),
    ({"resampling": {"probability_order_thick_axis": 1}}, "unknown resampling"),
])
def test_invalid_format_2_fields_are_refused(change, message):
    data = {**make_plans_from_values([4.0, 0.875, 0.875], [16, 320, 320]).to_dict(), **change}
    with pytest.raises(PlanError, match=message):
        Plans.from_dict(data)


def test_resampling_settings_of_a_0_1_cache_entry():
    """A case preprocessed by 0.1 stored the plan's resampling object of then in its properties."""
    old = {"image_order": 3, "image_order_thick_axis": 0, "label_order": 1, "label_order_thick_axis": 0,
           "probability_order_thick_axis": 1, "anisotropy_threshold": 3.0}
    assert resampling_settings(old) == V1_RESAMPLING
    assert resampling_settings({**old, "probability_order_thick_axis": 0})["restore_order_thick_axis"] == 0
    assert resampling_settings(RESAMPLING_DEFAULTS) == RESAMPLING_DEFAULTS


# -- row 10: target spacing -----------------------------------------------------------------------------------
def test_target_spacing_rule_takes_the_10th_percentile_on_a_thick_axis_with_few_voxels():
    spacings = [[s, 2.0, 2.0] for s in SLICES]
    shapes = [[16, 112, 112]] * len(SLICES)
    assert target_spacing(spacings, shapes, "median") == [7.25, 2.0, 2.0]
    assert target_spacing(spacings, shapes, "nnunet") == pytest.approx([6.05, 2.0, 2.0])  # np.percentile(.., 10)
    # as many voxels along the thick axis as a third of the others: nnU-Net keeps the median
    assert target_spacing(spacings, [[40, 112, 112]] * 8, "nnunet") == [7.25, 2.0, 2.0]
    # spacing less than 3x anisotropic: the median
    assert target_spacing([[s / 2, 2.0, 2.0] for s in SLICES], shapes, "nnunet") == [3.625, 2.0, 2.0]
    # the 10th percentile below the other axes' spacing: theirs + 1e-5
    mixed = [[1.0, 2.0, 2.0]] * 2 + [[7.0, 2.0, 2.0]] * 6
    assert target_spacing(mixed, [[16, 112, 112]] * 8, "nnunet") == pytest.approx([2.0 + 1e-5, 2.0, 2.0], abs=1e-9)
    # any axis may be the thick one
    assert target_spacing([s[::-1] for s in spacings], shapes, "nnunet") == [2.0, 2.0, 7.25] and \
        target_spacing([s[::-1] for s in spacings], [s[::-1] for s in shapes], "nnunet") == pytest.approx(
            [2.0, 2.0, 6.05])


# -- row 9: transpose ---------------------------------------------------------------------------------------------
def test_transpose_puts_the_coarsest_axis_first():
    assert transpose_for([4.0, 0.875, 0.875]) == [0, 1, 2]
    assert transpose_for([0.875, 0.875, 4.0]) == [2, 0, 1]
    assert transpose_for([0.8, 3.0, 0.8]) == [1, 0, 2]
    assert transpose_for([1.0, 1.0, 1.0]) == [0, 1, 2]                  # ties: the first


def _fingerprint_of(cases):
    spacings = [list(image.geometry.spacing) for image, _ in cases]
    shapes = [list(image.geometry.shape) for image, _ in cases]
    return {"cases": [{"case_id": f"c{i}", "spacing": sp, "shape_after_crop": sh}
                      for i, (sp, sh) in enumerate(zip(spacings, shapes))],
            "median_spacing": np.median(spacings, 0).tolist(), "median_shape_after_crop": np.median(shapes, 0).tolist(),
            "labels": {"background": 0, "rectum": 1, "tumour": 2}, "channel_names": {"0": "T2"},
            "normalization": ["zscore"], "intensity_properties": None, "num_cases": len(cases)}


def test_make_plans_transposes_a_dataset_stored_thick_axis_last():
    cases = [_case((8, 30, 28), (s, 2.0, 2.0)) for s in SLICES[:5]]
    plans = make_plans(_fingerprint_of(cases))
    stored = make_plans(_fingerprint_of([_thick_last(*c) for c in cases]))
    assert plans.transpose_forward == [0, 1, 2] and stored.transpose_forward == [2, 0, 1]
    assert stored.transpose_backward == [1, 2, 0]
    for name in ("target_spacing", "median_spacing", "median_shape", "patch_size", "kernels", "strides"):
        assert getattr(stored, name) == getattr(plans, name), name
    assert plans.target_spacing_rule == "nnunet" and plans.target_spacing == pytest.approx([5.0 + 0.4 * 1.5, 2, 2])
    median = make_plans(_fingerprint_of(cases), target_spacing_rule="median")
    assert median.target_spacing == [7.0, 2.0, 2.0] and median.target_spacing_rule == "median"
    assert make_plans(_fingerprint_of(cases), target_spacing=[6.0, 2.0, 2.0]).target_spacing_rule == "given"
    assert make_plans(_fingerprint_of([_thick_last(*c) for c in cases]),
                      transpose_forward=[0, 1, 2]).target_spacing[2] == pytest.approx(5.6)


def test_a_case_stored_thick_axis_last_preprocesses_to_the_same_arrays_and_restores_in_its_own_order():
    image, label = _case()
    plans = make_plans_from_values([6.0, 1.8, 1.8], [8, 16, 16])
    stored_plans = make_plans_from_values([6.0, 1.8, 1.8], [8, 16, 16], transpose_forward=[2, 0, 1])
    case = preprocess_case(image, plans, label)
    stored_image, stored_label = _thick_last(image, label)
    stored = preprocess_case(stored_image, stored_plans, stored_label)
    np.testing.assert_array_equal(stored.data, case.data)
    np.testing.assert_array_equal(stored.label, case.label)
    assert stored.properties["transpose_forward"] == [2, 0, 1]
    assert stored.properties["spacing"] == list(image.geometry.spacing)  # on the transposed grid
    logits = torch.randn(3, *case.data.shape[1:])
    back = restore_to_original(logits, case.properties, logits=True)
    stored_back = restore_to_original(logits, stored.properties, logits=True)
    assert stored_back.shape == (3, *stored_image.geometry.shape)
    np.testing.assert_array_equal(stored_back, back.transpose(0, 2, 3, 1))
    # at the target spacing the round trip is exact in either storage order
    exact = make_plans_from_values(list(stored_image.geometry.spacing)[::-1][1:] + [6.5], [8, 16, 16],
                                   transpose_forward=[2, 0, 1])
    exact = exact.with_overrides(target_spacing=[6.5, 2.0, 2.0])
    pre = preprocess_case(stored_image, exact, stored_label)
    one_hot = np.eye(3, dtype=np.float32)[pre.label.astype(int)].transpose(3, 0, 1, 2)
    np.testing.assert_array_equal(restore_to_original(one_hot, pre.properties).argmax(0), stored_label)


# -- resampling: image interpolation and label rule ---------------------------------------------------------------
@pytest.mark.parametrize("shape, spacing, target", [
    ((6, 20, 17), (6.5, 2.0, 2.1), (6.0, 1.8, 1.9)),      # thick axis apart: 2D per slice, nearest along it
    ((9, 14, 11), (1.0, 1.2, 0.9), (1.1, 1.0, 1.0)),      # isotropic: one 3D resize
])
def test_bspline_images_are_skimages_resize_as_nnunet_calls_it(shape, spacing, target):
    """skimage.transform.resize(order=3, mode="edge", anti_aliasing=False) = scipy zoom (grid_mode, mode "nearest")
    clipped to the input's range; with a thick axis per slice, then nearest along it (nnU-Net's order_z 0)."""
    from RCSegNeXtCore.data.resample import new_shape_for_spacing
    a = (RNG.random(shape) * 100).astype(np.float32)
    new_shape = new_shape_for_spacing(shape, spacing, target)
    got = resample_image(a[None], new_shape, spacing, target, 3, 0, 3.0, "bspline")[0]
    if max(spacing) / min(spacing) > 3:
        planes = np.stack([np.clip(_zoom(p.astype(np.float64), new_shape[1:], 3), p.min(), p.max()) for p in a])
        expected = _zoom(planes, new_shape, 0)
    else:
        expected = np.clip(_zoom(a.astype(np.float64), new_shape, 3), a.min(), a.max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    old = resample_image(a[None], new_shape, spacing, target, 3, 0, 3.0, "bicubic")[0]
    assert np.abs(old - expected).max() > 0.1                          # 0.1's cubic convolution is another kernel


def test_label_rule_nnunet_breaks_exact_ties_by_the_nearest_neighbour():
    """8 -> 4 voxels puts each sample exactly between two: [0, 1 | 1, 0 | 0, 1 | 1, 1] ties three times."""
    label = np.array([0, 1, 1, 0, 0, 1, 1, 1], np.uint8)[None, None]
    nnunet = resample_label(label, (1, 1, 4), (1, 1, 1), (1, 1, 2), rule="nnunet")
    old = resample_label(label, (1, 1, 4), (1, 1, 1), (1, 1, 2), rule="keep_classes")
    assert nnunet.tolist() == [[[1, 0, 1, 1]]]  # nearest neighbours of samples 0.5, 2.5, 4.5: voxels 1, 3, 5
    assert old.tolist() == [[[0, 0, 0, 1]]]     # ties to the lower label
    tiny = np.zeros((1, 1, 8), np.uint8)
    tiny[..., 3] = 2                           # a class thinner than a voxel of the new grid
    assert 2 not in resample_label(tiny, (1, 1, 2), (1, 1, 1), (1, 1, 4), rule="nnunet")
    assert 2 in resample_label(tiny, (1, 1, 2), (1, 1, 1), (1, 1, 4), rule="keep_classes")


# -- row 8: back to the original grid ----------------------------------------------------------------------------
def test_logits_are_restored_nearest_along_the_thick_axis_then_softmaxed():
    image, label = _case((10, 30, 28), (6.5, 2.0, 2.0))
    plans = make_plans_from_values([4.0, 1.8, 1.8], [8, 16, 16])
    case = preprocess_case(image, plans, label)
    logits = torch.randn(3, *case.data.shape[1:], dtype=torch.float64)
    props = case.properties
    crop = [int(n) for n in props["shape_after_crop"]]
    got = restore_to_original(logits, props, logits=True)
    inplane = resample_probabilities(logits, [logits.shape[1], *crop[1:]], props["spacing"], props["target_spacing"],
                                     1, 0)
    nearest = np.clip(np.floor((np.arange(crop[0]) + 0.5) * logits.shape[1] / crop[0]), 0, logits.shape[1] - 1)
    expected = torch.softmax(torch.from_numpy(inplane[:, nearest.astype(int)]).float(), 0).numpy()
    (z0, z1), (y0, y1), (x0, x1) = props["crop_bbox"]
    np.testing.assert_allclose(got[:, z0:z1, y0:y1, x0:x1], expected, atol=1e-6)
    assert (got[0, :, :y0] == 1).all()                                 # outside the crop: background
    # 0.1 (probabilities, linear along the thick axis) gives in-between slices
    old = restore_to_original(torch.softmax(logits.float(), 0), {**props, "resampling": V1_RESAMPLING})
    assert np.abs(old - got).max() > 0.05


def _model(tmp_path, plans: Plans):
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    return init_model_folder(plans.with_overrides(base_channels=4), tmp_path / "model", seed=1)


@pytest.mark.parametrize("restore", ["logits", "probabilities"])
def test_predictor_restores_as_the_plan_says(tmp_path, restore):
    from RCSegNeXtCore.inference.predictor import Predictor
    from RCSegNeXtCore.inference.sliding_window import predict_sliding_window
    plans = make_plans_from_values([5.0, 2.0, 2.0], [8, 32, 32])      # 2 tiles; 6.5 -> 5 mm along the thick axis
    plans = plans.with_overrides(resampling={**plans.resampling, "restore": restore,
                                             "restore_order_thick_axis": 0 if restore == "logits" else 1})
    predictor = Predictor(_model(tmp_path, plans), device="cpu", backend="torch")  # compared with its networks
    image, _ = _case((10, 30, 28), (6.5, 2.0, 2.0))
    prediction = predictor.predict(image, keep_probabilities=True)
    case = preprocess_case(image, predictor.plans)
    values, _ = predict_sliding_window(predictor.networks, torch.from_numpy(case.data), plans.patch_size, 3,
                                       total_stride=predictor.total_stride, logits=restore == "logits")
    expected = restore_to_original(values, case.properties, logits=restore == "logits")
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(prediction.labels, expected.argmax(0))


def test_a_model_stored_thick_axis_last_is_not_warned_about_its_own_data(tmp_path):
    from RCSegNeXtCore.inference.predictor import input_warnings
    from RCSegNeXtCore.inference.model_folder import ModelFolder
    plans = make_plans_from_values([6.5, 2.0, 2.0], [8, 16, 16], transpose_forward=[2, 0, 1],
                                   median_spacing=[6.5, 2.0, 2.0])
    model = ModelFolder(_model(tmp_path, plans))
    stored, _ = _thick_last(*_case())
    assert input_warnings(stored.geometry, model) == []
    image, _ = _case()                                                  # the thick axis where the model has none
    assert any("spacing" in w for w in input_warnings(image.geometry, model))


# -- the cache ------------------------------------------------------------------------------------------------------
def test_cache_ignores_restore_settings_and_refuses_another_transpose(tmp_path):
    image, label = _case()
    raw = tmp_path / "raw"
    write_image(image.array[0], image.geometry, raw / "imagesTr" / "c0_0000.nii.gz")
    write_image(label, image.geometry, raw / "labelsTr" / "c0.nii.gz")
    write_dataset_json(raw, num_training=1, name="t")
    plans = make_plans_from_values([6.5, 2.0, 2.0], [8, 16, 16])
    preprocess_dataset(raw, plans, tmp_path / "pre", progress=False)
    other_restore = plans.with_overrides(resampling={**plans.resampling, "restore": "probabilities"})
    assert preprocessing_signature(other_restore) == preprocessing_signature(plans)
    preprocess_dataset(raw, other_restore, tmp_path / "pre", progress=False)           # reused, not refused
    with pytest.raises(PlanError, match="transpose_forward"):
        preprocess_dataset(raw, plans.with_overrides(transpose_forward=[1, 0, 2]), tmp_path / "pre", progress=False)
    with pytest.raises(PlanError, match="image_interpolation"):
        preprocess_dataset(raw, plans.with_overrides(resampling=dict(V1_RESAMPLING)), tmp_path / "pre",
                           progress=False)


def test_plan_command_switches_each_choice(tmp_path):
    from RCSegNeXtCore.cli import main
    out = tmp_path / "plans.json"
    assert main(["plan", "--spacing", "4", "1", "1", "--patch", "16", "64", "64", "-o", str(out), "--resampling",
                 "restore=probabilities", "restore_order_thick_axis=1", "image_interpolation=bicubic"]) == 0
    plans = Plans.load(out)
    assert plans.resampling == {**RESAMPLING_DEFAULTS, "restore": "probabilities", "restore_order_thick_axis": 1,
                                "image_interpolation": "bicubic"}
    assert main(["plan", "--spacing", "4", "1", "1", "-o", str(out), "--resampling", "restore=labels"]) == 2
    assert main(["plan", "--spacing", "4", "1", "1", "-o", str(out), "--resampling", "no_such=1"]) == 2
