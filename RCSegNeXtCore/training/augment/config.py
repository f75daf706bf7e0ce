"""What the augmentation does: probabilities and ranges of nnU-Net v2.1's default trainer (batchgenerators v1, the
pipeline the paper's numbers come from), the dummy-2D decision, and the variants that reach RCSegNeXt 0.1's choices.

Each variant is a TrainingConfig field of the same purpose (recorded in RUN/training_config.json):

| AugmentConfig     | TrainingConfig          | official (default)     | RCSegNeXt 0.1        |
|-------------------|-------------------------|------------------------|----------------------|
| spatial_scaling   | aug_spatial_scaling     | "in_plane_two_sided"   | "all_axes_uniform"   |
| noise_sd          | aug_noise_sd            | "drawn"                | "sqrt"               |
| intensity         | aug_intensity           | "nnunet_v1"            | "0.1"                |
| interpolation     | aug_interpolation       | "cubic_onehot"         | "linear_nearest"     |
| (dummy_2d from)   | aug_dummy_2d_rule       | "patch"                | "spacing"            |
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

ANISO_THRESHOLD = 3.0   # nnU-Net's: dummy 2D when max(patch) / patch[0] > 3

SPATIAL_SCALING = ("in_plane_two_sided", "all_axes_uniform")
NOISE_SD = ("drawn", "sqrt")
INTENSITY = ("nnunet_v1", "0.1")
INTERPOLATION = ("cubic_onehot", "linear_nearest")
DUMMY_2D_RULES = ("patch", "spacing")


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    return value


def use_dummy_2d(patch_size: Sequence[int], spacing: Sequence[float], rule: str = "patch") -> bool:
    """nnU-Net's "dummy 2D" augmentation (spatial transform in-plane only, rotation about axis 0): decided from the
    PATCH, max(patch) / patch[0] > 3 (rule "patch", nnU-Net v2.1's configure_rotation_dummyDA_mirroring...); rule
    "spacing" is RCSegNeXt 0.1's max(spacing) / min(spacing) > 3."""
    check_choice("aug_dummy_2d_rule", rule, DUMMY_2D_RULES)
    if rule == "patch":
        return max(patch_size) / patch_size[0] > ANISO_THRESHOLD
    return max(spacing) / min(spacing) > ANISO_THRESHOLD


@dataclass
class AugmentConfig:
    p_rotation: float = 0.2
    rotation_degrees: float = 180.0          # dummy 2D: about axis 0 (in-plane) only
    rotation_degrees_3d: float = 30.0        # otherwise: about every axis
    p_scale: float = 0.2
    scale_range: Tuple[float, float] = (0.7, 1.4)
    p_noise: float = 0.1
    noise_range: Tuple[float, float] = (0.0, 0.1)   # batchgenerators' "noise_variance"; the draw is the noise's SD
    p_blur: float = 0.2
    p_blur_per_channel: float = 0.5
    blur_sigma: Tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: Tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    p_low_res: float = 0.25
    p_low_res_per_channel: float = 0.5
    low_res_zoom: Tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: Tuple[float, float] = (0.7, 1.5)
    p_mirror: float = 0.5
    mirror_axes: List[int] = field(default_factory=lambda: [0, 1, 2])
    dummy_2d: bool = True                    # spatial in-plane only; low resolution leaves axis 0 alone
    # variants (module docstring): the official pipeline's by default
    spatial_scaling: str = "in_plane_two_sided"
    noise_sd: str = "drawn"
    intensity: str = "nnunet_v1"
    interpolation: str = "cubic_onehot"

    def __post_init__(self):
        check_choice("aug_spatial_scaling", self.spatial_scaling, SPATIAL_SCALING)
        check_choice("aug_noise_sd", self.noise_sd, NOISE_SD)
        check_choice("aug_intensity", self.intensity, INTENSITY)
        check_choice("aug_interpolation", self.interpolation, INTERPOLATION)


CONTEXT_RULES = ("nnunet", "1.5x")
NNUNET_CONTEXT_MIN_SCALE = 0.85   # nnU-Net 2.1 sizes the region with a fixed scale range (0.85, 1.25), not the drawn one


def _rotation_3d(axis: int, angle: float) -> np.ndarray:
    """batchgenerators' rotation matrix about axis 0, 1 or 2 (create_matrix_rotation_{x,y,z}_3d)."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def context_size(patch_size: Sequence[int], config: AugmentConfig, rule: str = "nnunet") -> List[int]:
    """Size of the region the sampler cuts around a training patch for the spatial transform to draw from.

    "nnunet" (nnU-Net 2.1's initial patch size, get_patch_size): the patch's extent vector rotated by each axis's
    largest angle (at most 90 degrees; about axis 0 only in dummy 2D), the largest absolute extent per axis, divided
    by 0.85 and truncated; axis 0 keeps the patch in dummy 2D. For a [16, 64, 64] dummy-2D patch: [16, 75, 75], so
    rotated or shrunk patches get empty corners as in the official pipeline. "1.5x" (RCSegNeXt 0.1): x1.5 in-plane
    in dummy 2D, every axis otherwise. Without spatial augmentation the region is the patch."""
    check_choice("sampler_context", rule, CONTEXT_RULES)
    patch = [int(p) for p in patch_size]
    if not (config.p_rotation > 0 or config.p_scale > 0):
        return patch
    if rule == "1.5x":
        return [p if (i == 0 and config.dummy_2d) else int(math.ceil(p * 1.5)) for i, p in enumerate(patch)]
    if config.dummy_2d:
        angles = [min(math.pi / 2, math.radians(config.rotation_degrees)), 0.0, 0.0]
    else:
        angles = [min(math.pi / 2, math.radians(config.rotation_degrees_3d))] * 3
    extent = np.array(patch, dtype=float)
    largest = extent.copy()
    for axis, angle in enumerate(angles):
        largest = np.maximum(largest, np.abs(extent @ _rotation_3d(axis, angle)))   # row vector, as batchgenerators
    out = [int(v) for v in largest / NNUNET_CONTEXT_MIN_SCALE]
    if config.dummy_2d:
        out[0] = patch[0]
    return out
