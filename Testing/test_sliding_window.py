"""Sliding window: tile placement, Gaussian weighting, stitching, mirroring, whole-volume pass."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from RCSegNeXtCore.inference.sliding_window import (default_min_overlaps, gaussian_importance, mirror_combinations,
                                                     predict_sliding_window, tile_grid, tile_starts)


@pytest.mark.parametrize("length,patch,overlap,expected", [
    (24, 16, 2, [0, 8]),          # the paper's z: 2 tiles
    (512, 320, 40, [0, 192]),     # the paper's y/x: 2 tiles (nnU-Net's step 0.5 places 3)
    (16, 16, 2, [0]),
    (10, 16, 2, [0]),
    (100, 40, 5, [0, 30, 60]),    # ceil((100-40)/35)+1 = 3 tiles, spread evenly
])
def test_tile_starts_hand_computed(length, patch, overlap, expected):
    assert tile_starts(length, patch, overlap) == expected


def test_tile_starts_fewest_that_keep_the_overlap():
    rng = np.random.default_rng(0)
    for _ in range(200):
        patch = int(rng.integers(4, 64))
        length = int(rng.integers(patch + 1, 6 * patch))
        overlap = int(rng.integers(0, patch // 2))
        starts = tile_starts(length, patch, overlap)
        assert starts[0] == 0 and starts[-1] + patch == length
        gaps = np.diff(starts)
        assert (patch - gaps >= overlap).all()      # neighbours overlap by at least min_overlap
        fewer = len(starts) - 1                      # one tile fewer cannot cover with that overlap
        assert fewer == 1 or patch - (length - patch) / (fewer - 1) < overlap


@pytest.mark.parametrize("patch,stride,expected", [
    ((16, 320, 320), (4, 16, 16), [8, 80, 80]),    # 1/4 of the patch already exceeds two bottleneck cells
    ((16, 320, 320), (8, 32, 32), [8, 80, 80]),    # z: two cells (16) capped at half the patch (8)
    ((16, 64, 64), (4, 16, 16), [8, 32, 32]),      # the demo: a 4-cell patch gets half the patch (nnU-Net's step)
    ((16, 80, 80), (4, 16, 16), [8, 32, 32]),      # 5 cells: two cells (32) > 1/4 (20)
    ((8, 16, 16), (1, 1, 1), [2, 4, 4]),           # no stride known: 1/4 of the patch
])
def test_default_min_overlaps_hand_computed(patch, stride, expected):
    assert default_min_overlaps(patch, stride) == expected


def test_gaussian_matches_nnunet_construction_with_scipy():
    # nnU-Net's map: a unit impulse at index patch // 2 blurred by scipy's gaussian_filter, sigma = patch / 8
    for patch in [(8, 16, 12), (16, 64, 64)]:
        weight = gaussian_importance(patch)
        impulse = np.zeros(patch)
        impulse[tuple(p // 2 for p in patch)] = 1.0
        reference = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
        reference /= reference.max()
        # not floored: the corner weights keep their Gaussian ratio (a floor of 1e-6 made two tiles' corners equal)
        np.testing.assert_allclose(weight, reference, rtol=1e-4, atol=1e-12)
        assert weight.max() == pytest.approx(1.0, abs=1e-6) and 0 < weight.min() < 1e-6


def test_mirror_combinations_skip_single_slice_axes():
    assert len(mirror_combinations((0, 1, 2), (8, 8, 8))) == 8
    assert mirror_combinations((0, 1, 2), (1, 8, 8)) == [(), (1,), (2,), (1, 2)]
    assert mirror_combinations((), (8, 8, 8)) == [()]


class Pointwise(torch.nn.Module):
    """1x1x1 conv: each output voxel depends on its own input voxel only, so any tiling must give the same result."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(1, classes, 1)

    def forward(self, x):
        return self.conv(x)


