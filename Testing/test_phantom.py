"""The sagittal pelvis phantom (RCSegNeXtCore/data/phantom*.py): layout, geometry, labels, difficulty and speed."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from RCSegNeXtCore.cli import main
from RCSegNeXtCore.data.dataset import load_dataset, read_case
from RCSegNeXtCore.data.io import read_image
from RCSegNeXtCore.phantom import make_phantom_case, make_phantom_dataset
from RCSegNeXtCore.phantom.dataset import _tumour_plan
from RCSegNeXtCore.data.validation import check_dataset
from RCSegNeXtCore.errors import RCSegNeXtError

FULL_CASES = 3


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("small") / "ds", 20, seed=7, size="small", progress=False)


@pytest.fixture(scope="module")
def full_dataset(tmp_path_factory):
    """Three full-size cases written to disk, and the (wall, CPU) seconds it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = make_phantom_dataset(tmp_path_factory.mktemp("full") / "ds", FULL_CASES, seed=3, progress=False)
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def best_interval_dice(image: np.ndarray, target: np.ndarray) -> float:
    """Exact best Dice of `lo <= image <= hi` against `target` over all intervals of an integer-valued image.

    Optimal bounds are intensities that occur inside the target (shrinking an interval to them keeps every
    target voxel and drops others), so only those are tried. A single threshold is an interval too.
    """
    values = np.rint(image).astype(np.int64)
    offset = values.min()
    all_counts = np.bincount((values - offset).ravel())
    target_counts = np.bincount((values[target] - offset).ravel(), minlength=len(all_counts))
    cum_all, cum_target = np.concatenate([[0], np.cumsum(all_counts)]), np.concatenate([[0], np.cumsum(target_counts)])
    candidates = np.nonzero(target_counts)[0]
    lo, hi = candidates[:, None], candidates[None, :] + 1  # interval [lo, hi)
    inside_target = cum_target[hi] - cum_target[lo]
    inside_all = cum_all[hi] - cum_all[lo]
    dice = np.where(hi > lo, 2.0 * inside_target / np.maximum(inside_all + target.sum(), 1), 0.0)
    return float(dice.max())


def test_best_interval_dice_matches_brute_force():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 12, size=(4, 5, 6)).astype(np.float32)
    target = (image >= 3) & (image <= 6) & (rng.random(image.shape) < 0.7)
    brute = 0.0
    for lo in range(12):
        for hi in range(lo, 12):
            pred = (image >= lo) & (image <= hi)
            brute = max(brute, 2 * (pred & target).sum() / (pred.sum() + target.sum()))
    assert best_interval_dice(image, target) == pytest.approx(brute)
    assert best_interval_dice(image, (image >= 3) & (image <= 6)) == pytest.approx(1.0)


def test_layout_dataset_json_and_check(small_dataset):
    spec = json.loads((small_dataset / "dataset.json").read_text(encoding="utf-8"))
    assert spec["channel_names"] == {"0": "T2"}
    assert spec["labels"] == {"background": 0, "rectum": 1, "tumour": 2}
    assert spec["numTraining"] == 20 and spec["file_ending"] == ".nii.gz" and spec["name"]
    images = sorted(p.name for p in (small_dataset / "imagesTr").iterdir())
    labels = sorted(p.name for p in (small_dataset / "labelsTr").iterdir())
    assert images == [f"PHANTOM_{i:03d}_0000.nii.gz" for i in range(20)]
    assert labels == [f"PHANTOM_{i:03d}.nii.gz" for i in range(20)]
    assert check_dataset(small_dataset) == []
    dataset = load_dataset(small_dataset)
    image, label = read_case(dataset.cases[0])
    assert image.array.shape == (1, 16, 96, 96) and label.array.dtype == np.uint8
    assert image.geometry.matches(label.geometry)


def test_same_seed_same_case_and_file_equals_memory(small_dataset):
    a_image, a_label = make_phantom_case(np.random.default_rng(11), size="small")
    b_image, b_label = make_phantom_case(np.random.default_rng(11), size="small")
    c_image, _ = make_phantom_case(np.random.default_rng(12), size="small")
    np.testing.assert_array_equal(a_image.array, b_image.array)
    np.testing.assert_array_equal(a_label, b_label)
    assert a_image.geometry == b_image.geometry
    assert c_image.geometry != a_image.geometry
    # the written case 5 is the in-memory case drawn from (seed, 5), exactly (images are integer-valued)
    rng = np.random.default_rng(np.random.SeedSequence([7, 5]))
    image, label = make_phantom_case(rng, size="small", tumour=_tumour_plan(7, 20)[5])
    on_disk = read_image(small_dataset / "imagesTr" / "PHANTOM_005_0000.nii.gz")
    np.testing.assert_array_equal(on_disk.array, image.array)
    np.testing.assert_array_equal(read_image(small_dataset / "labelsTr" / "PHANTOM_005.nii.gz").array, label)
    assert on_disk.geometry.matches(image.geometry, tolerance=1e-6)


def test_rerun_is_a_no_op_and_foreign_folder_is_refused(small_dataset, tmp_path):
    before = (small_dataset / "imagesTr" / "PHANTOM_000_0000.nii.gz").stat().st_mtime_ns
    make_phantom_dataset(small_dataset, 20, seed=7, size="small", progress=False)
    assert (small_dataset / "imagesTr" / "PHANTOM_000_0000.nii.gz").stat().st_mtime_ns == before
    with pytest.raises(RCSegNeXtError, match="not empty"):
        make_phantom_dataset(small_dataset, 20, seed=8, size="small", progress=False)
    with pytest.raises(RCSegNeXtError, match="size 'huge'"):
        make_phantom_dataset(tmp_path / "x", 2, size="huge")


