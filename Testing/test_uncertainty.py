"""The review map (inference/uncertainty.py): normalised entropy through the real sliding window, the members'
running disagreement against stored members, the per-case score on a hand-made case, `predict --uncertainty`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RCSegNeXtCore.cli import main as cli
from RCSegNeXtCore.data.io import Geometry, Image, read_geometry, write_image
from RCSegNeXtCore.inference.sliding_window import mirror_combinations, plan_layout, predict_sliding_window
from RCSegNeXtCore.inference.uncertainty import (boundary_band, case_score, mutual_information, normalized_entropy,
                                                 tumour_label)


class ChosenLogits:
    """A backend (the window's `logits(tiles, out=None)` call) returning the same chosen logits at every voxel."""

    name = "chosen"

    def __init__(self, values):
        self.values = np.asarray(values, np.float32)

    def logits(self, tiles, out=None):
        out = np.empty((tiles.shape[0], len(self.values), *tiles.shape[2:]), np.float32) if out is None else out
        out[...] = self.values[None, :, None, None, None]
        return out


class Pointwise(torch.nn.Module):
    """1x1x1 conv: a voxel's logits depend on that voxel only, so every tile gives it the same member output."""

    def __init__(self, seed, classes=3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv3d(1, classes, 1)

    def forward(self, x):
        return self.conv(x)


class SmallConv(torch.nn.Module):
    """Two 3x3x3 convs: not mirror-symmetric, so mirrored passes are members that disagree."""

    def __init__(self, seed, classes=3):
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Conv3d(1, 6, 3, padding=1)
        self.b = torch.nn.Conv3d(6, classes, 3, padding=1)

    def forward(self, x):
        return 3 * self.b(torch.nn.functional.gelu(self.a(x)))


def _volume(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


def test_normalized_entropy_hand_computed():
    p = np.array([[1.0, 1 / 3, 0.5, 0.9], [0.0, 1 / 3, 0.5, 0.1], [0.0, 1 / 3, 0.0, 0.0]], np.float32)
    h = normalized_entropy(p)
    expected = [0.0, 1.0, math.log(2) / math.log(3), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(3)]
    np.testing.assert_allclose(h, expected, atol=1e-6)
    assert h.dtype == np.float32


@pytest.mark.parametrize("values,expected", [([40.0, 0.0, 0.0], 0.0), ([0.7, 0.7, 0.7], 1.0)])
def test_entropy_through_the_sliding_window_one_hot_and_uniform(values, expected):
    data = _volume((10, 30, 26))
    probs, stats, spread = predict_sliding_window([ChosenLogits(values)], data, (8, 16, 16), 3, disagreement=True)
    assert stats.tiles > 1 and spread is None          # one member: no disagreement
    h = normalized_entropy(probs)
    assert h.shape == data.shape[1:] and h.min() >= 0 and h.max() <= 1
    np.testing.assert_allclose(h, expected, atol=1e-6)
    # identical members (two folds, mirrored): they agree everywhere
    _, _, spread = predict_sliding_window([ChosenLogits(values)] * 2, data, (8, 16, 16), 3, mirror_axes=(0, 1),
                                          disagreement=True)
    np.testing.assert_allclose(spread, 0.0, atol=1e-6)


def _stored_members_disagreement(nets, data, combos):
    """Independent reference: every member's softmax over the whole volume kept, then H(mean p) - mean H(p)."""
    x = torch.from_numpy(data)[None]
    members = []
    with torch.no_grad():
        for net in nets:
            for combo in combos:
                dims = [a + 2 for a in combo]
                logits = net(torch.flip(x, dims) if dims else x)
                members.append(torch.softmax(torch.flip(logits, dims) if dims else logits, 1)[0].double().numpy())
    members = np.stack(members)
    entropy = lambda p: -(p * np.log(np.clip(p, 1e-300, None))).sum(0)  # noqa: E731
    mean_h = np.mean([entropy(p) for p in members], axis=0)
    return (entropy(members.mean(0)) - mean_h) / math.log(3)


def test_running_disagreement_equals_stored_members_whole_volume_with_mirrors():
    data = _volume((6, 16, 20), seed=1)
    nets = [SmallConv(1).eval(), SmallConv(2).eval()]
    _, stats, spread = predict_sliding_window(nets, data, (6, 16, 16), 3, mirror_axes=(0, 1, 2),
                                              whole_volume_max_voxels=10 ** 9, disagreement=True)
    assert stats.mode == "whole-volume" and stats.mirrors * stats.networks == 16
    reference = _stored_members_disagreement(nets, data, mirror_combinations((0, 1, 2), (6, 16, 20)))
    assert reference.max() > 0.05                      # the members do disagree
    np.testing.assert_allclose(spread, np.clip(reference, 0, 1), atol=2e-5)


def test_running_disagreement_equals_stored_members_over_weighted_tiles():
    """Pointwise members give every tile the same output at a voxel, so the Gaussian-weighted running sums over
    overlapping tiles must equal the stored members' disagreement exactly."""
    data = _volume((11, 37, 29), seed=2)
    nets = [Pointwise(3).eval(), Pointwise(4).eval(), Pointwise(5).eval()]
    probs, stats, spread = predict_sliding_window(nets, data, (8, 16, 16), 3, overlap=0.25, batch_tiles=3,
                                                  disagreement=True)
    assert stats.tiles == 18                        # 2 x 3 x 3 overlapping tiles
    reference = _stored_members_disagreement(nets, data, [()])
    assert reference.max() > 0.05
    np.testing.assert_allclose(spread, np.clip(reference, 0, 1), atol=2e-5)
    # asking for it changes nothing else
    plain, _ = predict_sliding_window(nets, data, (8, 16, 16), 3, overlap=0.25, batch_tiles=3)
    np.testing.assert_array_equal(plain, probs)


def test_numpy_and_torch_device_paths_give_the_same_disagreement():
    from RCSegNeXtCore.inference.backends import TorchBackend
    from RCSegNeXtCore.inference.torch_window import accumulate_on_device
    data = _volume((11, 37, 29), seed=3)
    nets = [SmallConv(6).eval(), Pointwise(7).eval()]
    got, _, spread = predict_sliding_window(nets, data, (8, 16, 16), 3, overlap=0.25, mirror_axes=(1, 2),
                                            batch_tiles=2, disagreement=True)
    layout = plan_layout(data, (8, 16, 16), (1, 1, 1), 0.25, 0)
    expected, expected_spread = accumulate_on_device([TorchBackend(n) for n in nets], layout,
                                                     mirror_combinations((1, 2), layout.window), 3, 2,
                                                     lambda n: None, False, members=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(spread, expected_spread, atol=1e-5)
    assert spread.max() > 0.01


def test_mutual_information_is_zero_for_agreeing_members_and_clipped():
    p = np.array([[0.2, 0.9], [0.8, 0.1]], np.float32)
    mean_h = normalized_entropy(p) * math.log(2)
    np.testing.assert_allclose(mutual_information(p, mean_h), 0.0, atol=1e-6)
    assert (mutual_information(p, mean_h + 0.1) == 0).all()         # rounding below 0 is clipped


def test_boundary_band_and_case_score_hand_made():
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[1, 7:13, 7:13] = 2                       # a 6 x 6 tumour on the middle slice (z is the thick axis)
    labels[:, 1:4, 1:4] = 1                         # some rectum
    spacing = (4.0, 0.8, 0.8)
    band = boundary_band(labels == 2, spacing)
    # dilation by the radius-2 disk: 10 x 10 less 3 voxels per corner = 88; erosion: the central 2 x 2 = 4
    assert band.sum() == 88 - 4 and not band[0].any() and not band[2].any()
    assert band[1, 5, 9] and not band[1, 9, 9]     # 2 outside the surface: in; the centre: not
    assert not band[1, 4, 9]                        # 3 outside the surface: not in the band
    uncertainty = np.zeros(labels.shape, np.float32)
    uncertainty[1, 5, 9] = 1.0                      # in the band
    uncertainty[1, 4, 9] = 1.0                      # outside the band
    uncertainty[0, 9, 9] = 1.0                      # another slice: in-plane only
    score, region = case_score(uncertainty, labels, spacing, tumour_label({"background": 0, "rectum": 1,
                                                                           "tumour": 2}))
    assert region == "tumour" and score == pytest.approx(1 / 84)
    # no tumour predicted: the band of the whole foreground (the rectum here, on all three slices)
    score, region = case_score(uncertainty, np.where(labels == 2, 0, labels), spacing, 2)
    assert region == "foreground" and score == 0.0
    # nothing predicted: the whole volume
    score, region = case_score(uncertainty, np.zeros_like(labels), spacing, 2)
    assert region == "volume" and score == pytest.approx(3 / uncertainty.size)
    # the thick axis decides the plane: thick x -> the band lies in (z, y) planes
    band_x = boundary_band(np.moveaxis(labels == 2, 0, 2), (0.8, 0.8, 4.0))
    np.testing.assert_array_equal(band_x, np.moveaxis(band, 0, 2))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from RCSegNeXtCore.inference.model_folder import init_model_folder
    from RCSegNeXtCore.planning import make_plans_from_values
    plans = make_plans_from_values([4.0, 0.875, 0.875], [8, 32, 32], base_channels=4)
    return init_model_folder(plans, tmp_path_factory.mktemp("model") / "RandomModel", folds=(0, 1), seed=0,
                             export_onnx=False)


_c, _s = np.cos(np.radians(15)), np.sin(np.radians(15))
SAGITTAL = Geometry((7, 40, 36), (3.6, 0.6, 0.6), (-20.0, 15.5, 40.25),
                    tuple(np.array([[_s, 0, _c], [_c, 0, -_s], [0, -1, 0]], float).ravel()))


def _image():
    array = np.random.default_rng(0).normal(300, 60, SAGITTAL.shape).astype(np.float32)
    array[:, :4, :] = 0                             # cropped away by preprocessing: certain background
    return Image(array, SAGITTAL)


@pytest.mark.slow
def test_predictor_review_map_on_the_input_grid(model_dir):
    from RCSegNeXtCore.inference.predictor import Predictor
    predictor = Predictor(model_dir, device="cpu", backend="torch", tta=True)
    prediction = predictor.predict(_image(), keep_probabilities=True, uncertainty=True)
    u, d = prediction.uncertainty, prediction.disagreement
    assert u.shape == d.shape == SAGITTAL.shape and u.dtype == d.dtype == np.float32
    assert 0 <= u.min() and u.max() <= 1 and 0 <= d.min() and d.max() <= 1 and d.max() > 0
    np.testing.assert_allclose(u, normalized_entropy(prediction.probabilities), atol=1e-6)
    assert (u[:, :4, :] == 0).all() and (d[:, :4, :] == 0).all()
    score, region = case_score(u, prediction.labels, SAGITTAL.spacing, 2)
    assert (prediction.uncertainty_score, prediction.uncertainty_region) == (score, region)
    plain = predictor.predict(_image())
    assert plain.uncertainty is None and plain.disagreement is None and plain.uncertainty_score is None
    np.testing.assert_array_equal(plain.labels, prediction.labels)


@pytest.mark.slow
@pytest.mark.parametrize("output,review", [("case.nii.gz", "case_uncertainty.nii.gz"),
                                           ("case.seg.nrrd", "case_uncertainty.nrrd")])
def test_predict_uncertainty_writes_the_map_on_the_input_grid(model_dir, tmp_path, capsys, output, review):
    write_image(_image().array, SAGITTAL, tmp_path / "case.nrrd")
    args = ["predict", "-i", str(tmp_path / "case.nrrd"), "-m", str(model_dir), "--backend", "torch",
            "--device", "cpu", "--folds", "0"]
    assert cli(args + ["-o", str(tmp_path / "plain" / output)]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == [output]   # no map without the flag
    capsys.readouterr()
    assert cli(args + ["-o", str(tmp_path / "out" / output), "--tta", "--uncertainty", "--progress-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    path = tmp_path / "out" / review
    assert path.is_file()
    assert read_geometry(path).matches(SAGITTAL, 1e-5), read_geometry(path).differences(SAGITTAL)
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(image)
    assert 0 <= values.min() and values.max() <= 1 and values.max() > 0
    export = next(e for e in events if e["stage"] == "export")
    done = events[-1]
    assert export["uncertainty_output"] == str(path) and done["uncertainty_scores"] == {"case": export[
        "uncertainty_score"]}
    assert 0 <= export["uncertainty_score"] <= 1
    if output.endswith(".nrrd"):                      # the score in the headers, a worklist can sort by it
        for written in (path, tmp_path / "out" / output):
            header = sitk.ReadImage(str(written))
            assert float(header.GetMetaData("RCSegNeXt_UncertaintyScore")) == pytest.approx(
                export["uncertainty_score"], abs=1e-6)
            assert header.GetMetaData("RCSegNeXt_UncertaintyRegion") in ("tumour", "foreground", "volume")
            assert header.HasMetaDataKey("RCSegNeXt_Disagreement")      # --tta: several members


def test_uncertainty_path_by_format():
    from RCSegNeXtCore.inference.export import uncertainty_path
    assert uncertainty_path("a/c1.nii").name == "c1_uncertainty.nii.gz"
    assert uncertainty_path("a/c1.mha").name == "c1_uncertainty.mha"
    assert uncertainty_path("a/c1.SEG.NRRD").name == "c1_uncertainty.nrrd"
    assert uncertainty_path("a/c1.dcm").name == "c1_uncertainty.nrrd"    # DICOM SEG: binary segments only


def test_every_output_format_has_a_review_map_file():
    """--uncertainty with any --format: found before a case is written, not after its labels are."""
    from RCSegNeXtCore.inference.export import OUTPUT_FORMATS, uncertainty_path
    for suffix in OUTPUT_FORMATS:
        assert uncertainty_path(f"a/c1.{suffix}").name.startswith("c1_uncertainty.")
    with pytest.raises(ValueError, match="no uncertainty format"):
        uncertainty_path("a/c1.png")
