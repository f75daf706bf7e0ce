"""The Augmenter: draws every transform's parameters for a batch from one torch.Generator (checkpointed, so a resume
is bit-identical) and applies them on the batch's device, in nnU-Net's order: spatial, noise, blur, brightness,
contrast, low resolution, gamma (inverted), gamma, mirror."""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch

from RCSegNeXtCore.training.augment import intensity as I
from RCSegNeXtCore.training.augment import spatial as S
from RCSegNeXtCore.training.augment.config import AugmentConfig

Shape = Union[int, Tuple[int, ...]]


class Augmenter:
    """`image, label = augmenter(image [B,C,z,y,x] float, label [B,z,y,x] int)` -> patch-sized, augmented."""

    def __init__(self, patch_size: Sequence[int], config: AugmentConfig | None = None,
                 generator: torch.Generator | None = None):
        self.patch_size = list(patch_size)
        self.config = config or AugmentConfig()
        self.generator = generator or torch.Generator()

    # -- random draws (all from self.generator, on its device) -----------------------------------------------------
    def _rand(self, shape: Shape) -> torch.Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return torch.rand(shape, generator=self.generator, device=self.generator.device)

    def _uniform(self, shape: Shape, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * self._rand(shape)

    def _chance(self, shape: Shape, p: float) -> torch.Tensor:
        return self._rand(shape) < p

    def _two_sided(self, shape: Shape, low: float, high: float) -> torch.Tensor:
        """batchgenerators v1's draw for ranges around 1: half the draws from [low, 1), half from [1, high]."""
        if low >= 1:
            return self._uniform(shape, low, high)
        below = self._chance(shape, 0.5)
        return torch.where(below, self._uniform(shape, low, 1.0), self._uniform(shape, max(low, 1.0), high))

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.spatial(image, label)
        image = self.intensity(image)
        return self.mirror(image, label)

    # -- spatial ----------------------------------------------------------------------------------------------------
    def spatial(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        c, b = self.config, image.shape[0]
        rotate = self._chance(b, c.p_rotation)
        limit = math.radians(c.rotation_degrees if c.dummy_2d else c.rotation_degrees_3d)
        angles = self._uniform((b, 1 if c.dummy_2d else 3), -limit, limit)
        scale = self._chance(b, c.p_scale)
        factors = self._two_sided(b, *c.scale_range) if c.spatial_scaling == "in_plane_two_sided" \
            else self._uniform(b, *c.scale_range)
        in_plane = c.dummy_2d and c.spatial_scaling == "in_plane_two_sided"
        m = S.spatial_matrices(angles, rotate, factors, scale, in_plane_scale=in_plane)
        return self.resample(image, label, m, (rotate | scale).cpu())

    def resample(self, image: torch.Tensor, label: torch.Tensor, m: torch.Tensor,
                 changed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Samples with `changed` through their matrix m [B, 3, 3]; the others centre-cropped to the patch."""
        out_image = S.center_crop(image, self.patch_size).float()
        out_label = S.center_crop(label, self.patch_size)
        if not changed.any():
            return out_image, out_label
        out_image, out_label = out_image.clone(), out_label.clone()
        idx = torch.nonzero(changed)[:, 0]
        dev_idx = idx.to(image.device)
        new_image, new_label = S.resample(image[dev_idx], label[dev_idx], m[idx], self.patch_size,
                                          self.config.interpolation)
        out_image[dev_idx] = new_image.to(out_image.dtype)
        out_label[dev_idx] = new_label.to(out_label.dtype)
        return out_image, out_label

    def mirror(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        axes = list(self.config.mirror_axes)
        flips = self._chance((image.shape[0], len(axes)), self.config.p_mirror)
        return S.mirror(image, label, flips, axes)

    # -- intensity --------------------------------------------------------------------------------------------------
    def intensity(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = self.noise(x)
        x = self.blur(x)
        x = self.brightness(x)
        x = self.contrast(x)
        x = self.low_res(x)
        x = self.gamma(x, invert=True)
        return self.gamma(x, invert=False)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        c, b = self.config, x.shape[0]
        fire = self._chance(b, c.p_noise)
        sd = self._uniform(b, *c.noise_range)
        if c.noise_sd == "sqrt":                    # RCSegNeXt 0.1: the draw taken as the variance
            sd = sd.sqrt()
        if not fire.any():
            return x
        idx = torch.nonzero(fire)[:, 0]
        noise = torch.randn((len(idx), *x.shape[1:]), generator=self.generator, device=self.generator.device)
        x = x.clone()
        dev_idx = idx.to(x.device)
        x[dev_idx] = I.add_noise(x[dev_idx], sd[idx], noise)
        return x

    def _sample_by_sample(self, x: torch.Tensor, p: float, value_range, apply) -> torch.Tensor:
        """RCSegNeXt 0.1's draw: per sample, fire with p and `apply(sample, value)`."""
        b = x.shape[0]
        fire, values = self._chance(b, p).cpu(), self._uniform(b, *value_range).cpu()
        if not fire.any():
            return x
        return torch.stack([apply(x[i], float(values[i])) if fire[i] else x[i] for i in range(b)])

    def _per_channel(self, x: torch.Tensor, p: float, p_channel: float, value_range):
        """batchgenerators v1's draw: a sample fires with p, then each of its channels with p_channel; the firing
        (samples, channels) index pairs and one value each."""
        b, ch = x.shape[:2]
        fire = self._chance(b, p)
        per_channel = self._chance((b, ch), p_channel)
        values = self._uniform((b, ch), *value_range)
        samples, channels = torch.nonzero((fire[:, None] & per_channel).cpu(), as_tuple=True)
        return samples, channels, values.cpu()[samples, channels].tolist()

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.intensity == "0.1":
            return self._sample_by_sample(x, c.p_blur, c.blur_sigma, lambda xi, v: I.blur_01(xi, v, c.dummy_2d))
        samples, channels, sigmas = self._per_channel(x, c.p_blur, c.p_blur_per_channel, c.blur_sigma)
        return I.blur(x, samples.to(x.device), channels.to(x.device), sigmas)

    def brightness(self, x: torch.Tensor) -> torch.Tensor:
        c, (b, ch) = self.config, x.shape[:2]
        fire = self._chance(b, c.p_brightness)
        factors = self._uniform((b, ch), *c.brightness_range)
        return I.multiply(x, torch.where(fire[:, None], factors, torch.ones_like(factors)))

    def contrast(self, x: torch.Tensor) -> torch.Tensor:
        c, (b, ch) = self.config, x.shape[:2]
        fire = self._chance(b, c.p_contrast)
        factors = self._two_sided((b, ch), *c.contrast_range)
        if not fire.any():
            return x
        return I.contrast(x, factors, fire)

    def low_res(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.intensity == "0.1":
            return self._sample_by_sample(x, c.p_low_res, c.low_res_zoom,
                                          lambda xi, v: I.low_res_01(xi, v, c.dummy_2d))
        samples, channels, zooms = self._per_channel(x, c.p_low_res, c.p_low_res_per_channel, c.low_res_zoom)
        return I.low_res(x, samples, channels, zooms, ignore_axis0=c.dummy_2d)

    def gamma(self, x: torch.Tensor, invert: bool) -> torch.Tensor:
        c, (b, ch) = self.config, x.shape[:2]
        p = c.p_gamma_inverted if invert else c.p_gamma
        if c.intensity == "0.1":
            fire, gammas = self._chance(b, p).cpu(), self._uniform(b, *c.gamma_range).cpu()
            if not fire.any():
                return x
            return torch.stack([I.gamma_01(x[i], float(gammas[i]), invert) if fire[i] else x[i] for i in range(b)])
        fire = self._chance(b, p)
        gammas = self._two_sided((b, ch), *c.gamma_range)
        samples, channels = torch.nonzero(fire[:, None].expand(b, ch).cpu(), as_tuple=True)
        dev = x.device
        return I.gamma(x, samples.to(dev), channels.to(dev), gammas.cpu()[samples, channels], invert)