def test_labels_tumour_presence_size_and_contact(small_dataset):
    volumes = []
    for i in range(20):
        label = read_image(small_dataset / "labelsTr" / f"PHANTOM_{i:03d}.nii.gz").array
        assert set(np.unique(label).tolist()) <= {0, 1, 2}
        assert (label == 1).sum() > 50, f"case {i}: rectum missing"
        tumour = label == 2
        volumes.append(int(tumour.sum()))
        if tumour.any():  # the tumour is a thickening of the rectal wall: it touches the rectum label
            grown = ndimage.binary_dilation(tumour, ndimage.generate_binary_structure(3, 1))
            assert (grown & (label == 1)).any(), f"case {i}: tumour does not touch the rectum"
    present = [v for v in volumes if v > 0]
    assert 1 <= volumes.count(0) <= 4, volumes  # ~10 % without tumour
    assert max(present) > 4 * min(present), volumes  # small and large tumours


def test_small_variant_geometry():
    image, label = make_phantom_case(np.random.default_rng(0), size="small")
    assert image.array.shape == label.shape == (16, 96, 96)
    assert np.allclose(image.geometry.spacing, (5.0, 2.5, 2.5), rtol=0.06)
    forced, _ = make_phantom_case(np.random.default_rng(0), size="small", shape=(8, 64, 48), spacing=(6, 3, 3))
    assert forced.array.shape == (8, 64, 48) and forced.geometry.spacing == (6.0, 3.0, 3.0)
    with pytest.raises(RCSegNeXtError, match="shape"):
        make_phantom_case(np.random.default_rng(0), shape=(2, 8, 8))


def test_full_size_geometry_and_rectum_extent(full_dataset):
    out, _ = full_dataset
    for i in range(FULL_CASES):
        image = read_image(out / "imagesTr" / f"PHANTOM_{i:03d}_0000.nii.gz")
        label = read_image(out / "labelsTr" / f"PHANTOM_{i:03d}.nii.gz").array
        nz, ny, nx = image.array.shape
        assert 18 <= nz <= 24 and 320 <= ny <= 512 and 320 <= nx <= 512
        assert np.allclose(image.geometry.spacing, (4.0, 0.875, 0.875), rtol=0.11)
        direction = image.geometry.direction_matrix
        np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(direction) == pytest.approx(1.0)
        # sagittal: slices step left-right (LPS x), rows head-feet (z), columns front-back (y); tilted <= 10 deg
        assert abs(direction[0, 2]) > np.cos(np.deg2rad(10.5)) and abs(direction[2, 1]) > np.cos(np.deg2rad(10.5))
        assert abs(direction[1, 0]) > np.cos(np.deg2rad(10.5))
        rectum_slices = int(((label == 1) | (label == 2)).any(axis=(1, 2)).sum())
        assert 4 <= rectum_slices <= 13, rectum_slices


def test_no_single_threshold_finds_the_tumour(full_dataset):
    """Difficulty: even the best intensity interval, chosen per case with the answer known, gives Dice < 0.5."""
    out, _ = full_dataset
    scores = []
    for i in range(FULL_CASES):
        image = read_image(out / "imagesTr" / f"PHANTOM_{i:03d}_0000.nii.gz").array
        label = read_image(out / "labelsTr" / f"PHANTOM_{i:03d}.nii.gz").array
        assert (label == 2).any()
        scores.append(best_interval_dice(image, label == 2))
    print(f"best threshold-interval tumour Dice per case: {[round(s, 3) for s in scores]}")
    assert max(scores) < 0.5, scores


def test_generation_time(full_dataset):
    """20 full-size cases in under a minute: timed on 3 (CPU time, so a busy shared machine does not fail it)."""
    _, (wall, cpu) = full_dataset
    print(f"phantom: {wall / FULL_CASES:.2f} s wall, {cpu / FULL_CASES:.2f} s CPU per full-size case written "
          f"-> {20 * wall / FULL_CASES:.1f} s wall for 20 cases")
    assert 20 * cpu / FULL_CASES < 60.0


def test_workers_give_the_same_files(tmp_path):
    one = make_phantom_dataset(tmp_path / "one", 3, seed=5, size="small", progress=False)
    two = make_phantom_dataset(tmp_path / "two", 3, seed=5, size="small", workers=2, progress=False)
    for name in ("imagesTr/PHANTOM_002_0000.nii.gz", "labelsTr/PHANTOM_001.nii.gz"):
        np.testing.assert_array_equal(read_image(one / name).array, read_image(two / name).array)


def test_cli_phantom(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["phantom", str(out), "--cases", "2", "--size", "small", "--seed", "4", "--no-progress",
                 "--preview", str(tmp_path / "preview.png")]) == 0
    assert "2 cases" in capsys.readouterr().out
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["phantom"]["seed"] == 4
    assert main(["phantom", str(tmp_path / "bad"), "--cases", "1", "--shape", "2", "50", "50"]) == 2
    assert "at least 3 slices" in capsys.readouterr().err
