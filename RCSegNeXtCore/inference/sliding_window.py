"""Sliding-window inference with Gaussian importance weighting, batched tiles and optional mirroring, in numpy on top
of a backend's `logits(tiles)` (inference/backends.py: PyTorch, OpenVINO, ONNX Runtime): no torch import here.

Fast by design (compared with nnU-Net v2's default of a step of half the patch and 8 mirrored passes):
- the volume is ALWAYS tiled at the training patch size by default: a network with instance normalisation (as
  RCSegNeXt) computes its statistics over the extent it sees, so only patch-sized tiles reproduce what it saw in
  training (a whole-volume pass is faster but NOT equivalent: on the trained demo model its labels agreed with the
  nnU-Net-style reference with Dice 0.31 / 0.15 only); `tile_starts` places the FEWEST tiles that cover an axis
  while keeping a minimum overlap, spread evenly (`default_min_overlaps`: 1/4 of the patch, but at least two
  bottleneck cells and at most half the patch); the Gaussian importance map (sigma = patch/8) down-weights every
  tile's borders, where zero padding inside the network makes its output least reliable;
- opt-in (`whole_volume_max_voxels` > 0 or None): ONE whole-volume pass when the stride-padded volume fits memory
  (exact only for networks without instance/global statistics; PyTorch backends only: the engines' graphs have
  the patch size fixed);
- mirroring (test-time augmentation) is opt-in; mirror combinations over axes of length 1 are skipped (a flip of a
  single slice is the identity and cannot change the result).
As in nnU-Net v2, LOGITS are averaged (over mirrors, networks/folds and overlapping tiles, Gaussian-weighted) and the
softmax is taken once at the end.

Memory: the padded input, the (K, z, y, x) sums and the weights are allocated once per volume, the tile, flipped-tile,
logits and weighted-logits buffers once per run and reused for every tile (no per-tile allocation of the volume's
size). A PyTorch backend on a GPU keeps today's device path (`inference/torch_window.py`: tiles gathered, flipped and
accumulated on the GPU, bf16/fp16 autocast, channels_last_3d); it equals this numpy path (Testing/test_sliding_window).

Review map (`disagreement=True`, inference/uncertainty.py): with several members (networks x mirrors) the window
also keeps Gaussian-weighted running sums of each member's softmax (K channels) and entropy (1 channel), from which
the members' disagreement (mutual information / log K) follows at the end; nothing extra is computed otherwise.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from RCSegNeXtCore.data.preprocess import softmax
from RCSegNeXtCore.inference.backends import BackendError
from RCSegNeXtCore.inference.uncertainty import mutual_information, softmax_and_entropy

ProgressFn = Callable[[int, int], None]
# minimum overlap of neighbouring tiles (fraction of the patch): the paper's [24, 512, 512] volume with a
# [16, 320, 320] patch still needs only 2 x 2 x 2 tiles (nnU-Net's step 0.5 places 18); 0.5 reproduces nnU-Net's tiles
DEFAULT_TILE_OVERLAP = 0.25


@dataclass
class WindowStats:
    """What a sliding-window run did: forward passes = tiles x mirrors x networks (one patch each)."""

    mode: str = "tiles"            # "tiles" or "whole-volume"
    tiles: int = 0
    mirrors: int = 1
    networks: int = 1
    forward_passes: int = 0
    padded_shape: Tuple[int, ...] = ()
    tile_grid: List[int] = field(default_factory=list)


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Separable Gaussian peaking at index patch // 2 (nnU-Net's convention, so overlapping tiles are weighted exactly
    as its predictor weights them), sigma = patch * sigma_scale, max 1. Not clamped to a floor: the
    ratio of two overlapping tiles' weights must stay Gaussian even at the patch corners (as in nnU-Net, only exact
    zeros are raised to the smallest non-zero weight)."""
    axes = []
    for size in patch_size:
        centre = size // 2
        sigma = max(size * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = (weight / weight.max()).astype(np.float32)
    if (weight == 0).any():  # underflow only for huge patches: every voxel of a tile still counts a little
        weight[weight == 0] = weight[weight > 0].min()
    return weight


def tile_starts(length: int, patch: int, min_overlap: int) -> List[int]:
    """Fewest evenly spread tile starts covering [0, length) with neighbours overlapping >= min_overlap voxels."""
    if length <= patch:
        return [0]
    step = max(patch - max(min_overlap, 0), 1)
    count = math.ceil((length - patch) / step) + 1
    return [int(round(v)) for v in np.linspace(0, length - patch, count)]


def default_min_overlaps(patch_size: Sequence[int], total_stride: Sequence[int]) -> List[int]:
    """Default minimum overlap per axis (voxels): 1/4 of the patch, raised to two bottleneck cells (2 x the network's
    total stride), never above half the patch (nnU-Net's step 0.5, the densest tiling we place).

    The outermost bottleneck cell of a tile is computed from zero padding, and the decoder spreads that cell over
    `stride` voxels; an overlap of two cells lets every voxel be predicted by a tile in which it lies at least one cell
    inside. It only matters for patches a few cells wide: the paper's [16, 320, 320] patch (20 cells of 16 in-plane)
    keeps overlap 1/4 (2 x 2 x 2 tiles on [24, 512, 512]); the demo's [16, 64, 64] patch (4 cells) gets nnU-Net's
    step 0.5, where 1/4 left the middle of a 100-voxel axis in the border cells of both tiles (docs/inference.md;
    measured agreement: docs/benchmarks.md)."""
    return [min(max(int(math.ceil(DEFAULT_TILE_OVERLAP * p)), 2 * int(s)), int(p) // 2)
            for p, s in zip(patch_size, total_stride)]


def tile_grid(shape: Sequence[int], patch_size: Sequence[int], overlap: Optional[float] = None,
              total_stride: Sequence[int] = (1, 1, 1)) -> List[Tuple[slice, ...]]:
    """All tiles (as slices) of a volume at least as large as the patch; minimum overlap = overlap x patch, or
    `default_min_overlaps` when overlap is None."""
    overlaps = default_min_overlaps(patch_size, total_stride) if overlap is None else \
        [int(math.ceil(overlap * p)) for p in patch_size]
    per_axis = [tile_starts(s, p, o) for s, p, o in zip(shape, patch_size, overlaps)]
    return [tuple(slice(a, a + p) for a, p in zip(starts, patch_size)) for starts in itertools.product(*per_axis)]


def mirror_combinations(mirror_axes: Sequence[int], shape: Sequence[int]) -> List[Tuple[int, ...]]:
    """Every subset of the mirror axes (spatial, 0..2), skipping axes of length 1 (a flip there changes nothing)."""
    axes = [int(a) for a in mirror_axes if shape[int(a)] > 1]
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]



def default_whole_volume_voxels(device: Any = "cpu", base_channels: int = 32) -> int:
    """Largest volume (voxels) run in one pass: free accelerator memory (CUDA), or a share of the host's available
    memory, divided by an estimate of the live activations per voxel (width x expansion x float32 x ~8 tensors)."""
    per_voxel = max(base_channels, 4) * 2 * 4 * 8
    if str(device).startswith("cuda"):
        import torch
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * 0.6 / (per_voxel / 2))  # half precision activations
    available = 8 * 1024 ** 3
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(min(available * 0.3, 16 * 1024 ** 3) / per_voxel)


