"""Dice / HD95 / volumes (RCSegNeXtCore.evaluation.metrics) and folder evaluation, checked against hand-computed
cases, an independent scipy implementation and MONAI."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import require_module
from scipy import ndimage

from RCSegNeXtCore.cli import main
from RCSegNeXtCore.data.io import Geometry, read_image, write_image
from RCSegNeXtCore.evaluation import EvaluationError
from RCSegNeXtCore.evaluation.evaluate import (evaluate_folders, labels_from_dataset_json, load_metrics,
                                               parse_labels, write_metrics)
from RCSegNeXtCore.evaluation.metrics import case_metrics, dice, hd95, summarize, volume_ml

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice

LABELS = {"background": 0, "rectum": 1, "tumour": 2}
ANISO = (4.0, 0.875, 0.6)  # (z, y, x) mm, like the paper's target spacing (Sec. 3.1)


def blobs(seed: int, shape=(10, 36, 40), sigma=2.0, level=0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


def scipy_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Independent reference: scipy erosion (border = background) + EDT on the full grid, max of directed p95."""
    edge_a = a ^ ndimage.binary_erosion(a, border_value=0)
    edge_b = b ^ ndimage.binary_erosion(b, border_value=0)
    d_ab = ndimage.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]
    d_ba = ndimage.distance_transform_edt(~edge_a, sampling=spacing)[edge_b]
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


# ---- hand-computed ------------------------------------------------------------------------------------------------
def test_dice_two_cubes_with_known_overlap():
    a = np.zeros((8, 8, 8), np.uint8)
    b = np.zeros_like(a)
    a[0:4, 0:4, 0:4] = 1  # 64 voxels
    b[2:6, 0:4, 0:4] = 1  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    c = np.zeros_like(a)
    c[5:8, 5:8, 5:8] = 1
    assert dice(a, c) == 0.0


def test_empty_mask_conventions():
    empty, full = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    full[1:3, 1:3, 1:3] = True
    assert math.isnan(dice(empty, empty)) and math.isnan(hd95(empty, empty, ANISO))
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert hd95(full, empty, ANISO) == math.inf and hd95(empty, full, ANISO) == math.inf


def test_hd95_single_voxels_on_anisotropic_spacing():
    a, b = np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool)
    a[0, 0, 0] = True
    b[2, 3, 1] = True
    spacing = (4.0, 0.5, 2.0)
    assert hd95(a, b, spacing) == pytest.approx(math.sqrt((2 * 4.0) ** 2 + (3 * 0.5) ** 2 + (1 * 2.0) ** 2))


def test_hd95_parallel_planes_is_their_physical_gap():
    a, b = np.zeros((6, 10, 12), bool), np.zeros((6, 10, 12), bool)
    a[1], b[4] = True, True
    assert hd95(a, b, (3.5, 0.8, 0.8)) == pytest.approx(3 * 3.5)
    assert hd95(a, b, (1.0, 0.8, 0.8)) == pytest.approx(3.0)


def test_hd95_is_the_95th_percentile_not_the_maximum():
    # 100 coincident plane voxels + one outlier 5 slices away: 101 distances, 100 of them 0 -> p95 = 0, max = 20 mm.
    a, b = np.zeros((8, 10, 10), bool), np.zeros((8, 10, 10), bool)
    a[0], b[0] = True, True
    b[5, 4, 4] = True
    assert hd95(a, b, (4.0, 1.0, 1.0)) == pytest.approx(0.0)
    assert hd95(a, b, (4.0, 1.0, 1.0), percentile=100) == pytest.approx(20.0)


def test_volume_ml():
    mask = np.zeros((3, 4, 5), np.uint8)
    mask.flat[:10] = 1
    assert volume_ml(mask, ANISO) == pytest.approx(10 * 4.0 * 0.875 * 0.6 / 1000)
    with pytest.raises(EvaluationError, match="spacing"):
        volume_ml(mask, (1.0, 0.0, 1.0))


def test_shape_mismatch_is_an_error():
    with pytest.raises(EvaluationError, match=r"\(3, 4, 5\).*\(3, 4, 6\)"):
        dice(np.zeros((3, 4, 5)), np.zeros((3, 4, 6)))


# ---- independent implementations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_scipy_reference(seed):
    a, b = blobs(seed), blobs(seed + 10)
    assert hd95(a, b, ANISO) == pytest.approx(scipy_hd95(a, b, ANISO), abs=1e-5)


@pytest.mark.parametrize("seed", [3, 4])
def test_dice_and_hd95_match_monai(seed):
    import torch
    require_module("monai.metrics", "monai")
    from monai.metrics import compute_dice, compute_hausdorff_distance
    a, b = blobs(seed, sigma=1.5), blobs(seed + 20, sigma=1.5)  # blobs touch the image border
    assert a[0].any() or a[-1].any()
    ta, tb = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b))
    expected_hd = compute_hausdorff_distance(ta, tb, percentile=95, spacing=ANISO).item()
    assert hd95(a, b, ANISO) == pytest.approx(expected_hd, abs=1e-4)
    assert dice(a, b) == pytest.approx(compute_dice(ta, tb).item(), abs=1e-6)


