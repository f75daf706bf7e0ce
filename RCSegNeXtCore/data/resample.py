"""Resampling (z, y, x) volumes to a new voxel grid with torch (no scipy at run time).

Follows nnU-Net's scheme for anisotropic MRI: when one axis is much thicker than the others (ratio above
`anisotropy_threshold`), each plane is interpolated in 2D (cubic for images) and the thick axis gets its own,
lower-order step (nearest by default), so thick slices are not blurred into each other. Otherwise the volume is
interpolated separably along all axes with one order. Grids are aligned at voxel centres (`align_corners=False`,
the ITK/skimage convention), edges replicate, no anti-aliasing (as nnU-Net).
Labels are resampled as one-hot channels (linear) followed by argmax: no class is invented, and a class present
before is kept (at its most likely voxel) even when it shrinks below one voxel.

Two image interpolations (plans.json `resampling.image_interpolation`): "bspline" is skimage's `resize(order=3,
mode="edge", anti_aliasing=False)` as nnU-Net v2.1.2 calls it (cubic B-spline through scipy's zoom, then clipped to
the input's range: per slice when the thick axis is resampled separately), computed with resize matrices
(training/augment/kernels.py); "bicubic" is torch's cubic convolution (RCSegNeXt 0.1). Linear and nearest steps are
the same in both (torch's half-voxel grid with edge replication = scipy's zoom with grid_mode and mode "nearest").
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_MODES_1D = {0: "nearest-exact", 1: "linear", 3: "bicubic"}
_MODES_2D = {0: "nearest-exact", 1: "bilinear", 3: "bicubic"}


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
    if int(order) not in _MODES_1D:
        raise ValueError(f"interpolation order {order} is not supported; use 0 (nearest), 1 (linear) or 3 (cubic)")
    return int(order)


def _resize_plane(t: torch.Tensor, axis: int, size: Tuple[int, int], order: int) -> torch.Tensor:
    """Interpolate the two axes other than `axis` of a (C, z, y, x) tensor in 2D, plane by plane."""
    moved = t.movedim(axis + 1, 0)                            # (A, C, P, Q): planes as the batch
    if tuple(moved.shape[2:]) == tuple(size):
        return t
    mode = _MODES_2D[_check_order(order)]
    out = F.interpolate(moved, size=size, mode=mode, **({} if order == 0 else {"align_corners": False}))
    return out.movedim(0, axis + 1)


def _resize_axis(t: torch.Tensor, axis: int, size: int, order: int) -> torch.Tensor:
    """Interpolate one axis of a (C, z, y, x) tensor in 1D."""
    if t.shape[axis + 1] == size:
        return t
    order = _check_order(order)
    moved = t.movedim(axis + 1, -1)                           # (C, P, Q, A)
    lines = moved.reshape(1, -1, moved.shape[-1])             # every line along the axis is a channel
    if order == 3:                                            # torch has no 1D cubic: bicubic on (A, 1)
        out = F.interpolate(lines.unsqueeze(-1), size=(size, 1), mode="bicubic", align_corners=False)[..., 0]
    else:
        out = F.interpolate(lines, size=size, mode=_MODES_1D[order],
                            **({} if order == 0 else {"align_corners": False}))
    return out.reshape(*moved.shape[:-1], size).movedim(-1, axis + 1)


def resample_tensor(t: torch.Tensor, new_shape: Sequence[int], axis: Optional[int], order: int,
                    order_thick_axis: int) -> torch.Tensor:
    """(C, z, y, x) float tensor -> (C, *new_shape): in-plane step of `order`, then the thick `axis` with
    `order_thick_axis`; when `axis` is None, separable interpolation of `order` along every axis."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(t.shape[1:]) == new_shape:
        return t
    first = 0 if axis is None else axis                       # isotropic: (y, x) planes, then z
    in_plane = tuple(new_shape[i] for i in range(3) if i != first)
    t = _resize_plane(t, first, in_plane, order)
    return _resize_axis(t, first, new_shape[first], order if axis is None else order_thick_axis)


INTERPOLATIONS = ("bspline", "bicubic")


def _resize_dims_like_skimage(t: torch.Tensor, dims: Sequence[int], sizes: Sequence[int], order: int) -> torch.Tensor:
    """skimage's resize (edge mode, no anti-aliasing) of the axes `dims` of a float64 tensor, separably: order 3 a
    cubic B-spline resize matrix, order 1 linear, order 0 scipy's nearest rounding; not yet clipped."""
    from RCSegNeXtCore.training.augment.kernels import nearest_indices, resize_along, spline_resize_matrix
    for dim, size in zip(dims, sizes):
        length = int(t.shape[dim])
        if length == int(size):
            continue
        if order == 3:
            t = resize_along(t, dim, spline_resize_matrix(length, int(size)))
        elif order == 0:
            t = t.index_select(dim, torch.from_numpy(nearest_indices(length, int(size))))
        else:
            t = _resize_axis(t.movedim(dim, 1), 0, int(size), _check_order(order)).movedim(1, dim)
    return t


