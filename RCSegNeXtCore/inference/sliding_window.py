"""Sliding-window inference with Gaussian importance weighting, batched tiles and optional mirroring.

Fast by design (compared with nnU-Net v2's default of a step of half the patch and 8 mirrored passes):
- the volume is ALWAYS tiled at the training patch size by default: a network with instance normalisation (as
  RCSegNeXt) computes its statistics over the extent it sees, so only patch-sized tiles reproduce what it saw in
  training (a whole-volume pass is faster but NOT equivalent: on the trained demo model its labels agreed with the
  nnU-Net-style reference with Dice 0.31 / 0.15 only); `tile_starts` places the FEWEST tiles that cover an axis
  while keeping a minimum overlap, spread evenly (`default_min_overlaps`: 1/4 of the patch, but at least two
  bottleneck cells and at most half the patch); the Gaussian importance map (sigma = patch/8) down-weights every
  tile's borders, where zero padding inside the network makes its output least reliable;
- opt-in (`whole_volume_max_voxels` > 0 or None): ONE whole-volume pass when the stride-padded volume fits memory
  (exact only for networks without instance/global statistics);
- mirroring (test-time augmentation) is opt-in; mirror combinations over axes of length 1 are skipped (a flip of a
  single slice is the identity and cannot change the result).
As in nnU-Net v2, LOGITS are averaged (over mirrors, networks/folds and overlapping tiles, Gaussian-weighted) and the
softmax is taken once at the end.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

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


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
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
    return torch.from_numpy(weight)


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


def default_whole_volume_voxels(device: torch.device, base_channels: int = 32) -> int:
    """Largest volume (voxels) run in one pass: free accelerator memory, or a share of the host's available memory,
    divided by an estimate of the live activations per voxel (width x expansion x float32 x ~8 tensors)."""
    per_voxel = max(base_channels, 4) * 2 * 4 * 8
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
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


def _pad_to(data: torch.Tensor, target: Sequence[int]) -> Tuple[torch.Tensor, Tuple[slice, ...]]:
    """Zero-pad (C, z, y, x) symmetrically up to `target`; returns the padded tensor and the slices of the original."""
    pads, region = [], []
    for size, want in zip(data.shape[1:], target):
        extra = max(int(want) - int(size), 0)
        before = extra // 2
        pads.append((before, extra - before))
        region.append(slice(before, before + int(size)))
    flat = [v for pair in reversed(pads) for v in pair]
    if any(flat):
        data = torch.nn.functional.pad(data, flat, mode="constant", value=0.0)
    return data, tuple(region)


class _Layout(NamedTuple):
    padded: torch.Tensor                # (C, z, y, x), padded up to the window / the total stride
    region: Tuple[slice, ...]           # the input inside `padded`
    window: Tuple[int, ...]             # what one forward pass sees
    tiles: List[Tuple[slice, ...]]
    weight: torch.Tensor                # per-voxel weight of a window's logits (Gaussian for tiles)
    whole: bool                         # one pass over the whole volume


def _layout(networks, data: torch.Tensor, patch_size: Sequence[int], total_stride: Sequence[int],
            overlap: Optional[float], whole_volume_max_voxels: Optional[int], device: torch.device) -> _Layout:
    """Tiles at the patch size, or one whole-volume window when allowed and it fits (see predict_sliding_window)."""
    shape = tuple(int(s) for s in data.shape[1:])
    stride_padded = [int(math.ceil(s / t) * t) for s, t in zip(shape, total_stride)]
    if whole_volume_max_voxels is None:
        width = next((m.out_channels for m in networks[0].modules() if isinstance(m, torch.nn.Conv3d)), 32)
        whole_volume_max_voxels = default_whole_volume_voxels(device, width)
    if whole_volume_max_voxels > 0 and int(np.prod(stride_padded)) <= whole_volume_max_voxels:
        padded, region = _pad_to(data, stride_padded)
        window = tuple(int(s) for s in padded.shape[1:])
        return _Layout(padded, region, window, [tuple(slice(0, s) for s in window)],
                       torch.ones(window, dtype=torch.float32), True)
    padded, region = _pad_to(data, [max(s, p) for s, p in zip(shape, patch_size)])
    window = tuple(int(p) for p in patch_size)
    return _Layout(padded, region, window, tile_grid(padded.shape[1:], window, overlap, total_stride),
                   gaussian_importance(window), False)


def _mean_logits(networks, batch: torch.Tensor, combos, num_classes: int, window, device: torch.device,
                 amp: bool, on_pass: Callable[[], None]) -> torch.Tensor:
    """Logits of a batch of windows averaged over the networks (folds) and mirrorings; `on_pass` after each pass."""
    cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    logits_sum = torch.zeros((batch.shape[0], num_classes, *window), dtype=torch.float32, device=device)
    for network in networks:
        for combo in combos:
            dims = [a + 2 for a in combo]
            x = torch.flip(batch, dims) if dims else batch
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp and cuda):
                logits = network(x)
            if isinstance(logits, (list, tuple)):  # deep supervision: full resolution first
                logits = logits[0]
            logits = logits.float()
            logits_sum += torch.flip(logits, dims) if dims else logits
            on_pass()
    return logits_sum / (len(networks) * len(combos))


@torch.inference_mode()
def predict_sliding_window(networks: Sequence[torch.nn.Module], data: torch.Tensor, patch_size: Sequence[int],
                           num_classes: int, *, total_stride: Sequence[int] = (1, 1, 1), overlap: Optional[float] = None,
                           mirror_axes: Sequence[int] = (), batch_tiles: int = 1,
                           whole_volume_max_voxels: Optional[int] = 0, device: str | torch.device = "cpu",
                           amp: bool = False, progress: Optional[ProgressFn] = None, logits: bool = False
                           ) -> Tuple[torch.Tensor, WindowStats]:
    """Softmax probabilities (K, z, y, x) float32 on the CPU for a preprocessed (C, z, y, x) volume; with
    `logits=True` the averaged logits instead (nnU-Net resamples those to the original grid before the softmax).

    `whole_volume_max_voxels`: 0 (default) always tiles at the patch size (what a patch-trained network with
    instance norms needs); > 0 runs ONE pass over the whole volume when its stride-padded size has at most this many
    voxels, None sizes that limit from free memory (faster, not equivalent for instance-norm networks).
    `overlap`: minimum tile overlap as a fraction of the patch; None (default): `default_min_overlaps` for the
    network's `total_stride`.
    """
    device = torch.device(device)
    data = torch.as_tensor(data, dtype=torch.float32)
    layout = _layout(networks, data, patch_size, total_stride, overlap, whole_volume_max_voxels, device)
    tiles, window = layout.tiles, layout.window
    combos = mirror_combinations(mirror_axes, window)
    stats = WindowStats("whole-volume" if layout.whole else "tiles", len(tiles), len(combos), len(networks), 0,
                        tuple(int(s) for s in layout.padded.shape[1:]),
                        [len({t[a].start for t in tiles}) for a in range(3)])
    total = len(tiles) * len(combos) * len(networks)
    memory_format = torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
    padded, weight = layout.padded.to(device), layout.weight.to(device)
    summed = torch.zeros((num_classes, *padded.shape[1:]), dtype=torch.float32, device=device)
    weights = torch.zeros(padded.shape[1:], dtype=torch.float32, device=device)
    step = max(int(batch_tiles), 1)
    for first in range(0, len(tiles), step):
        batch_slices = tiles[first:first + step]

        def on_pass(n=len(batch_slices)) -> None:
            stats.forward_passes += n
            if progress is not None:
                progress(stats.forward_passes, total)
        batch = torch.stack([padded[(slice(None), *t)] for t in batch_slices]).contiguous(memory_format=memory_format)
        mean = _mean_logits(networks, batch, combos, num_classes, window, device, amp, on_pass)
        for t, p in zip(batch_slices, mean):
            summed[(slice(None), *t)] += p * weight
            weights[t] += weight
    summed /= weights.clamp_min(1e-12)
    summed = summed[(slice(None), *layout.region)]
    return (summed if logits else torch.softmax(summed, dim=0)).cpu(), stats
