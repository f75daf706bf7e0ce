"""nnU-Net-style data augmentation on torch tensors, batched on the training device.

Spatial: rotation and scaling (in-plane only for anisotropic plans, as nnU-Net does for thick-slice data) by one
`grid_sample` per batch that also crops the sampler's larger context patch to the patch size; mirroring.
Intensity: Gaussian noise, Gaussian blur, brightness, contrast, simulated low resolution, gamma (probabilities and
ranges of nnU-Net's default trainer). Labels go through nearest-neighbour sampling only, so no value is invented.
All random draws come from one `torch.Generator` whose state is checkpointed (bit-identical resume).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    p_rotation: float = 0.2
    rotation_degrees: float = 180.0          # in-plane; 30 degrees about every axis for isotropic plans
    p_scale: float = 0.2
    scale_range: Tuple[float, float] = (0.7, 1.4)
    p_noise: float = 0.1
    noise_variance: Tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: Tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: Tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    p_low_res: float = 0.25
    low_res_zoom: Tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: Tuple[float, float] = (0.7, 1.5)
    p_mirror: float = 0.5
    mirror_axes: List[int] = field(default_factory=lambda: [0, 1, 2])
    anisotropic: bool = True                 # plans with a thick axis (z): rotate / blur / downsample in-plane only


def context_size(patch_size: Sequence[int], config: AugmentConfig) -> List[int]:
    """Size of the region the sampler cuts so rotation and scaling rarely reach past it (in-plane x1.5, or every
    axis for isotropic plans)."""
    factor = 1.5 if (config.p_rotation > 0 or config.p_scale > 0) else 1.0
    return [p if (i == 0 and config.anisotropic) else int(math.ceil(p * factor)) for i, p in enumerate(patch_size)]


class Augmenter:
    """`image, label = augmenter(image [B,C,z,y,x] float, label [B,z,y,x] int)` -> patch-sized, augmented."""

    def __init__(self, patch_size: Sequence[int], config: AugmentConfig | None = None,
                 generator: torch.Generator | None = None):
        self.patch_size = list(patch_size)
        self.config = config or AugmentConfig()
        self.generator = generator or torch.Generator()

    # -- random draws (all from self.generator, on its device) -----------------------------------------------------
    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator, device=self.generator.device)

    def _chance(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=self.generator.device) < p

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.spatial(image, label)
        image = self.intensity(image)
        return self.mirror(image, label)

    # -- spatial ----------------------------------------------------------------------------------------------------
    def spatial(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        c, b, dev = self.config, image.shape[0], image.device
        in_size = torch.tensor(image.shape[2:], dtype=torch.float32)
        out_size = torch.tensor(self.patch_size, dtype=torch.float32)
        # matrix in voxel units, (z, y, x) order: output offset from centre -> input offset from centre
        rotate = self._chance(b, c.p_rotation).cpu()
        scale = self._chance(b, c.p_scale).cpu()
        limit = math.radians(c.rotation_degrees if c.anisotropic else 30.0)
        angles = [self._uniform(b, -limit, limit).cpu() for _ in range(1 if c.anisotropic else 3)]
        factors = self._uniform(b, *c.scale_range).cpu()
        mats = []
        for i in range(b):
            m = torch.eye(3)
            if rotate[i]:
                for axis, angle in enumerate(angles):   # axis 0 = about z (in-plane), then about y and x
                    m = _rotation(axis, float(angle[i])) @ m
            if scale[i]:
                m = m * float(factors[i])
            mats.append(m)
        if not (rotate.any() or scale.any()) and list(image.shape[2:]) != self.patch_size:
            return _center_crop(image, self.patch_size), _center_crop(label, self.patch_size)
        if not (rotate.any() or scale.any()):
            return image, label
        mat = torch.stack(mats)                                   # [B,3,3] (z,y,x)
        theta_zyx = mat * (out_size / 2)[None, None, :] / (in_size / 2)[None, :, None]
        theta = theta_zyx.flip(1).flip(2)                          # grid_sample wants (x, y, z)
        theta = torch.cat([theta, torch.zeros(b, 3, 1)], dim=2).to(dev)
        grid = F.affine_grid(theta, [b, 1, *self.patch_size], align_corners=False)
        image = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        label = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[:, 0].to(label.dtype)
        return image, label

    def mirror(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b = image.shape[0]
        flips = [self._chance(b, self.config.p_mirror).cpu() for _ in self.config.mirror_axes]
        image, label = image.clone(), label.clone()
        for i in range(b):
            axes = [a for a, f in zip(self.config.mirror_axes, flips) if f[i]]
            if axes:
                image[i] = image[i].flip([a + 1 for a in axes])
                label[i] = label[i].flip(axes)
        return image, label

    # -- intensity --------------------------------------------------------------------------------------------------
    def intensity(self, x: torch.Tensor) -> torch.Tensor:
        c, b = self.config, x.shape[0]
        shape = (b,) + (1,) * (x.ndim - 1)
        x = x.float()
        # Gaussian noise
        noise = self._chance(b, c.p_noise).view(shape).to(x.device)
        sd = self._uniform(b, *c.noise_variance).sqrt().view(shape).to(x.device)
        x = x + noise * sd * torch.randn(x.shape, generator=self.generator, device=self.generator.device).to(x.device)
        # Gaussian blur (per sample sigma)
        blur, sigmas = self._chance(b, c.p_blur).cpu(), self._uniform(b, *c.blur_sigma).cpu()
        if blur.any():
            x = torch.stack([_blur(x[i], float(sigmas[i]), c.anisotropic) if blur[i] else x[i] for i in range(b)])
        # brightness (multiplicative)
        bright = self._chance(b, c.p_brightness).view(shape).to(x.device)
        factor = self._uniform(b, *c.brightness_range).view(shape).to(x.device)
        x = torch.where(bright, x * factor, x)
        # contrast: stretch about the mean, clipped to the original range
        con = self._chance(b, c.p_contrast).view(shape).to(x.device)
        factor = self._uniform(b, *c.contrast_range).view(shape).to(x.device)
        dims = tuple(range(1, x.ndim))
        mean = x.mean(dims, keepdim=True)
        lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        x = torch.where(con, torch.minimum(torch.maximum((x - mean) * factor + mean, lo), hi), x)
        # simulated low resolution: nearest downsampling then trilinear upsampling
        low, zooms = self._chance(b, c.p_low_res).cpu(), self._uniform(b, *c.low_res_zoom).cpu()
        if low.any():
            x = torch.stack([_low_res(x[i], float(zooms[i]), c.anisotropic) if low[i] else x[i] for i in range(b)])
        # gamma (inverted, then normal), keeping mean and std
        for p, invert in ((c.p_gamma_inverted, True), (c.p_gamma, False)):
            do, gammas = self._chance(b, p).cpu(), self._uniform(b, *c.gamma_range).cpu()
            if do.any():
                x = torch.stack([_gamma(x[i], float(gammas[i]), invert) if do[i] else x[i] for i in range(b)])
        return x


def _rotation(axis: int, angle: float) -> torch.Tensor:
    """Rotation in (z, y, x) voxel coordinates; axis 0 turns the y-x plane (in-plane for sagittal stacks)."""
    cos, sin = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    m = torch.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = cos, -sin, sin, cos
    return m


def _center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    spatial = x.shape[-3:]
    starts = [(s - p) // 2 for s, p in zip(spatial, size)]
    return x[..., starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]


def _blur(x: torch.Tensor, sigma: float, anisotropic: bool) -> torch.Tensor:
    """Separable Gaussian blur of one sample [C,z,y,x]."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = x[:, None]                                                    # [C,1,z,y,x]
    for axis in ((1, 2) if anisotropic else (0, 1, 2)):
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[:, 0]


def _low_res(x: torch.Tensor, zoom: float, anisotropic: bool) -> torch.Tensor:
    size = list(x.shape[1:])
    small = [s if (i == 0 and anisotropic) else max(1, int(round(s * zoom))) for i, s in enumerate(size)]
    down = F.interpolate(x[None], size=small, mode="nearest")
    return F.interpolate(down, size=size, mode="trilinear", align_corners=False)[0]


def _gamma(x: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    if invert:
        x = -x
    mean, std = x.mean(), x.std()
    lo, hi = x.min(), x.max()
    y = ((x - lo) / (hi - lo + 1e-7)) ** gamma * (hi - lo + 1e-7) + lo
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return -y if invert else y
