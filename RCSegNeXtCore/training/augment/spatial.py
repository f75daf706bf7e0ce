"""Spatial augmentation given its drawn parameters: rotation + scaling matrices, resampling of image and label into
the patch, mirroring.

Geometry as batchgenerators v1's SpatialTransform (no elastic deformation, no random crop): the output voxel o maps
to the input point M (o - (P - 1) / 2) + (D - 1) / 2 (P patch size, D input size, index units), M = s R^T with
R = Rx(a0) Ry(a1) Rz(a2) (axis 0 first). In dummy-2D mode R turns the (y, x) plane only and, by default, the scale
s acts in-plane only (axis 0 is left alone, as nnU-Net's Convert3DTo2DTransform folds it into the channels).
Resampling "cubic_onehot" (official): image cubic B-spline, label one-hot linear + argmax (ties: the nearest
neighbour's label), points outside the input 0 / background. "linear_nearest" (RCSegNeXt 0.1): trilinear image,
nearest label.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from RCSegNeXtCore.training.augment.kernels import (bspline_prefilter, bspline_sample, inside, linear_sample,
                                                   nearest_sample)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """[B, 3] angles (about axes 0, 1, 2) -> [B, 3, 3] float64 R^T, R = Rx Ry Rz (batchgenerators' rotate_coords_3d);
    [B, 1] -> the in-plane rotation (axis 0 untouched, rotate_coords_2d on (y, x))."""
    a = angles.double()
    b = a.shape[0]
    eye = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    c, s = torch.cos(a), torch.sin(a)
    if a.shape[1] == 1:
        m = eye.clone()
        m[:, 1, 1], m[:, 1, 2], m[:, 2, 1], m[:, 2, 2] = c[:, 0], -s[:, 0], s[:, 0], c[:, 0]
        return m.transpose(1, 2)
    rx, ry, rz = eye.clone(), eye.clone(), eye.clone()
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = c[:, 0], -s[:, 0], s[:, 0], c[:, 0]
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = c[:, 1], s[:, 1], -s[:, 1], c[:, 1]
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = c[:, 2], -s[:, 2], s[:, 2], c[:, 2]
    return (rx @ ry @ rz).transpose(1, 2)


def spatial_matrices(angles: torch.Tensor, rotate: torch.Tensor, factors: torch.Tensor, scale: torch.Tensor,
                     in_plane_scale: bool) -> torch.Tensor:
    """Per sample M [B, 3, 3] (output offset -> input offset, (z, y, x)): rotation where `rotate`, times the factor
    where `scale` (in-plane only with `in_plane_scale`)."""
    m = torch.where(rotate.view(-1, 1, 1).cpu(), rotation_matrices(angles.cpu()),
                    torch.eye(3, dtype=torch.float64).expand(len(rotate), 3, 3))
    f = torch.where(scale.cpu(), factors.cpu().double(), torch.ones(len(scale), dtype=torch.float64))
    axes = torch.tensor([0.0 if in_plane_scale else 1.0, 1.0, 1.0], dtype=torch.float64)
    per_axis = 1 + (f.view(-1, 1) - 1) * axes                                 # [B, 3]: the scale of each axis
    return m * per_axis[:, :, None]                                           # coords (R^T o) * s, row by row


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    starts = [(s - p) // 2 for s, p in zip(x.shape[-3:], size)]
    return x[..., starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]


def _points(m: torch.Tensor, in_size: Sequence[int], out_size: Sequence[int]) -> torch.Tensor:
    """Input points [N, *out_size, d] (float64, index units) of every output voxel for matrices m [N, d, d]."""
    d = len(out_size)
    axes = [torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in out_size]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)          # [*P, d]
    centre = torch.tensor([(s - 1) / 2 for s in in_size], dtype=torch.float64)
    return torch.einsum("nij,...j->n...i", m, offsets) + centre.view(*([1] * (d + 1)), d)


def resample(image: torch.Tensor, label: torch.Tensor, m: torch.Tensor, patch: Sequence[int],
             interpolation: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """image [N, C, Z, Y, X], label [N, Z, Y, X] through matrices m [N, 3, 3] into the patch."""
    if interpolation == "linear_nearest":
        return _resample_linear_nearest(image, label, m, patch)
    in_plane = bool((m[:, 0] == torch.tensor([1.0, 0, 0], dtype=m.dtype)).all()
                    and (m[:, 1:, 0] == 0).all()) and image.shape[2] == patch[0]
    dev = image.device
    n, c, z = image.shape[:3]
    k = int(label.max()) + 1 if label.numel() else 1
    classes = torch.arange(k, device=label.device, dtype=label.dtype).view(1, k, *([1] * (label.ndim - 1)))
    onehot = (label[:, None] == classes).float()                               # [N, K, Z, Y, X]
    if in_plane:   # dummy 2D: the slices of a sample are channels of one 2D image (batchgenerators' Convert3DTo2D)
        points = _points(m[:, 1:, 1:], image.shape[3:], patch[1:]).to(dev)     # [N, Py, Px, 2]
        flat = image.float().reshape(n, c * z, *image.shape[3:])
        out_image = bspline_sample(bspline_prefilter(flat, (2, 3)), points).reshape(n, c, z, *patch[1:])
        scores = linear_sample(onehot.reshape(n, k * z, *image.shape[3:]), points).reshape(n, k, z, *patch[1:])
        nearest = nearest_sample(label.float(), points).long()[:, None]       # [N, 1, Z, Py, Px]
        outside = ~inside(points, image.shape[3:])[:, None]                     # [N, 1, Py, Px]
    else:
        points = _points(m, image.shape[2:], patch).to(dev)
        out_image = bspline_sample(bspline_prefilter(image.float(), (2, 3, 4)), points)
        scores = linear_sample(onehot, points)
        nearest = nearest_sample(label[:, None].float(), points).long()       # [N, 1, Pz, Py, Px]
        outside = ~inside(points, image.shape[2:])
    nearest = nearest.clamp(0, k - 1)
    best, winner = scores.max(1)                                           # ties: the lowest label ...
    near_score = scores.gather(1, nearest)[:, 0]
    winner = torch.where((near_score == best) & (near_score > 0), nearest[:, 0], winner)   # ... or the nearest's
    winner = winner.masked_fill(outside, 0)                                # outside the input: background
    return out_image.to(image.dtype if image.is_floating_point() else torch.float32), winner.to(label.dtype)


def _resample_linear_nearest(image, label, m, patch):
    """RCSegNeXt 0.1: one affine grid per sample, trilinear image, nearest label, zeros outside."""
    n = image.shape[0]
    in_size = torch.tensor(image.shape[2:], dtype=torch.float64)
    out_size = torch.tensor(list(patch), dtype=torch.float64)
    theta_zyx = m * (out_size / 2)[None, None, :] / (in_size / 2)[None, :, None]
    theta = torch.cat([theta_zyx.flip(1).flip(2), torch.zeros(n, 3, 1, dtype=torch.float64)], dim=2)
    grid = F.affine_grid(theta.float().to(image.device), [n, 1, *patch], align_corners=False)
    out_image = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_label = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[:, 0].to(label.dtype)
    return out_image, out_label


def mirror(image: torch.Tensor, label: torch.Tensor, flips: torch.Tensor, axes: Sequence[int]):
    """Flip sample i along axes[j] where flips[i, j] (image [B, C, *S], label [B, *S])."""
    image, label = image.clone(), label.clone()
    if flips.numel() == 0:
        return image, label
    codes = (flips.long().cpu() * (2 ** torch.arange(flips.shape[1]))).sum(1)
    for code in torch.unique(codes).tolist():
        dims = [a for j, a in enumerate(axes) if code >> j & 1]
        if not dims:
            continue
        idx = torch.nonzero(codes == code)[:, 0].to(image.device)
        image[idx] = image[idx].flip([a + 2 for a in dims])
        label[idx] = label[idx].flip([a + 1 for a in dims])
    return image, label
