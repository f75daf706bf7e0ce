"""Resampling (z, y, x) volumes to a new voxel grid in numpy: the ONE implementation that training (preprocessing)
and inference (preprocessing, restoring to the original grid, --resize-to) use; no torch, so inference runs without
it.

Follows nnU-Net's scheme for anisotropic MRI: when one axis is much thicker than the others (ratio above
`anisotropy_threshold`), each plane is interpolated in 2D (cubic for images) and the thick axis gets its own,
lower-order step (nearest by default), so thick slices are not blurred into each other. Otherwise the volume is
interpolated separably along all axes with one order. Grids are aligned at voxel centres (half-voxel grid, the
ITK/skimage convention), edges replicate, no anti-aliasing (as nnU-Net).
Labels are resampled as one-hot channels (linear) followed by argmax: no class is invented, and a class present
before is kept (at its most likely voxel) even when it shrinks below one voxel.

Two image interpolations (plans.json `resampling.image_interpolation`): "bspline" is skimage's `resize(order=3,
mode="edge", anti_aliasing=False)` as nnU-Net v2.1.2 calls it (cubic B-spline through scipy's zoom, then clipped to
the input's range: per slice when the thick axis is resampled separately), computed with resize matrices
(`spline_resize_matrix`); "bicubic" is cubic convolution (a = -0.75, RCSegNeXt 0.1's torch `interpolate(bicubic,
align_corners=False)`). The linear, nearest and cubic-convolution steps are separable "taps" (`interpolation_taps`:
per output sample the input indices and weights), computed as torch's `interpolate` computes them (the
source position (i + 0.5) * in / out - 0.5 in the data's precision, edges clamped), so the results equal
RCSegNeXt 0.1's torch implementation within 1e-6 (Testing/test_resample.py holds them to its saved outputs).
Linear and nearest are the same in both interpolations (the half-voxel grid with edge replication = scipy's zoom
with grid_mode and mode "nearest").
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import numpy as np

ORDERS = (0, 1, 3)
INTERPOLATIONS = ("bspline", "bicubic")
RESIZE_PAD = 12                   # scipy pads by 12 (edge) before its spline filter for mode "nearest"
CUBIC_A = -0.75                   # the cubic convolution kernel's parameter (torch's, OpenCV's)


def new_shape_for_spacing(shape: Sequence[int], spacing: Sequence[float],
                          target_spacing: Sequence[float]) -> Tuple[int, int, int]:
    """Size of the grid covering the same extent at `target_spacing` (rounded, at least 1 voxel per axis; computed as
    nnU-Net's compute_new_shape, spacing / target x shape)."""
    return tuple(max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target_spacing))


def same_spacing(spacing: Sequence[float], target_spacing: Sequence[float], rtol: float = 1e-3) -> bool:
    """True when the spacings agree within `rtol` (DICOM spacings such as 0.87500001 count as 0.875)."""
    return bool(np.allclose(np.asarray(spacing, float), np.asarray(target_spacing, float), rtol=rtol, atol=0))


def thick_axis(spacing: Sequence[float], target_spacing: Sequence[float], threshold: float) -> Optional[int]:
    """The axis resampled separately: the single thickest axis of the source spacing when its ratio to the finest
    exceeds `threshold`, else that of the target spacing; None when neither is anisotropic (or two axes tie)."""
    for values in (spacing, target_spacing):
        values = np.asarray(values, dtype=float)
        if values.max() / values.min() > threshold:
            thickest = np.flatnonzero(np.isclose(values, values.max()))
            return int(thickest[0]) if len(thickest) == 1 else None
    return None


def _check_order(order: int) -> int:
    if int(order) not in ORDERS:
        raise ValueError(f"interpolation order {order} is not supported; use 0 (nearest), 1 (linear) or 3 (cubic)")
    return int(order)


# -- separable interpolation taps -----------------------------------------------------------------------------------
@lru_cache(maxsize=512)
def interpolation_taps(m: int, n: int, order: int, precision: str = "float32") -> Tuple[np.ndarray, np.ndarray]:
    """m -> n samples on the half-voxel grid: (indices (n, T) int64, weights (n, T) in `precision`), T = 1, 2, 4 for
    order 0 (nearest: floor((i + 0.5) * m / n)), 1 (linear) and 3 (cubic convolution), edges replicated.
    The position arithmetic follows torch's CPU `interpolate` (scale m / n in the data's precision; nearest's scale
    in float32), so the indices agree exactly and the weights to rounding."""
    order = _check_order(order)
    dtype = np.dtype(precision)
    i = np.arange(n)
    if order == 0:
        scale = np.float32(np.float32(m) / np.float32(n))
        source = np.floor(((i + 0.5) * np.float64(scale)).astype(np.float32)).astype(np.int64)
        return np.minimum(source, m - 1)[:, None], np.ones((n, 1), dtype=dtype)
    scale = dtype.type(dtype.type(m) / dtype.type(n))
    real = (i.astype(dtype) + dtype.type(0.5)) * scale - dtype.type(0.5)
    if order == 1:
        real = np.maximum(real, dtype.type(0))
    first = np.minimum(np.floor(real).astype(np.int64), m - 1)
    t = np.clip(real - first.astype(dtype), 0, 1).astype(dtype)
    if order == 1:
        second = first + (first < m - 1)
        return np.stack([first, second], 1), np.stack([1 - t, t], 1).astype(dtype)
    a = dtype.type(CUBIC_A)
    s = 1 - t
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    w3 = ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a
    indices = np.clip(first[:, None] + np.arange(-1, 3)[None, :], 0, m - 1)
    return indices, np.stack([w0, w1, w2, w3], 1).astype(dtype)


