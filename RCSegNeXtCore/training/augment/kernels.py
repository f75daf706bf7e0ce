"""The interpolation and filter kernels of nnU-Net v1's augmentation (batchgenerators on scipy.ndimage / skimage), as
torch operations on the training device.

- Cubic B-spline interpolation at arbitrary points, as scipy's `map_coordinates(order=3, mode="constant")`: the input
  is turned into B-spline coefficients (mirror boundary; one matrix product per axis), evaluated at points inside
  [0, n - 1] on every axis, 0 at points outside. `bspline_prefilter` + `bspline_sample` (2^d linear look-ups per
  point).
- Linear interpolation of one-hot labels with the same inside rule (`linear_sample`, `nearest_sample`).
- Resizing as skimage's `resize(mode="edge", anti_aliasing=False)`: order 0 picks `nearest_indices`, order 3 is the
  matrix `spline_resize_matrix` (edge padding of 12, B-spline coefficients, evaluation on the half-voxel grid).
- Gaussian smoothing as scipy's `gaussian_filter(mode="reflect", truncate=4)` with one sigma per item
  (`gaussian_blur`, one matrix product per axis).
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# the numpy kernels shared with data/resample.py (preprocessing, inference without torch) live there
from RCSegNeXtCore.data.resample import (RESIZE_PAD, mirror_index, nearest_indices,  # noqa: F401 (re-exported)
                                         spline_resize_matrix)


# -- boundary extensions ------------------------------------------------------------------------------------------
def symmetric_index(n: int, lo: int, hi: int) -> np.ndarray:
    """Indices of positions lo..hi-1 of the symmetric extension (d c b a | a b c d | d c b a), scipy's "reflect"."""
    i = np.arange(lo, hi)
    period = 2 * n
    j = np.mod(i, period)
    return np.where(j >= n, period - 1 - j, j)


# -- cubic B-spline interpolation ---------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def mirror_prefilter_matrix(n: int) -> np.ndarray:
    """(n, n) float64: samples -> cubic B-spline coefficients with the mirror boundary (scipy's spline_filter for
    mode "constant"), the exact inverse of the (1, 4, 1) / 6 system."""
    system = np.zeros((n, n))
    for k, w in ((-1, 1 / 6), (0, 4 / 6), (1, 1 / 6)):
        np.add.at(system, (np.arange(n), mirror_index(n, k, n + k)), w)
    return np.linalg.inv(system)


def along(x: torch.Tensor, dim: int, matrix: torch.Tensor) -> torch.Tensor:
    """Apply `matrix` ([n_out, n] or one per leading item, [N, n_out, n]) along `dim` of x."""
    if matrix.ndim == 3:                                   # per item: broadcast over the middle axes
        matrix = matrix.view(matrix.shape[0], *([1] * (x.ndim - 3)), *matrix.shape[1:])
    if dim in (-1, x.ndim - 1):
        return x @ matrix.transpose(-1, -2)
    return (matrix @ x.movedim(dim, -2)).movedim(-2, dim)


def bspline_prefilter(x: torch.Tensor, dims: Sequence[int], recursive: bool | None = None) -> torch.Tensor:
    """B-spline coefficients of `x` along `dims` (mirror boundary, scipy's spline_filter for mode "constant"): the
    exact inverse as one matrix product per axis (on a GPU), or the causal + anti-causal recursion (on the CPU,
    where the dense product of a long axis costs more)."""
    recursive = x.device.type == "cpu" if recursive is None else recursive
    for dim in dims:
        n = x.shape[dim]
        if n > 1:
            x = _prefilter_recursive(x, dim) if recursive else \
                along(x, dim, torch.as_tensor(mirror_prefilter_matrix(n), dtype=x.dtype, device=x.device))
    return x


POLE = 3 ** 0.5 - 2.0                  # the cubic B-spline's pole
HORIZON = 24                           # |POLE| ** 24 < 2e-14: the mirror start of the causal pass, summed that far


