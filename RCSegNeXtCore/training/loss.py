"""Dice + cross-entropy loss, the nnU-Net default the paper trains with (Section 3.1)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                   batch_dice: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes.

    logits: [B, K, *spatial]; target: [B, *spatial] integer labels. With `batch_dice` the sums run over the whole
    batch (one Dice per class), otherwise one Dice per sample and class, then the mean.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = tuple(range(2, probs.ndim))
    if batch_dice:
        dims = (0,) + dims
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


class DiceCELoss(torch.nn.Module):
    """`weight_ce * CE + weight_dice * (1 - soft Dice)`; a list of outputs (deep supervision) is weighted 1, 1/2,
    1/4, ... (normalised), each compared with the target downsampled by nearest neighbour."""

    def __init__(self, weight_ce: float = 1.0, weight_dice: float = 1.0, batch_dice: bool = True):
        super().__init__()
        self.weight_ce, self.weight_dice, self.batch_dice = weight_ce, weight_dice, batch_dice

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target.long())
        dice = soft_dice_loss(logits, target, batch_dice=self.batch_dice)
        return self.weight_ce * ce + self.weight_dice * dice

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self.single(output, target)
        weights = torch.tensor([0.5 ** i for i in range(len(output))])
        weights = weights / weights.sum()
        total = output[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights.tolist(), output):
            t = target
            if out.shape[2:] != target.shape[1:]:
                t = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0]
            total = total + w * self.single(out, t)
        return total