def pad_to(data: np.ndarray, target: Sequence[int]) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Zero-pad (C, z, y, x) symmetrically up to `target`; returns the padded array (`data` itself when nothing is
    padded) and the slices of the original inside it."""
    pads, region = [(0, 0)], []
    for size, want in zip(data.shape[1:], target):
        extra = max(int(want) - int(size), 0)
        before = extra // 2
        pads.append((before, extra - before))
        region.append(slice(before, before + int(size)))
    if any(p for pair in pads for p in pair):
        data = np.pad(data, pads, mode="constant", constant_values=0.0)
    return data, tuple(region)


class Layout(NamedTuple):
    padded: np.ndarray                  # (C, z, y, x) float32, padded up to the window / the total stride
    region: Tuple[slice, ...]           # the input inside `padded`
    window: Tuple[int, ...]             # what one forward pass sees
    tiles: List[Tuple[slice, ...]]
    weight: np.ndarray                  # per-voxel weight of a window's logits (Gaussian for tiles)
    whole: bool                         # one pass over the whole volume


def plan_layout(data: np.ndarray, patch_size: Sequence[int], total_stride: Sequence[int], overlap: Optional[float],
                whole_volume_max_voxels: Optional[int], device: Any = "cpu", base_channels: int = 32) -> Layout:
    """Tiles at the patch size, or one whole-volume window when allowed and it fits (see predict_sliding_window)."""
    shape = tuple(int(s) for s in data.shape[1:])
    stride_padded = [int(math.ceil(s / t) * t) for s, t in zip(shape, total_stride)]
    if whole_volume_max_voxels is None:
        whole_volume_max_voxels = default_whole_volume_voxels(device, base_channels)
    if whole_volume_max_voxels > 0 and int(np.prod(stride_padded)) <= whole_volume_max_voxels:
        padded, region = pad_to(data, stride_padded)
        window = tuple(int(s) for s in padded.shape[1:])
        return Layout(padded, region, window, [tuple(slice(0, s) for s in window)],
                      np.ones(window, dtype=np.float32), True)
    padded, region = pad_to(data, [max(s, p) for s, p in zip(shape, patch_size)])
    window = tuple(int(p) for p in patch_size)
    return Layout(padded, region, window, tile_grid(padded.shape[1:], window, overlap, total_stride),
                  gaussian_importance(window), False)


def as_backends(networks: Sequence[Any], device: Any = "cpu", amp: bool = False) -> List[Any]:
    """Backends as given (anything with `logits(tiles)`); torch modules wrapped as PyTorch backends on `device`."""
    from RCSegNeXtCore.inference.backends import TorchBackend
    return [n if hasattr(n, "logits") else TorchBackend(n, device=device, amp=amp) for n in networks]


def _on_accelerator(backends: Sequence[Any]) -> bool:
    """True when every backend is PyTorch on a GPU (the device path of torch_window)."""
    return bool(backends) and all(getattr(b, "name", "") == "torch" and str(b.device) != "cpu" for b in backends)


def _width(backends: Sequence[Any]) -> int:
    """The first convolution's output channels of a PyTorch backend's network (the whole-volume memory estimate)."""
    for backend in backends:
        network = getattr(backend, "network", None)
        for module in (network.modules() if network is not None else ()):
            if type(module).__name__ == "Conv3d":
                return int(module.out_channels)
    return 32


class Buffers:
    """The per-tile arrays of one run, allocated once and reused for every batch of tiles."""

    def __init__(self, batch: int, channels: int, num_classes: int, window: Sequence[int], members: bool = False):
        self.tiles = np.empty((batch, channels, *window), dtype=np.float32)
        self.flipped = np.empty_like(self.tiles)
        self.logits = np.empty((batch, num_classes, *window), dtype=np.float32)
        self.mean = np.empty_like(self.logits)
        self.weighted = np.empty((num_classes, *window), dtype=np.float32)
        self.members = members   # per-member softmax and entropy, averaged over members (the review map)
        if members:
            self.member_p, self.scratch, self.mean_p = (np.empty_like(self.logits) for _ in range(3))
            self.member_h, self.mean_h = (np.empty((batch, *window), dtype=np.float32) for _ in range(2))


def _mean_logits(backends, buffers: Buffers, n: int, combos, on_pass: Callable[[], None]) -> np.ndarray:
    """Logits of the first `n` tiles in `buffers.tiles`, averaged over the backends (folds) and mirrorings, into
    `buffers.mean[:n]`; `on_pass` after each pass."""
    tiles, mean = buffers.tiles[:n], buffers.mean[:n]
    mean.fill(0.0)
    if buffers.members:
        buffers.mean_p[:n].fill(0.0)
        buffers.mean_h[:n].fill(0.0)
    for backend in backends:
        for combo in combos:
            axes = tuple(a + 2 for a in combo)
            x = tiles
            if axes:
                x = buffers.flipped[:n]
                np.copyto(x, np.flip(tiles, axes))
            logits = backend.logits(x, out=buffers.logits[:n])
            logits = np.flip(logits, axes) if axes else logits
            mean += logits
            if buffers.members:
                softmax_and_entropy(logits, buffers.member_p[:n], buffers.member_h[:n], buffers.scratch[:n])
                buffers.mean_p[:n] += buffers.member_p[:n]
                buffers.mean_h[:n] += buffers.member_h[:n]
            on_pass()
    mean /= len(backends) * len(combos)
    if buffers.members:
        buffers.mean_p[:n] /= len(backends) * len(combos)
        buffers.mean_h[:n] /= len(backends) * len(combos)
    return mean


def predict_sliding_window(networks: Sequence[Any], data, patch_size: Sequence[int], num_classes: int, *,
                           total_stride: Sequence[int] = (1, 1, 1), overlap: Optional[float] = None,
                           mirror_axes: Sequence[int] = (), batch_tiles: int = 1,
                           whole_volume_max_voxels: Optional[int] = 0, device: Any = "cpu", amp: bool = False,
                           progress: Optional[ProgressFn] = None, logits: bool = False,
                           disagreement: bool = False) -> Tuple[Any, ...]:
    """Softmax probabilities (K, z, y, x) float32 for a preprocessed (C, z, y, x) volume; with `logits=True` the
    averaged logits instead (nnU-Net resamples those to the original grid before the softmax). A numpy array for
    numpy `data`; a CPU torch tensor for a torch tensor (callers that work in torch). Returns (values, stats);
    with `disagreement=True` (values, stats, map): the members' disagreement (z, y, x) float32 in [0, 1]
    (inference/uncertainty.py; always numpy), None when there is one member (one network, no mirroring).

    `networks`: one backend per fold (inference/backends.py), or torch modules (wrapped as PyTorch backends on
    `device`, autocast on CUDA when `amp`). PyTorch backends on a GPU run the device path (torch_window).
    `whole_volume_max_voxels`: 0 (default) always tiles at the patch size (what a patch-trained network with
    instance norms needs); > 0 runs ONE pass over the whole volume when its stride-padded size has at most this many
    voxels, None sizes that limit from free memory (faster, not equivalent for instance-norm networks; PyTorch
    backends only). `overlap`: minimum tile overlap as a fraction of the patch; None (default):
    `default_min_overlaps` for the network's `total_stride`.
    """
    as_torch = hasattr(data, "detach")
    array = np.ascontiguousarray(data.detach().cpu().numpy() if as_torch else data, dtype=np.float32)
    backends = as_backends(networks, device, amp)
    if not backends:
        raise ValueError("predict_sliding_window needs at least one network or backend")
    accelerator = _on_accelerator(backends)
    layout = plan_layout(array, patch_size, total_stride, overlap, whole_volume_max_voxels,
                         backends[0].device if accelerator else "cpu",
                         _width(backends) if whole_volume_max_voxels is None else 32)
    if layout.whole and any(getattr(b, "name", "") != "torch" for b in backends):
        engine = next(b.name for b in backends if getattr(b, "name", "") != "torch")
        raise BackendError(f"a whole-volume pass needs the torch backend: the {engine} graph has the patch size "
                           "fixed; tile (the default) or use --backend torch")
    combos = mirror_combinations(mirror_axes, layout.window)
    stats = WindowStats("whole-volume" if layout.whole else "tiles", len(layout.tiles), len(combos), len(backends), 0,
                        tuple(int(s) for s in layout.padded.shape[1:]),
                        [len({t[a].start for t in layout.tiles}) for a in range(3)])
    total = len(layout.tiles) * len(combos) * len(backends)

    def passed(n: int) -> None:
        stats.forward_passes += n
        if progress is not None:
            progress(stats.forward_passes, total)

    members = disagreement and len(combos) * len(backends) > 1
    if accelerator:
        from RCSegNeXtCore.inference.torch_window import accumulate_on_device
        out = accumulate_on_device(backends, layout, combos, num_classes, max(int(batch_tiles), 1), passed, logits,
                                   members=members)
    else:
        out = _accumulate(backends, layout, combos, num_classes, max(int(batch_tiles), 1), passed, logits,
                          members=members)
    summed, spread = out if members else (out, None)
    if as_torch:
        import torch
        summed = torch.from_numpy(summed)
    return (summed, stats, spread) if disagreement else (summed, stats)


def _accumulate(backends, layout: Layout, combos, num_classes: int, step: int, passed: Callable[[int], None],
                logits: bool, members: bool = False):
    """The numpy path: Gaussian-weighted sums of every tile's mean logits, normalised, cropped to the input, softmax
    unless `logits`. With `members`: (that, the members' disagreement map) from running sums of the members'
    softmax and entropy, weighted like the logits."""
    padded, weight = layout.padded, layout.weight
    summed = np.zeros((num_classes, *padded.shape[1:]), dtype=np.float32)
    weights = np.zeros(padded.shape[1:], dtype=np.float32)
    buffers = Buffers(min(step, len(layout.tiles)), padded.shape[0], num_classes, layout.window, members)
    if members:
        sum_p = np.zeros_like(summed)
        sum_h = np.zeros_like(weights)
    for first in range(0, len(layout.tiles), step):
        batch = layout.tiles[first:first + step]
        for i, t in enumerate(batch):
            buffers.tiles[i] = padded[(slice(None), *t)]
        mean = _mean_logits(backends, buffers, len(batch), combos, lambda n=len(batch): passed(n))
        for i, (t, p) in enumerate(zip(batch, mean)):
            np.multiply(p, weight, out=buffers.weighted)
            summed[(slice(None), *t)] += buffers.weighted
            weights[t] += weight
            if members:
                np.multiply(buffers.mean_p[i], weight, out=buffers.weighted)
                sum_p[(slice(None), *t)] += buffers.weighted
                np.multiply(buffers.mean_h[i], weight, out=buffers.weighted[0])
                sum_h[t] += buffers.weighted[0]
    np.maximum(weights, 1e-12, out=weights)
    summed /= weights
    summed = np.ascontiguousarray(summed[(slice(None), *layout.region)])
    summed = summed if logits else softmax(summed)
    if not members:
        return summed
    sum_p /= weights
    sum_h /= weights
    return summed, mutual_information(sum_p[(slice(None), *layout.region)], sum_h[layout.region])
