"""nnU-Net-style data augmentation on torch tensors, batched on the training device: the transforms and parameters
of nnU-Net v2.1's default trainer (batchgenerators v1), which the paper's numbers come from.

Spatial: rotation and scaling (nnU-Net's "dummy 2D" for patches with max(patch) / patch[0] > 3: in-plane only, axis
0 untouched), resampled into the patch from the sampler's larger context (image cubic B-spline, label one-hot linear);
mirroring. Intensity: Gaussian noise, Gaussian blur, brightness, contrast, simulated low resolution, gamma (inverted
and normal). All random draws come from one `torch.Generator` whose state is checkpointed (bit-identical resume).
RCSegNeXt 0.1's choices stay reachable through the variants in `config.py` (TrainingConfig fields `aug_*`).

Modules: config (AugmentConfig, variants, the dummy-2D rule, context size), augmenter (Augmenter: the draws),
spatial and intensity (the transforms given their parameters), kernels (scipy / skimage interpolation and filters in
torch).
"""
from RCSegNeXtCore.training.augment.augmenter import Augmenter
from RCSegNeXtCore.training.augment.config import (ANISO_THRESHOLD, AugmentConfig, check_choice, context_size,
                                                   use_dummy_2d)

__all__ = ["ANISO_THRESHOLD", "AugmentConfig", "Augmenter", "check_choice", "context_size", "use_dummy_2d"]