def resize_axis(x: np.ndarray, axis: int, size: int, order: int) -> np.ndarray:
    """Interpolate one axis of a float array (float32 or float64, kept) to `size` samples with `order`."""
    length = int(x.shape[axis])
    if length == int(size):
        return x
    indices, weights = interpolation_taps(length, int(size), _check_order(order), x.dtype.name)
    shape = [1] * x.ndim
    shape[axis] = int(size)
    out = None
    for k in range(indices.shape[1]):
        term = np.take(x, indices[:, k], axis=axis)
        if order:
            term *= weights[:, k].reshape(shape)
        out = term if out is None else np.add(out, term, out=out)
    return out


def resample_array(x: np.ndarray, new_shape: Sequence[int], axis: Optional[int], order: int,
                   order_thick_axis: int) -> np.ndarray:
    """(C, z, y, x) float array -> (C, *new_shape), same dtype: the in-plane step of `order` (the two axes other than
    the thick `axis`), then `axis` with `order_thick_axis`; when `axis` is None, `order` along every axis (the
    (y, x) planes, then z)."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(x.shape[1:]) == new_shape:
        return x
    first = 0 if axis is None else axis
    for a in sorted((d for d in range(3) if d != first), reverse=True):   # x before y, as a 2D interpolation
        x = resize_axis(x, a + 1, new_shape[a], order)
    return resize_axis(x, first + 1, new_shape[first], order if axis is None else order_thick_axis)


# -- skimage's resize (nnU-Net v2.1.2's images) ---------------------------------------------------------------------
def mirror_index(n: int, lo: int, hi: int) -> np.ndarray:
    """Indices of positions lo..hi-1 of the mirror extension (d c b | a b c d | c b a), scipy's "mirror"."""
    i = np.arange(lo, hi)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j >= n, period - j, j)


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


def apply_matrix(x: np.ndarray, axis: int, matrix: np.ndarray) -> np.ndarray:
    """A (n, m) matrix applied along `axis` of x (m samples there -> n)."""
    moved = np.moveaxis(x, axis, -1)
    return np.moveaxis(moved @ matrix.T.astype(x.dtype, copy=False), -1, axis)


def _resize_like_skimage(x: np.ndarray, axes: Sequence[int], sizes: Sequence[int], order: int) -> np.ndarray:
    """skimage's resize (edge mode, no anti-aliasing) of `axes` of a float64 array, separably: order 3 the cubic
    B-spline resize matrix, order 1 linear, order 0 scipy's nearest rounding; not yet clipped."""
    for axis, size in zip(axes, sizes):
        length = int(x.shape[axis])
        if length == int(size):
            continue
        if order == 3:
            x = apply_matrix(x, axis, spline_resize_matrix(length, int(size)))
        elif order == 0:
            x = np.take(x, nearest_indices(length, int(size)), axis=axis)
        else:
            x = resize_axis(x, axis, int(size), _check_order(order))
    return x


