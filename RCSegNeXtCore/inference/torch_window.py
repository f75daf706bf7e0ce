"""The sliding window's device path for PyTorch backends on a GPU (CUDA, MPS): the padded volume, the Gaussian
weights and the (K, z, y, x) sums live on the device; tiles are gathered, flipped and accumulated there, the network
runs under the backend's autocast (bf16 / fp16) in channels_last_3d. Same tiles, weights, mirror combinations and
arithmetic as sliding_window's numpy path (tested equal on the CPU); only the result comes back to the host. With
`members` the review map's running sums (each member's softmax and entropy, Gaussian-weighted) live there too.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


@torch.inference_mode()
def accumulate_on_device(backends, layout, combos, num_classes: int, step: int, passed: Callable[[int], None],
                         logits: bool, members: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """`layout` (sliding_window.Layout) run by `backends` (TorchBackend, one per fold, all on one device) ->
    averaged logits or probabilities (K, z, y, x) float32 on the host; with `members`, (that, the members'
    disagreement map (z, y, x)) as sliding_window._accumulate."""
    device = backends[0].device
    memory_format = torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format
    padded = torch.from_numpy(layout.padded).to(device)
    weight = torch.from_numpy(layout.weight).to(device)
    summed = torch.zeros((num_classes, *padded.shape[1:]), dtype=torch.float32, device=device)
    weights = torch.zeros(padded.shape[1:], dtype=torch.float32, device=device)
    if members:
        sum_p = torch.zeros_like(summed)
        sum_h = torch.zeros_like(weights)
    for first in range(0, len(layout.tiles), step):
        batch_slices = layout.tiles[first:first + step]
        batch = torch.stack([padded[(slice(None), *t)] for t in batch_slices]).contiguous(memory_format=memory_format)
        mean, mean_p, mean_h = _mean_logits(backends, batch, combos, num_classes, layout.window,
                                            lambda n=len(batch_slices): passed(n), members)
        for i, (t, p) in enumerate(zip(batch_slices, mean)):
            summed[(slice(None), *t)] += p * weight
            weights[t] += weight
            if members:
                sum_p[(slice(None), *t)] += mean_p[i] * weight
                sum_h[t] += mean_h[i] * weight
    weights = weights.clamp_min(1e-12)
    summed /= weights
    summed = summed[(slice(None), *layout.region)]
    result = (summed if logits else torch.softmax(summed, dim=0)).float().cpu().numpy()
    if not members:
        return result
    from RCSegNeXtCore.inference.uncertainty import mutual_information
    sum_p, sum_h = sum_p / weights, sum_h / weights
    return result, mutual_information(sum_p[(slice(None), *layout.region)].cpu().numpy(),
                                      sum_h[layout.region].cpu().numpy())


def _mean_logits(backends, batch: torch.Tensor, combos, num_classes: int, window, on_pass, members: bool = False):
    """Logits of a batch of windows averaged over the backends (folds) and mirrorings; `on_pass` after each pass.
    Returns (mean logits, the members' mean softmax, their mean entropy in nats), the last two None unless
    `members`."""
    device = batch.device
    logits_sum = torch.zeros((batch.shape[0], num_classes, *window), dtype=torch.float32, device=device)
    p_sum = torch.zeros_like(logits_sum) if members else None
    h_sum = torch.zeros((batch.shape[0], *window), dtype=torch.float32, device=device) if members else None
    for backend in backends:
        for combo in combos:
            dims = [a + 2 for a in combo]
            x = torch.flip(batch, dims) if dims else batch
            with torch.autocast(device.type, dtype=backend.amp_dtype or torch.float32,
                                enabled=backend.amp_dtype is not None):
                out = backend.network(x)
            if isinstance(out, (list, tuple)):  # deep supervision: full resolution first
                out = out[0]
            out = out.float()
            out = torch.flip(out, dims) if dims else out
            logits_sum += out
            if members:  # H = logsumexp(z) - sum_k p_k z_k, as uncertainty.softmax_and_entropy
                p = torch.softmax(out, dim=1)
                p_sum += p
                h_sum += torch.logsumexp(out, dim=1) - (p * out).sum(dim=1)
            on_pass()
    count = len(backends) * len(combos)
    if not members:
        return logits_sum / count, None, None
    return logits_sum / count, p_sum / count, h_sum / count