def test_real_tumour_mask_against_monai(real_data):
    """Real anisotropic (0.43 x 0.43 x 3 mm) rectal tumour mask vs a shifted and eroded version of itself."""
    import torch
    require_module("monai.metrics", "monai")
    from monai.metrics import compute_dice, compute_hausdorff_distance
    image = read_image(real_data / "rectal_filitto" / "rectal_ca_ax_t2_tumor.nii.gz")
    ref = image.array > 0
    box = tuple(slice(max(0, int(i.min()) - 4), int(i.max()) + 5) for i in np.nonzero(ref))
    ref = ref[box]
    pred = np.roll(ndimage.binary_erosion(ref, iterations=2), 1, axis=0)
    spacing = image.geometry.spacing
    ta, tb = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (pred, ref))
    expected = compute_hausdorff_distance(ta, tb, percentile=95, spacing=spacing).item()
    assert hd95(pred, ref, spacing) == pytest.approx(expected, abs=1e-3)
    assert hd95(pred, ref, spacing) >= 3.0  # a one-slice shift at 3 mm slices
    assert dice(pred, ref) == pytest.approx(compute_dice(ta, tb).item(), abs=1e-6)
    assert 0.3 < dice(pred, ref) < 0.9


# ---- case metrics, aggregation, folders ---------------------------------------------------------------------------
def test_case_metrics_and_summary():
    ref = np.zeros((4, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 2:6, 2:6] = 1           # rectum: 32 voxels
    pred[1:3, 2:6, 4:8] = 1          # rectum: 32 voxels, 16 shared
    pred[0, 0, 0] = 2                # tumour predicted, none in the reference
    result = case_metrics(pred, ref, LABELS, ANISO)
    assert list(result) == ["rectum", "tumour"]
    rectum, tumour = result["rectum"], result["tumour"]
    voxel_ml = 4.0 * 0.875 * 0.6 / 1000
    assert rectum["dice"] == pytest.approx(0.5) and rectum["status"] == "ok"
    assert rectum["volume_pred_ml"] == pytest.approx(32 * voxel_ml) and rectum["volume_diff_ml"] == 0.0
    assert tumour["dice"] == 0.0 and tumour["hd95"] == math.inf and tumour["status"] == "ref_empty"
    assert tumour["volume_diff_ml"] == pytest.approx(voxel_ml)
    empty_case = case_metrics(np.zeros_like(ref), np.zeros_like(ref), LABELS, ANISO)
    summary = summarize({"a": result, "b": empty_case})
    assert summary["rectum"]["dice"]["mean"] == pytest.approx(0.5)  # case b: both empty -> n/a, not 0 or 1
    assert summary["rectum"]["n_both_empty"] == 1 and summary["rectum"]["n_cases"] == 2
    assert summary["tumour"]["dice"]["mean"] == 0.0 and summary["tumour"]["dice"]["count"] == 1
    assert summary["tumour"]["n_both_empty"] == 1
    assert summary["tumour"]["n_hd95_inf"] == 1 and summary["tumour"]["hd95"]["count"] == 0


def _write_case(folder, case_id, array, geometry):
    write_image(array.astype(np.uint8), geometry, folder / f"{case_id}.nii.gz")


@pytest.fixture
def folders(tmp_path):
    """nnU-Net style: dataset.json next to labelsTr; predictions for 2 of 3 cases plus one stray file."""
    ref_dir, pred_dir = tmp_path / "raw" / "labelsTr", tmp_path / "pred"
    ref_dir.mkdir(parents=True)
    pred_dir.mkdir()
    (tmp_path / "raw" / "dataset.json").write_text(json.dumps({"labels": LABELS}), encoding="utf-8")
    geometry = Geometry.identity((6, 16, 16), ANISO, origin=(10.0, -5.0, 3.0))
    arrays = {}
    for k, case_id in enumerate(["case_000", "case_001", "case_002"]):
        ref = np.zeros(geometry.shape, np.uint8)
        ref[1:5, 3:12, 3:12] = 1
        ref[2:4, 5 + k:9, 5:9] = 2
        pred = np.roll(ref, k, axis=2)
        _write_case(ref_dir, case_id, ref, geometry)
        if case_id != "case_002":
            _write_case(pred_dir, case_id, pred, geometry)
        arrays[case_id] = (pred, ref)
    _write_case(pred_dir, "stray", np.zeros(geometry.shape), geometry)
    return pred_dir, ref_dir, arrays


def test_evaluate_folders_matches_case_metrics_and_reports_missing(folders, tmp_path):
    pred_dir, ref_dir, arrays = folders
    result = evaluate_folders(pred_dir, ref_dir, progress=False)
    assert result["missing_predictions"] == ["case_002"] and result["unmatched_predictions"] == ["stray"]
    assert sorted(result["cases"]) == ["case_000", "case_001"]
    for case_id in result["cases"]:
        expected = case_metrics(*arrays[case_id], LABELS, ANISO)
        assert result["cases"][case_id]["tumour"]["dice"] == pytest.approx(expected["tumour"]["dice"])
        assert result["cases"][case_id]["rectum"]["hd95"] == pytest.approx(expected["rectum"]["hd95"])
    assert result["cases"]["case_000"]["rectum"]["dice"] == 1.0
    # round trip through strict JSON (nan -> null, inf -> "inf")
    result["cases"]["case_000"]["tumour"]["hd95"] = math.inf
    path = write_metrics(result, tmp_path / "m" / "metrics.json")
    json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    loaded = load_metrics(path)
    assert loaded["cases"]["case_000"]["tumour"]["hd95"] == math.inf
    assert loaded["summary"]["rectum"]["dice"]["mean"] == pytest.approx(result["summary"]["rectum"]["dice"]["mean"])


def test_cli_evaluate_writes_metrics_and_exits_1_for_missing_cases(folders, tmp_path, capsys):
    pred_dir, ref_dir, _ = folders
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-o", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "case_002" in captured.err and "rectum: Dice" in captured.out
    assert load_metrics(out)["n_cases"] == 2
    (ref_dir / "case_002.nii.gz").unlink()
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-o", str(out), "--quiet",
                 "--labels", "rectum=1"]) == 0
    assert list(load_metrics(out)["summary"]) == ["rectum"]