def resample_bspline(x: np.ndarray, new_shape: Sequence[int], axis: Optional[int], order: int,
                     order_thick_axis: int) -> np.ndarray:
    """(1, z, y, x) -> float32 (1, *new_shape) as nnU-Net's resample_data_or_seg(is_seg=False) on one channel
    (float64 inside): with a thick `axis`, each slice across it resized in 2D with `order` and clipped to that
    slice's range, then `order_thick_axis` along the axis (0: scipy's nearest; other orders: the linear/cubic
    step of resample_array); without, one 3D resize of `order` clipped to the volume's range."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(x.shape[1:]) == new_shape:
        return x.astype(np.float32, copy=False)
    v = x[0].astype(np.float64)
    if axis is None:
        out = _resize_like_skimage(v, (0, 1, 2), new_shape, order)
        if order > 0:
            out = np.clip(out, v.min(), v.max())
        return out[None].astype(np.float32)
    others = tuple(d for d in range(3) if d != axis)
    out = _resize_like_skimage(v, others, [new_shape[d] for d in others], order)
    if order > 0 and out.shape != v.shape:                # skimage clips every 2D resize to its slice's range
        out = np.minimum(np.maximum(out, v.min(axis=others, keepdims=True)), v.max(axis=others, keepdims=True))
    if out.shape[axis] != new_shape[axis]:
        if order_thick_axis == 0:
            out = _resize_like_skimage(out, (axis,), (new_shape[axis],), 0)
        else:
            out = resize_axis(out, axis, new_shape[axis], order_thick_axis)
    return out[None].astype(np.float32)


def _as_float(array) -> np.ndarray:
    """float32, or float64 for float64 input (restoring logits at nnU-Net's precision); torch tensors (CPU or a
    device) are accepted where torch is in use."""
    if hasattr(array, "detach"):                           # a torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    return np.ascontiguousarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32)


def resample_image(data: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                   target_spacing: Sequence[float], order: int = 3, order_thick_axis: int = 0,
                   anisotropy_threshold: float = 3.0, interpolation: str = "bicubic") -> np.ndarray:
    """Resample a (C, z, y, x) image (one channel at a time, to bound memory) -> float32 (C, *new_shape);
    `interpolation` "bspline" (nnU-Net's skimage resize) or "bicubic" (cubic convolution)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"image interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)
    resample = resample_bspline if interpolation == "bspline" else resample_array
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = resample(_as_float(data[c:c + 1]), new_shape, axis, order, order_thick_axis)[0]
    return out


def resample_probabilities(probabilities, new_shape: Sequence[int], spacing: Sequence[float],
                           target_spacing: Sequence[float], order: int = 1, order_thick_axis: int = 1,
                           anisotropy_threshold: float = 3.0) -> np.ndarray:
    """Resample (K, z, y, x) class probabilities or logits -> float32 (K, *new_shape) (float64 for float64 input)."""
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)
    return resample_array(_as_float(probabilities), new_shape, axis, order, order_thick_axis)


LABEL_RULES = ("nnunet", "keep_classes")


def _nearest_label(label: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """The label map resized with order 0 on every axis (scipy's nearest rounding on the half-voxel grid)."""
    out = label
    for axis, size in enumerate(new_shape):
        if out.shape[axis] != size:
            out = np.take(out, nearest_indices(out.shape[axis], int(size)), axis=axis)
    return out


def resample_label(label: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                   target_spacing: Sequence[float], order: int = 1, order_thick_axis: int = 0,
                   anisotropy_threshold: float = 3.0, rule: str = "keep_classes") -> np.ndarray:
    """Resample an integer (z, y, x) label map: each present class as a linear-interpolated mask, then argmax.
    Classes absent from the input never appear.

    `rule` "nnunet" (batchgenerators 0.25.5's resize_segmentation, as nnU-Net v2.1.2 preprocesses labels): masks
    in float64, a voxel where several classes share the top score exactly takes its nearest neighbour's label when
    that is one of them (else the lowest). "keep_classes" (RCSegNeXt 0.1): masks in float32, ties keep the lower
    value, and a class present in the input that would vanish (smaller than a voxel of the new grid) is placed at
    the voxel where its interpolated mask is largest.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"label rule {rule!r}: use one of {', '.join(LABEL_RULES)}")
    new_shape = tuple(int(s) for s in new_shape)
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)
    dtype = np.float64 if rule == "nnunet" else np.float32

    def weight(value: int) -> np.ndarray:
        mask = (label == value).astype(dtype)[None]
        return resample_array(mask, new_shape, axis, order, order_thick_axis)[0]

    present = present_values(label)
    result = np.full(new_shape, present[0], dtype=label.dtype if label.dtype.kind in "iu" else np.int64)
    best = np.array(weight(present[0]), copy=True)
    nearest = _nearest_label(label, new_shape) if rule == "nnunet" else None
    nearest_on_top = None if nearest is None else (nearest == present[0]) & (best > 0)
    for value in present[1:]:                                 # running argmax; ties keep the lower value
        w = weight(value)
        better = w > best
        if nearest is not None:                               # does the nearest neighbour's label share the top?
            is_nearest = nearest == value
            nearest_on_top |= (w == best) & (w > 0) & is_nearest
            np.copyto(nearest_on_top, is_nearest, where=better)
        np.copyto(result, value, where=better)
        np.maximum(best, w, out=best)
    if nearest is not None:
        np.copyto(result, nearest.astype(result.dtype), where=nearest_on_top)
        return result
    flat = result.reshape(-1)
    for value in set(present) - set(present_values(result)):  # vanished: put it where it is most likely
        flat[int(np.argmax(weight(value)))] = value
    return result


def present_values(label: np.ndarray) -> list:
    """Sorted values occurring in an integer label map."""
    return [int(v) for v in np.unique(label)]
