"""Memory a training configuration needs, and a configuration that fits when it does not (CPU training).

Activation memory is measured, not guessed: one forward pass of the plan's network on the smallest valid patch,
counting the (distinct) tensors autograd saves for backward, scaled linearly to the real patch and batch. Weights
count four times (weights, gradients, SGD momentum, a copy in flight), and a factor covers temporaries of backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from RCSegNeXtCore.errors import RCSegNeXtError
from RCSegNeXtCore.strides import total_stride

OVERHEAD = 1.1   # peak during backward over the saved activations (gradients of the largest maps, workspace)


class OutOfMemoryPlan(RCSegNeXtError):
    """The configuration would not fit into the memory available."""


@dataclass
class MemoryEstimate:
    bytes_total: int
    bytes_activations: int
    bytes_parameters: int

    @property
    def gib(self) -> float:
        return self.bytes_total / 2 ** 30


def network_profile(plans) -> Tuple[float, int]:
    """(bytes autograd keeps per input voxel for one sample in fp32, number of parameters), measured with one
    forward pass on the smallest valid patch."""
    probe = [t * 2 for t in total_stride(plans.strides)]
    network = plans.build_network()
    seen = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        except RuntimeError:
            key = id(t)
        seen[key] = t.numel() * t.element_size()
        return t

    x = torch.zeros(1, plans.architecture.in_channels, *probe)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = network(x)
    del out
    return sum(seen.values()) / math.prod(probe), sum(p.numel() for p in network.parameters())


def estimate_training_memory(plans, batch_size: int, patch_size: List[int],
                             profile: Optional[Tuple[float, int]] = None) -> MemoryEstimate:
    per_voxel, n_params = network_profile(plans) if profile is None else profile
    activations = per_voxel * batch_size * math.prod(patch_size) * OVERHEAD
    params = n_params * 4 * 4
    return MemoryEstimate(int(activations + params), int(activations), int(params))


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def propose_fitting(plans, batch_size: int, patch_size: List[int], available: int,
                    profile: Tuple[float, int]) -> Optional[Tuple[int, List[int]]]:
    """Smaller batch first, then halve the in-plane patch (kept a multiple of the total stride)."""
    stride = total_stride(plans.strides)
    batch, patch = batch_size, list(patch_size)
    for _ in range(32):
        if estimate_training_memory(plans, batch, patch, profile).bytes_total <= 0.8 * available:
            return batch, patch
        if batch > 1:
            batch -= 1
            continue
        units = [p // s for p, s in zip(patch, stride)]             # the largest axes, in units of the stride
        if max(units) == 1:
            return None
        for axis in range(3):
            if units[axis] == max(units):
                patch[axis] = max(stride[axis], (patch[axis] // 2) // stride[axis] * stride[axis])
    return None


def check_fits(plans, batch_size: int, patch_size: List[int], device: str, available: Optional[int] = None
               ) -> Optional[MemoryEstimate]:
    """On CPU, raise OutOfMemoryPlan with a proposal when the configuration exceeds the free memory."""
    if not str(device).startswith("cpu"):
        return None
    available = available_memory_bytes() if available is None else available
    profile = network_profile(plans)
    estimate = estimate_training_memory(plans, batch_size, patch_size, profile)
    if available is None or estimate.bytes_total <= available:
        return estimate
    proposal = propose_fitting(plans, batch_size, patch_size, available, profile)
    hint = (f"try --batch-size {proposal[0]} --patch-size {' '.join(map(str, proposal[1]))}"
            if proposal else "try a smaller --base-channels")
    raise OutOfMemoryPlan(
        f"training batch {batch_size} x patch {patch_size} (base channels {plans.architecture.base_channels}) "
        f"needs about {estimate.gib:.1f} GiB on CPU, but only {available / 2 ** 30:.1f} GiB is free; {hint}, "
        "or train on a GPU (--device cuda)")
