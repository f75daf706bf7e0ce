"""The interpolation and filter kernels of nnU-Net v1's augmentation (batchgenerators on scipy.ndimage / skimage), as
torch operations on the training device.

- Cubic B-spline interpolation at arbitrary points, as scipy's `map_coordinates(order=3, mode="constant")`: the input
  is turned into B-spline coefficients (mirror boundary), evaluated at points inside [0, n - 1] on every axis, 0 at
  points outside. `bspline_prefilter` + `bspline_sample` (2^d linear look-ups per point).
- Linear interpolation of one-hot labels with the same inside rule (`linear_sample`, `nearest_sample`).
- Resizing as skimage's `resize(mode="edge", anti_aliasing=False)`: order 0 picks `nearest_indices`, order 3 is the
  matrix `spline_resize_matrix` (edge padding of 12, B-spline coefficients, evaluation on the half-voxel grid).
- Gaussian smoothing as scipy's `gaussian_filter(mode="reflect", truncate=4)` with one sigma per item
  (`gaussian_blur`).
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

POLE = math.sqrt(3.0) - 2.0       # the cubic B-spline's pole
PREFILTER_TAPS = 16               # |POLE| ** 17 < 2e-10: the truncated direct filter is exact in float32
RESIZE_PAD = 12                   # scipy pads by 12 (edge) before its spline filter for mode "nearest"


# -- boundary extensions ------------------------------------------------------------------------------------------
def mirror_index(n: int, lo: int, hi: int) -> np.ndarray:
    """Indices of positions lo..hi-1 of the mirror extension (d c b | a b c d | c b a), scipy's "mirror"."""
    i = np.arange(lo, hi)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j >= n, period - j, j)


def symmetric_index(n: int, lo: int, hi: int) -> np.ndarray:
    """Indices of positions lo..hi-1 of the symmetric extension (d c b a | a b c d | d c b a), scipy's "reflect"."""
    i = np.arange(lo, hi)
    period = 2 * n
    j = np.mod(i, period)
    return np.where(j >= n, period - 1 - j, j)


def _rows(x: torch.Tensor, dim: int):
    """x with `dim` last, flattened to rows [-1, n], and the function putting rows of any length back."""
    moved = x.movedim(dim, -1)
    lead = moved.shape[:-1]
    return moved.reshape(-1, moved.shape[-1]), lambda rows: rows.reshape(*lead, rows.shape[-1]).movedim(-1, dim)