def _prefilter_recursive(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unser's recursion with the mirror boundary (as scipy): c+[0] = sum_k z^|k| s[k] over the mirror extension,
    c+[k] = 6 s[k] + z c+[k - 1]; c[n - 1] = z / (z^2 - 1) (c+[n - 1] + z c+[n - 2]), c[k] = z (c[k + 1] - c+[k])."""
    z = POLE
    s = 6.0 * x.movedim(dim, 0).contiguous()             # [n, ...]: each step works on one contiguous row
    n = s.shape[0]
    ext = torch.as_tensor(mirror_index(n, 0, HORIZON), device=x.device)
    weights = torch.tensor([z ** k for k in range(HORIZON)], dtype=s.dtype, device=x.device)
    causal = torch.empty_like(s)
    causal[0] = torch.tensordot(weights, s.index_select(0, ext), dims=1)
    for k in range(1, n):
        torch.add(s[k], causal[k - 1], alpha=z, out=causal[k])
    out = torch.empty_like(s)
    out[n - 1] = (z / (z * z - 1)) * (causal[n - 1] + z * causal[n - 2])
    for k in range(n - 2, -1, -1):
        torch.sub(out[k + 1], causal[k], out=out[k]).mul_(z)
    return out.movedim(0, dim)


def _normalised(points: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Index coordinates [..., d] (axis order of the array) -> grid_sample's [-1, 1] grid (x first, corners aligned)."""
    scale = torch.tensor([2.0 / (s - 1) if s > 1 else 0.0 for s in sizes], dtype=points.dtype, device=points.device)
    offset = torch.tensor([-1.0 if s > 1 else 0.0 for s in sizes], dtype=points.dtype, device=points.device)
    return (points * scale + offset).flip(-1)


INSIDE_TOLERANCE = 1e-4          # voxels: a point this close to the border counts as inside (float32 angles)


def inside(points: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Points within [0, n - 1] on every axis (scipy's mode "constant": the others take the constant)."""
    upper = torch.tensor([s - 1 + INSIDE_TOLERANCE for s in sizes], dtype=points.dtype, device=points.device)
    return ((points >= -INSIDE_TOLERANCE) & (points <= upper)).all(-1)


def bspline_sample(coefficients: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline interpolation of `coefficients` [N, C, *S] (from bspline_prefilter) at `points` [N, *P, d]
    (index units), 0 outside -> [N, C, *P]. Per axis the four B-spline taps are two linear look-ups at shifted
    positions (mirror boundary = grid_sample's reflection with aligned corners)."""
    sizes = coefficients.shape[2:]
    base = torch.floor(points)
    t = (points - base).to(coefficients.dtype)
    base = base.to(coefficients.dtype)
    t2 = t * t
    t3 = t2 * t
    w0, w3 = (1 - 3 * t + 3 * t2 - t3) / 6, t3 / 6
    w1, w2 = (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6
    gains = (w0 + w1, w2 + w3)
    positions = (base - 1 + w1 / gains[0], base + 1 + w3 / gains[1])
    del t, t2, t3, w0, w1, w2, w3
    d = points.shape[-1]
    out = None
    for choice in itertools.product((0, 1), repeat=d):
        where = torch.stack([positions[c][..., a] for a, c in enumerate(choice)], -1)
        weight = gains[choice[0]][..., 0]
        for a in range(1, d):
            weight = weight * gains[choice[a]][..., a]
        value = F.grid_sample(coefficients, _normalised(where, sizes), mode="bilinear", padding_mode="reflection",
                              align_corners=True)
        term = value * weight[:, None]
        out = term if out is None else out.add_(term)
    return out * inside(points, sizes)[:, None].to(out.dtype)


def linear_sample(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of `values` [N, C, *S] at `points` [N, *P, d] (index units), 0 outside."""
    sizes = values.shape[2:]
    grid = _normalised(points.to(values.dtype), sizes)
    out = F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out * inside(points, sizes)[:, None].to(out.dtype)


def nearest_sample(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour values of `values` [N, C, *S] at `points` [N, *P, d] (index floor(p + 0.5) as scipy's
    order 0, clamped to the array; inside points only are meaningful) -> [N, C, *P]."""
    sizes = values.shape[2:]
    flat = torch.zeros(points.shape[:-1], dtype=torch.long, device=values.device)
    for axis, size in enumerate(sizes):
        index = torch.floor(points[..., axis] + 0.5).long().clamp(0, size - 1).to(values.device)
        flat = flat * size + index
    n, c = values.shape[:2]
    gathered = values.reshape(n, c, -1).gather(2, flat.reshape(n, 1, -1).expand(n, c, -1))
    return gathered.reshape(n, c, *points.shape[1:-1])


# -- resizing (skimage.transform.resize, mode "edge", no anti-aliasing) ------------------------------------------------
def resize_along(x: torch.Tensor, dim: int, matrix: np.ndarray) -> torch.Tensor:
    """Apply a (n, m) resize matrix along `dim` of x."""
    return along(x, dim, torch.as_tensor(matrix, dtype=x.dtype, device=x.device))


# -- Gaussian smoothing (scipy.ndimage.gaussian_filter, mode "reflect", truncate 4) ---------------------------------
def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """scipy's kernel for `sigma` (its radius int(4 sigma + 0.5)), zero-padded to 2 * radius + 1 taps."""
    own = int(4.0 * sigma + 0.5)
    x = np.arange(-own, own + 1, dtype=np.float64)
    phi = np.exp(-0.5 / sigma ** 2 * x ** 2)
    return np.pad(phi / phi.sum(), radius - own)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float64: scipy's 1D Gaussian of `sigma` on n samples, the symmetric boundary folded in."""
    radius = int(4.0 * sigma + 0.5)
    kernel = gaussian_kernel(sigma, radius)
    matrix = np.zeros((n, n))
    rows = np.arange(n)
    for k, w in zip(range(-radius, radius + 1), kernel):
        np.add.at(matrix, (rows, symmetric_index(n, k, n + k)), w)
    return matrix


def gaussian_blur(x: torch.Tensor, sigmas: Sequence[float], dims: Sequence[int]) -> torch.Tensor:
    """Item i of x [N, *S] smoothed with sigmas[i] (voxels) along `dims` (1-based, after the item axis)."""
    for dim in dims:
        n = x.shape[dim]
        matrices = np.stack([gaussian_matrix(n, float(s)) for s in sigmas])
        x = along(x, dim, torch.as_tensor(matrices, dtype=x.dtype, device=x.device))
    return x