class SmallConv(torch.nn.Module):
    """Two 3x3x3 convs without normalisation (receptive field 5 voxels), not mirror-symmetric."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(2)
        self.a = torch.nn.Conv3d(1, 6, 3, padding=1)
        self.b = torch.nn.Conv3d(6, classes, 3, padding=1)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x)))


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    smooth = rng.normal(size=shape).astype(np.float32)
    return torch.from_numpy(smooth)[None]


def test_pointwise_network_tiles_equal_direct_softmax():
    data = _volume((11, 37, 29))
    net = Pointwise().eval()
    expected = torch.softmax(net(data[None]), 1)[0]
    tiled, stats = predict_sliding_window([net], data, (8, 16, 16), 3, overlap=0.125, whole_volume_max_voxels=0)
    assert stats.mode == "tiles" and stats.tile_grid == [2, 3, 2] and stats.forward_passes == 12
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=1e-5)
    whole, stats = predict_sliding_window([net], data, (8, 16, 16), 3, total_stride=(1, 4, 4), whole_volume_max_voxels=10**9)
    assert stats.mode == "whole-volume" and stats.forward_passes == 1 and stats.padded_shape == (11, 40, 32)
    default, stats = predict_sliding_window([net], data, (8, 16, 16), 3, total_stride=(1, 4, 4))
    # tiling is the default; a 16-voxel patch is 4 cells of stride 4: overlap 8 in-plane, y 37 -> 4, x 29 -> 3
    assert stats.mode == "tiles" and stats.tile_grid == [2, 4, 3]
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=1e-5)


def test_conv_network_minimal_tiles_equivalent_to_whole_volume_and_dense_tiling():
    data = _volume((20, 48, 40), seed=3)
    net = SmallConv().eval()
    whole, _ = predict_sliding_window([net], data, (12, 24, 24), 3, whole_volume_max_voxels=10**9)
    tiled, stats = predict_sliding_window([net], data, (12, 24, 24), 3, overlap=0.125, whole_volume_max_voxels=0)
    dense, dense_stats = predict_sliding_window([net], data, (12, 24, 24), 3, overlap=0.5, whole_volume_max_voxels=0)
    assert stats.tiles == 2 * 3 * 2 and dense_stats.tiles > stats.tiles
    assert (tiled - whole).abs().mean() < 0.01
    assert (tiled - dense).abs().mean() < 0.01
    assert (tiled.argmax(0) == whole.argmax(0)).float().mean() > 0.98
    torch.testing.assert_close(tiled.sum(0), torch.ones(data.shape[1:]), atol=1e-5, rtol=0)


def test_mirroring_is_the_mean_of_flipped_passes_and_networks_are_averaged():
    data = _volume((6, 16, 16), seed=4)
    nets = [SmallConv().eval(), Pointwise().eval()]
    out, stats = predict_sliding_window(nets, data, (6, 16, 16), 3, mirror_axes=(0, 1, 2))
    assert stats.mirrors == 8 and stats.forward_passes == 16
    expected = torch.zeros_like(out)
    with torch.no_grad():
        for net in nets:
            for r in range(4):
                for combo in itertools.combinations((2, 3, 4), r):
                    flipped = torch.flip(data[None], combo) if combo else data[None]
                    logits = net(flipped)
                    expected += (torch.flip(logits, combo) if combo else logits)[0]
    # as nnU-Net v2: logits averaged over mirrors and networks, one softmax at the end
    torch.testing.assert_close(out, torch.softmax(expected / 16, 0), atol=1e-5, rtol=1e-5)


def test_batched_tiles_give_the_same_result_and_progress_counts_passes():
    data = _volume((14, 30, 30), seed=5)
    net = SmallConv().eval()
    calls = []
    one, s1 = predict_sliding_window([net], data, (8, 16, 16), 3, progress=lambda d, t: calls.append((d, t)))
    three, s3 = predict_sliding_window([net], data, (8, 16, 16), 3, batch_tiles=4)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=1e-5)
    # default overlap 1/4: z 14 -> 2 tiles (min overlap 2), y/x 30 -> 3 tiles (min overlap 4: 2 would overlap 2)
    assert s1.forward_passes == s3.forward_passes == s1.tiles == 18 and s3.tile_grid == [2, 3, 3]
    assert calls[-1] == (18, 18) and len(calls) == 18


def test_small_volume_is_padded_and_cropped_back():
    data = _volume((3, 10, 9), seed=6)
    net = Pointwise().eval()
    out, stats = predict_sliding_window([net], data, (8, 16, 16), 3, whole_volume_max_voxels=0)
    assert out.shape == (3, 3, 10, 9) and stats.tiles == 1 and stats.padded_shape == (8, 16, 16)
    torch.testing.assert_close(out, torch.softmax(net(data[None]), 1)[0], atol=1e-5, rtol=1e-5)


def test_real_network_whole_volume_needs_stride_padding():
    from RCSegNeXtCore.network import build_network
    net = build_network([[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 2, 2], [2, 2, 2]], base_channels=4).eval()
    data = _volume((5, 22, 19), seed=7)   # not divisible by the total stride (2, 4, 4)
    out, stats = predict_sliding_window([net], data, (4, 16, 16), 3, total_stride=(2, 4, 4), whole_volume_max_voxels=10**9)
    assert stats.mode == "whole-volume" and stats.padded_shape == (6, 24, 20) and out.shape == (3, 5, 22, 19)
    tiles, tstats = predict_sliding_window([net], data, (4, 16, 16), 3, whole_volume_max_voxels=0)
    assert tstats.tiles == math.prod(len(tile_starts(s, p, math.ceil(p / 4))) for s, p in zip((5, 22, 19), (4, 16, 16)))
    assert tiles.shape == out.shape and len(tile_grid((5, 22, 19), (4, 16, 16), 0.25)) == tstats.tiles


def test_paper_volume_needs_8_tiles_where_nnunet_default_places_18():
    bench = _benchmark_module()
    assert bench.nnunet_steps(24, 16) == [0, 8] and bench.nnunet_steps(512, 320) == [0, 96, 192]
    assert len(tile_grid((24, 512, 512), (16, 320, 320), 0.125)) == 8     # vs 2 x 3 x 3 = 18 (x 8 mirrors = 144)
    assert len(tile_grid((24, 512, 512), (16, 320, 320), 0.25)) == 8      # the default overlap adds no tile
    # overlap 0.5 places exactly nnU-Net's tiles
    for length, patch in [(24, 16), (512, 320), (100, 64), (95, 64), (200, 48)]:
        assert tile_starts(length, patch, math.ceil(0.5 * patch)) == bench.nnunet_steps(length, patch)
    # the default rule with the network's total stride: still 8 tiles for the paper's patch (10 or 20 cells
    # in-plane), but nnU-Net's own tiles for the demo's 4-cell patch [16, 64, 64] (stride 4 x 16 x 16)
    for stride in [(4, 16, 16), (8, 32, 32)]:
        assert len(tile_grid((24, 512, 512), (16, 320, 320), None, stride)) == 8
    for length in range(65, 200):
        demo = sorted({t[1].start for t in tile_grid((16, length, 64), (16, 64, 64), None, (4, 16, 16))})
        assert demo == bench.nnunet_steps(length, 64)
    # an explicit fraction is taken as given: overlap 1/4 places 2 tiles on 100 voxels, the default 3
    assert len(tile_grid((16, 100, 64), (16, 64, 64), 0.25, (4, 16, 16))) == 2
    assert len(tile_grid((16, 100, 64), (16, 64, 64), None, (4, 16, 16))) == 3


def test_overlap_half_reproduces_an_nnunet_style_reference():
    """Independent reference: nnU-Net's step-0.5 tiles, scipy Gaussian at patch // 2, logits averaged, softmax."""
    from RCSegNeXtCore.network import build_network
    net = build_network([[1, 3, 3], [3, 3, 3]], [[1, 2, 2]], base_channels=4).eval()  # instance norms inside
    data, patch = _volume((7, 30, 26), seed=8), (4, 16, 16)
    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1.0
    gauss = torch.from_numpy(gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant")).float()
    starts = [np.round(np.linspace(0, s - p, int(np.ceil((s - p) / (p / 2))) + 1)).astype(int) for s, p in
              zip(data.shape[1:], patch)]
    logits, weights = torch.zeros((3, *data.shape[1:])), torch.zeros(data.shape[1:])
    with torch.no_grad():
        for corner in itertools.product(*starts):
            region = tuple(slice(int(c), int(c) + p) for c, p in zip(corner, patch))
            logits[(slice(None), *region)] += net(data[(slice(None), *region)][None])[0] * gauss
            weights[region] += gauss
    expected = torch.softmax(logits / weights, 0)
    out, stats = predict_sliding_window([net], data, patch, 3, overlap=0.5)
    assert stats.tiles == math.prod(len(s) for s in starts)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def _benchmark_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_placement_sensitivity_measures():
    """--shift moves the reference's tiles (a tiling-independent network gives the same answer, one with spatial
    context does not); --tile-insets counts single tiles per distance from the border (exact for pointwise)."""
    bench = _benchmark_module()
    data, patch, cpu = _volume((8, 40, 36), seed=9), [8, 16, 16], torch.device("cpu")
    pointwise, context = Pointwise().eval(), SmallConv().eval()
    for net, same in ((pointwise, True), (context, False)):
        ref, _, _ = bench.nnunet_reference(net, data, patch, 3, False, cpu, False)
        moved = bench.shifted_reference(net, data, patch, 3, cpu, False, 5)
        assert moved.shape == ref.shape
        assert torch.allclose(moved, ref, atol=1e-5) is same
    ref_labels = bench.nnunet_reference(pointwise, data, patch, 3, False, cpu, False)[0].argmax(0).numpy()
    counts = np.zeros((2, 3, 3))
    bench.single_tile_agreement(pointwise, data, ref_labels, patch, counts, np.random.default_rng(0), tiles=4)
    assert counts[:, 1:, 1].sum() > 0 and counts[:, 1:, 2].sum() > 0
    np.testing.assert_array_equal(counts[:, 1:, 0], counts[:, 1:, 1])        # |a and b| = |a| = |b|: Dice 1
    np.testing.assert_array_equal(counts[:, 1:, 1], counts[:, 1:, 2])


@pytest.mark.parametrize("mirror_axes", [(), (0, 1, 2)])
def test_numpy_path_equals_the_torch_device_path(mirror_axes):
    """The numpy window (every backend's) equals the PyTorch device path (torch_window, today's GPU code, run on the
    CPU here): same tiles, weights, mirrors and fold averaging; numpy in -> numpy out, torch in -> torch out."""
    from RCSegNeXtCore.inference.backends import TorchBackend
    from RCSegNeXtCore.inference.sliding_window import plan_layout
    from RCSegNeXtCore.inference.torch_window import accumulate_on_device
    data = _volume((11, 37, 29), seed=10)
    nets = [SmallConv().eval(), Pointwise().eval()]
    for logits in (False, True):
        got, stats = predict_sliding_window(nets, data.numpy(), (8, 16, 16), 3, overlap=0.25, mirror_axes=mirror_axes,
                                            batch_tiles=3, logits=logits)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.flags.c_contiguous
        layout = plan_layout(data.numpy(), (8, 16, 16), (1, 1, 1), 0.25, 0)
        backends = [TorchBackend(n) for n in nets]
        combos = mirror_combinations(mirror_axes, layout.window)
        expected = accumulate_on_device(backends, layout, combos, 3, 3, lambda n: None, logits)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        as_tensor, _ = predict_sliding_window(nets, data, (8, 16, 16), 3, overlap=0.25, mirror_axes=mirror_axes,
                                              batch_tiles=3, logits=logits)
        assert isinstance(as_tensor, torch.Tensor)
        np.testing.assert_array_equal(as_tensor.numpy(), got)


def test_tile_buffers_are_reused_and_an_engine_refuses_a_whole_volume_pass():
    """A backend sees the same tile buffer every call (no per-tile allocation) and writes into the caller's logits
    buffer; an engine backend (static patch) refuses the whole-volume pass."""
    from RCSegNeXtCore.inference.backends import BackendError, TorchBackend

    class Recording:
        name = "recording"

        def __init__(self):
            self.inner, self.inputs, self.outputs = TorchBackend(SmallConv().eval()), set(), set()

        def logits(self, tiles, out=None):
            self.inputs.add(tiles.__array_interface__["data"][0])
            self.outputs.add(None if out is None else out.__array_interface__["data"][0])
            return self.inner.logits(tiles, out=out)

    backend = Recording()
    data = _volume((14, 30, 30), seed=11).numpy()
    out, stats = predict_sliding_window([backend], data, (8, 16, 16), 3, mirror_axes=(1,))
    assert stats.forward_passes == 36 and len(backend.inputs) == 2 and len(backend.outputs) == 1  # tile, flipped
    np.testing.assert_allclose(out, predict_sliding_window([backend.inner.network], data, (8, 16, 16), 3,
                                                           mirror_axes=(1,))[0], atol=1e-6)
    with pytest.raises(BackendError, match="whole-volume pass needs the torch backend"):
        predict_sliding_window([backend], data, (8, 16, 16), 3, whole_volume_max_voxels=10 ** 9)