# -- cubic B-spline interpolation ---------------------------------------------------------------------------------
def bspline_prefilter(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """B-spline coefficients of `x` along `dims` (mirror boundary, scipy's spline_filter for mode "constant")."""
    taps = torch.tensor([math.sqrt(3.0) * POLE ** abs(k) for k in range(-PREFILTER_TAPS, PREFILTER_TAPS + 1)],
                        dtype=torch.float64).to(x.dtype).to(x.device).view(1, 1, -1)
    for dim in dims:
        n = x.shape[dim]
        if n == 1:
            continue
        rows, back = _rows(x, dim)
        index = torch.as_tensor(mirror_index(n, -PREFILTER_TAPS, n + PREFILTER_TAPS), device=x.device)
        x = back(F.conv1d(rows.index_select(1, index)[:, None], taps)[:, 0])
    return x


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
    (index units, float64), 0 outside -> [N, C, *P]. Per axis the four B-spline taps are two linear look-ups at
    shifted positions (mirror boundary = grid_sample's reflection with aligned corners)."""
    sizes = coefficients.shape[2:]
    base = torch.floor(points)
    t = points - base
    w0, w1 = (1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6
    w2, w3 = (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6, t ** 3 / 6
    gains = (w0 + w1, w2 + w3)
    positions = (base - 1 + w1 / gains[0], base + 1 + w3 / gains[1])
    out = None
    for choice in itertools.product((0, 1), repeat=points.shape[-1]):
        pick = torch.tensor(choice, device=points.device, dtype=torch.bool)
        where = torch.where(pick, positions[1], positions[0])
        weight = torch.where(pick, gains[1], gains[0]).prod(-1)
        grid = _normalised(where, sizes).to(coefficients.dtype)
        value = F.grid_sample(coefficients, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        term = value * weight.to(coefficients.dtype)[:, None]
        out = term if out is None else out + term
    return out * inside(points, sizes)[:, None].to(out.dtype)


def linear_sample(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of `values` [N, C, *S] at `points` [N, *P, d] (index units), 0 outside."""
    sizes = values.shape[2:]
    grid = _normalised(points, sizes).to(values.dtype)
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
def nearest_indices(m: int, n: int) -> np.ndarray:
    """Order 0, m -> n samples: the input index of each output sample (half-voxel grid, scipy's rounding)."""
    x = (np.arange(n) + 0.5) * (m / n) - 0.5
    return np.clip(np.floor(x + 0.5).astype(np.int64), 0, m - 1)


def _beta3(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


@lru_cache(maxsize=256)
def spline_resize_matrix(m: int, n: int) -> np.ndarray:
    """Order 3, m -> n samples, as an (n, m) float64 matrix: edge padding by 12, B-spline coefficients (mirror
    boundary on the padded signal), evaluation at the half-voxel grid positions (skimage = scipy.ndimage.zoom with
    grid_mode=True)."""
    length = m + 2 * RESIZE_PAD
    pad = np.zeros((length, m))
    pad[np.arange(length), np.clip(np.arange(length) - RESIZE_PAD, 0, m - 1)] = 1.0
    system = np.zeros((length, length))
    for k, w in ((-1, 1 / 6), (0, 4 / 6), (1, 1 / 6)):
        np.add.at(system, (np.arange(length), mirror_index(length, k, length + k)), w)
    coefficients = np.linalg.solve(system, pad)
    x = (np.arange(n) + 0.5) * (m / n) - 0.5 + RESIZE_PAD
    first = np.floor(x).astype(np.int64) - 1       # the four taps stay inside the padded signal
    evaluate = np.zeros((n, length))
    for k in range(4):
        evaluate[np.arange(n), first + k] = _beta3(x - (first + k))
    return evaluate @ coefficients


def resize_along(x: torch.Tensor, dim: int, matrix: np.ndarray) -> torch.Tensor:
    """Apply a (n, m) resize matrix along `dim` of x."""
    rows, back = _rows(x, dim)
    return back(rows @ torch.as_tensor(matrix.T, dtype=x.dtype, device=x.device))


# -- Gaussian smoothing (scipy.ndimage.gaussian_filter, mode "reflect", truncate 4) ---------------------------------
def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """scipy's kernel for `sigma` (its radius int(4 sigma + 0.5)), zero-padded to 2 * radius + 1 taps."""
    own = int(4.0 * sigma + 0.5)
    x = np.arange(-own, own + 1, dtype=np.float64)
    phi = np.exp(-0.5 / sigma ** 2 * x ** 2)
    return np.pad(phi / phi.sum(), radius - own)


def gaussian_blur(x: torch.Tensor, sigmas: Sequence[float], dims: Sequence[int]) -> torch.Tensor:
    """Item i of x [N, *S] smoothed with sigmas[i] (voxels) along `dims` (1-based, after the item axis)."""
    radius = max(int(4.0 * float(s) + 0.5) for s in sigmas)
    weights = torch.as_tensor(np.stack([gaussian_kernel(float(s), radius) for s in sigmas]), dtype=x.dtype,
                              device=x.device)[:, None]                         # [N, 1, K]
    for dim in dims:
        n = x.shape[dim]
        moved = x.movedim(dim, -1)
        shape = moved.shape
        items = moved.reshape(shape[0], -1, n)                                   # [N, M, n]
        index = torch.as_tensor(symmetric_index(n, -radius, n + radius), device=x.device)
        padded = items.index_select(2, index).transpose(0, 1)                    # [M, N, n + 2r]
        out = F.conv1d(padded, weights, groups=shape[0]).transpose(0, 1)         # [N, M, n]
        x = out.reshape(shape).movedim(-1, dim)
    return x
