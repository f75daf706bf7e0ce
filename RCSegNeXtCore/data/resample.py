"""Resampling (z, y, x) volumes to a new voxel grid with torch (no scipy at run time).

Follows nnU-Net's scheme for anisotropic MRI: when one axis is much thicker than the others (ratio above
`anisotropy_threshold`), each plane is interpolated in 2D (cubic for images) and the thick axis gets its own,
lower-order step (nearest by default), so thick slices are not blurred into each other. Otherwise the volume is
interpolated separably along all axes with one order. Grids are aligned at voxel centres (`align_corners=False`,
the ITK/skimage convention), edges replicate, no anti-aliasing (as nnU-Net).
Labels are resampled as one-hot channels (linear) followed by argmax: no class is invented, and a class present
before is kept (at its most likely voxel) even when it shrinks below one voxel.
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
    """Size of the grid covering the same extent at `target_spacing` (rounded, at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


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


def _as_tensor(array) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.float()
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def resample_image(data: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                   target_spacing: Sequence[float], order: int = 3, order_thick_axis: int = 0,
                   anisotropy_threshold: float = 3.0) -> np.ndarray:
    """Resample a (C, z, y, x) image (one channel at a time, to bound memory) -> float32 (C, *new_shape)."""
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = resample_tensor(_as_tensor(data[c:c + 1]), new_shape, axis, order, order_thick_axis)[0].numpy()
    return out


def resample_probabilities(probabilities, new_shape: Sequence[int], spacing: Sequence[float],
                           target_spacing: Sequence[float], order: int = 1, order_thick_axis: int = 1,
                           anisotropy_threshold: float = 3.0) -> torch.Tensor:
    """Resample (K, z, y, x) class probabilities (numpy or torch, any device) -> float tensor (K, *new_shape)."""
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)
    return resample_tensor(_as_tensor(probabilities), new_shape, axis, order, order_thick_axis)


def resample_label(label: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                   target_spacing: Sequence[float], order: int = 1, order_thick_axis: int = 0,
                   anisotropy_threshold: float = 3.0) -> np.ndarray:
    """Resample an integer (z, y, x) label map: each present class as a linear-interpolated mask, then argmax.

    Classes absent from the input never appear; a class present in the input that would vanish (smaller than a
    voxel of the new grid) is placed at the voxel where its interpolated mask is largest.
    """
    new_shape = tuple(int(s) for s in new_shape)
    axis = thick_axis(spacing, target_spacing, anisotropy_threshold)

    def weight(value: int) -> torch.Tensor:
        mask = torch.from_numpy((label == value).astype(np.float32))[None]
        return resample_tensor(mask, new_shape, axis, order, order_thick_axis)[0]

    present = present_values(label)
    result = np.full(new_shape, present[0], dtype=label.dtype if label.dtype.kind in "iu" else np.int64)
    best = weight(present[0]).numpy()
    for value in present[1:]:                                 # running argmax; ties keep the lower value
        w = weight(value).numpy()
        better = w > best
        np.copyto(result, value, where=better)
        np.maximum(best, w, out=best)
    flat = result.reshape(-1)
    for value in set(present) - set(present_values(result)):  # vanished: put it where it is most likely
        flat[int(torch.argmax(weight(value)))] = value
    return result


def present_values(label: np.ndarray) -> list:
    """Sorted values occurring in an integer label map."""
    return [int(v) for v in np.unique(label)]