def resample_bspline(t: torch.Tensor, new_shape: Sequence[int], axis: Optional[int], order: int,
                     order_thick_axis: int) -> torch.Tensor:
    """(1, z, y, x) -> (1, *new_shape) as nnU-Net's resample_data_or_seg(is_seg=False) on one channel (float64
    inside): with a thick `axis`, each slice across it resized in 2D with `order` and clipped to that slice's range,
    then `order_thick_axis` along the axis (0: scipy's nearest; other orders: the linear/cubic step of
    resample_tensor); without, one 3D resize of `order` clipped to the volume's range."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(t.shape[1:]) == new_shape:
        return t
    x = t[0].double()
    if axis is None:
        out = _resize_dims_like_skimage(x, (0, 1, 2), new_shape, order)
        if order > 0:
            out = out.clamp(x.min(), x.max())
        return out[None].float()
    others = [d for d in range(3) if d != axis]
    out = _resize_dims_like_skimage(x, others, [new_shape[d] for d in others], order)
    if order > 0 and tuple(out.shape) != tuple(x.shape):     # skimage clips every 2D resize to its slice's range
        low = x.amin(dim=tuple(others), keepdim=True)
        high = x.amax(dim=tuple(others), keepdim=True)
        out = torch.maximum(torch.minimum(out, high), low)
    if out.shape[axis] != new_shape[axis]:
        if order_thick_axis == 0:
            out = _resize_dims_like_skimage(out, (axis,), (new_shape[axis],), 0)
        else:
            out = _resize_axis(out[None], axis, new_shape[axis], order_thick_axis)[0]
    return out[None].float()


def _as_tensor(array) -> torch.Tensor:
    """float32, or float64 for a float64 tensor (restoring logits at nnU-Net's precision)."""
    if isinstance(array, torch.Tensor):
        return array if array.dtype == torch.float64 else array.float()
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def resample_image(data: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                   target_spacing: Sequence[float], order: int = 3, order_thick_axis: int = 0,
                   anisotropy_threshold: float = 3.0, interpolation: str = "bicubic") -> np.ndarray:
    """Resample a (C, z, y, x) image (one channel at a time, to bound memory) -> float32 (C, *new_shape);
    `interpolation` "bspline" (nnU-Net's skimage resize) or "bicubic" (torch's cubic convolution)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"image interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)
    resample = resample_bspline if interpolation == "bspline" else resample_tensor
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = resample(_as_tensor(data[c:c + 1]), new_shape, axis, order, order_thick_axis)[0].numpy()
    return out


def resample_probabilities(probabilities, new_shape: Sequence[int], spacing: Sequence[float],
                           target_spacing: Sequence[float], order: int = 1, order_thick_axis: int = 1,
                           anisotropy_threshold: float = 3.0) -> torch.Tensor:
    """Resample (K, z, y, x) class probabilities or logits (numpy or torch, any device) -> float tensor (K, *new_shape)
    (float64 for a float64 tensor)."""
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)
    return resample_tensor(_as_tensor(probabilities), new_shape, axis, order, order_thick_axis)


LABEL_RULES = ("nnunet", "keep_classes")


def _nearest_label(label: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """The label map resized with order 0 on every axis (scipy's nearest rounding on the half-voxel grid)."""
    from RCSegNeXtCore.training.augment.kernels import nearest_indices
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

    def weight(value: int) -> torch.Tensor:
        mask = torch.from_numpy((label == value).astype(dtype))[None]
        return resample_tensor(mask, new_shape, axis, order, order_thick_axis)[0]

    present = present_values(label)
    result = np.full(new_shape, present[0], dtype=label.dtype if label.dtype.kind in "iu" else np.int64)
    best = weight(present[0]).numpy()
    nearest = _nearest_label(label, new_shape) if rule == "nnunet" else None
    nearest_on_top = None if nearest is None else (nearest == present[0]) & (best > 0)
    for value in present[1:]:                                 # running argmax; ties keep the lower value
        w = weight(value).numpy()
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
        flat[int(torch.argmax(weight(value)))] = value
    return result


def present_values(label: np.ndarray) -> list:
    """Sorted values occurring in an integer label map."""
    return [int(v) for v in np.unique(label)]