def test_geometry_mismatch_is_an_error_naming_case_and_values(folders, capsys):
    pred_dir, ref_dir, arrays = folders
    write_image(arrays["case_001"][0], Geometry.identity((6, 16, 16), (3.0, 0.875, 0.6), origin=(10.0, -5.0, 3.0)),
                pred_dir / "case_001.nii.gz")
    with pytest.raises(EvaluationError, match=r"case_001.*spacing \(3, 0\.875, 0\.6\) vs \(4, 0\.875, 0\.6\)"):
        evaluate_folders(pred_dir, ref_dir, progress=False)
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--quiet"]) == 2
    assert "case_001" in capsys.readouterr().err


def test_real_label_on_flipped_grid_is_refused(real_data, tmp_path):
    """ProstateX lesion mask is stored LAS; the same voxels written on the T2's LPS grid must not be scored."""
    lesion = real_data / "prostatex" / "ProstateX-0000" / "ProstateX-0000_lesion.nii.gz"
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    shutil.copy(lesion, ref_dir / "px0000.nii.gz")
    t2 = sitk.ReadImage(str(real_data / "prostatex" / "ProstateX-0000" / "ProstateX-0000_t2w.mha"))
    array = read_image(lesion).array
    write_image(array, Geometry.from_sitk(t2), pred_dir / "px0000.nii.gz")
    with pytest.raises(EvaluationError, match=r"case px0000.*direction"):
        evaluate_folders(pred_dir, ref_dir, labels={"lesion": 1}, progress=False)
    shutil.copy(lesion, pred_dir / "px0000.nii.gz")  # the same file: perfect score
    result = evaluate_folders(pred_dir, ref_dir, labels={"lesion": 1}, progress=False)
    assert result["cases"]["px0000"]["lesion"]["dice"] == 1.0 and result["cases"]["px0000"]["lesion"]["hd95"] == 0


def test_probability_maps_and_missing_labels_are_refused(folders, tmp_path):
    pred_dir, ref_dir, arrays = folders
    write_image(arrays["case_000"][0] * 0.5, Geometry.identity((6, 16, 16), ANISO, origin=(10.0, -5.0, 3.0)),
                pred_dir / "case_000.nii.gz")
    with pytest.raises(EvaluationError, match="case_000.*non-integer"):
        evaluate_folders(pred_dir, ref_dir, progress=False)
    lone = tmp_path / "lone"
    lone.mkdir()
    with pytest.raises(EvaluationError, match="--labels"):
        evaluate_folders(pred_dir, lone, progress=False)


def test_label_specs():
    assert parse_labels("rectum=1, tumour=2") == {"rectum": 1, "tumour": 2}
    assert parse_labels({"0": "background", "1": "rectum"}) == {"background": 0, "rectum": 1}
    with pytest.raises(EvaluationError, match="NAME=VALUE"):
        parse_labels("rectum")


def test_dataset_json_labels(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "T2"}}), encoding="utf-8")
    assert labels_from_dataset_json(tmp_path / "dataset.json") == LABELS


def test_unknown_label_values_are_reported_and_dataset_root_hinted(folders, capsys):
    pred_dir, ref_dir, arrays = folders
    pred = arrays["case_000"][0].copy()
    pred[0, 0, 0] = 3  # a class the dataset does not name
    write_image(pred, Geometry.identity((6, 16, 16), ANISO, origin=(10.0, -5.0, 3.0)), pred_dir / "case_000.nii.gz")
    result = evaluate_folders(pred_dir, ref_dir, progress=False)
    assert result["unexpected_labels"] == {"case_000": {"prediction": [3], "reference": []}}
    main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--quiet"])
    assert "case case_000: label values not in the class list" in capsys.readouterr().err
    with pytest.raises(EvaluationError, match="did you mean .*labelsTr"):
        evaluate_folders(pred_dir, ref_dir.parent, progress=False)
