"""Intensity augmentation given its drawn parameters, as batchgenerators v1 computes it (per channel where nnU-Net
configures it so), plus RCSegNeXt 0.1's blur, low resolution and gamma (the "0.1" intensity variant).

Every function takes x [B, C, Z, Y, X] float and returns a new tensor; `items` are (sample, channel) index tensors.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from RCSegNeXtCore.training.augment.kernels import gaussian_blur, nearest_indices, resize_along, spline_resize_matrix


def _per(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] or [B, C] values shaped to broadcast over x [B, C, ...]."""
    return values.to(x.device, x.dtype).view(*values.shape, *([1] * (x.ndim - values.ndim)))


def add_noise(x: torch.Tensor, sd: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x + sd * noise, sd [B] (0 for samples not augmented)."""
    return x + _per(sd, x) * noise.to(x.device, x.dtype)


def blur(x: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Gaussian blur of x[samples[i], channels[i]] with sigmas[i] on every spatial axis (scipy gaussian_filter)."""
    x = x.clone()
    if len(samples):
        x[samples, channels] = gaussian_blur(x[samples, channels], sigmas, (1, 2, 3))
    return x


def multiply(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness: x * factors [B, C] (1 where not augmented)."""
    return x * _per(factors, x)


def contrast(x: torch.Tensor, factors: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Per channel: (x - mean) * factor + mean, clipped to the channel's range before (where apply [B])."""
    dims = tuple(range(2, x.ndim))
    mean = x.mean(dims, keepdim=True)
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    out = torch.minimum(torch.maximum((x - mean) * _per(factors, x) + mean, lo), hi)
    return torch.where(_per(apply, x).bool(), out, x)


def low_res(x: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor, zooms: Sequence[float],
            ignore_axis0: bool) -> torch.Tensor:
    """x[samples[i], channels[i]] down-sampled to round(shape * zooms[i]) by nearest neighbour and back by the cubic
    spline, clipped to the down-sampled range (skimage resize, mode "edge"); axis 0 kept with ignore_axis0."""
    x = x.clone()
    shape = np.array(x.shape[2:])
    for b, c, zoom in zip(samples.tolist(), channels.tolist(), zooms):
        small = np.maximum(1, np.round(shape * float(zoom)).astype(int))
        if ignore_axis0:
            small[0] = shape[0]
        y = x[b, c]
        for axis, (m, n) in enumerate(zip(shape, small)):
            if m != n:
                y = y.index_select(axis, torch.as_tensor(nearest_indices(int(m), int(n)), device=x.device))
        lo, hi = y.min(), y.max()
        for axis, (m, n) in enumerate(zip(shape, small)):
            if m != n:
                y = resize_along(y, axis, spline_resize_matrix(int(n), int(m)))
        x[b, c] = y.clamp(lo, hi)
    return x


def gamma(x: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor, gammas: torch.Tensor,
          invert: bool) -> torch.Tensor:
    """Per channel: ((x - min) / (range + 1e-7)) ** gamma * (range + 1e-7) + min, mean and SD kept (of -x with
    invert)."""
    x = x.clone()
    if not len(samples):
        return x
    v = x[samples, channels].flatten(1)
    v = -v if invert else v
    mean, sd = v.mean(1, keepdim=True), v.std(1, unbiased=False, keepdim=True)
    lo = v.amin(1, keepdim=True)
    span = v.amax(1, keepdim=True) - lo + 1e-7
    y = ((v - lo) / span) ** gammas.to(v.device, v.dtype)[:, None] * span + lo
    y = y - y.mean(1, keepdim=True)
    y = y / (y.std(1, unbiased=False, keepdim=True) + 1e-8) * sd + mean
    x[samples, channels] = (-y if invert else y).view(len(samples), *x.shape[2:])
    return x


# -- RCSegNeXt 0.1 (intensity variant "0.1") -------------------------------------------------------------------------
def blur_01(x: torch.Tensor, sigma: float, in_plane: bool) -> torch.Tensor:
    """One sample [C, z, y, x]: separable Gaussian, radius ceil(3 sigma), edge replicated; in-plane axes only."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = x[:, None]
    for axis in ((1, 2) if in_plane else (0, 1, 2)):
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[:, 0]


def low_res_01(x: torch.Tensor, zoom: float, in_plane: bool) -> torch.Tensor:
    """One sample [C, z, y, x]: nearest down-sampling, trilinear up-sampling; in-plane only."""
    size = list(x.shape[1:])
    small = [s if (i == 0 and in_plane) else max(1, int(round(s * zoom))) for i, s in enumerate(size)]
    down = F.interpolate(x[None], size=small, mode="nearest")
    return F.interpolate(down, size=size, mode="trilinear", align_corners=False)[0]


def gamma_01(x: torch.Tensor, g: float, invert: bool) -> torch.Tensor:
    """One sample [C, z, y, x], all channels at once, sample SD (n - 1)."""
    if invert:
        x = -x
    mean, std = x.mean(), x.std()
    lo, hi = x.min(), x.max()
    y = ((x - lo) / (hi - lo + 1e-7)) ** g * (hi - lo + 1e-7) + lo
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return -y if invert else y
