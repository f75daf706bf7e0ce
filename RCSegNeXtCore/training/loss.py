"""Dice + cross-entropy loss, the nnU-Net default the paper trains with (Section 3.1), and nnU-Net 2.1's rule for
batch Dice.

The official trainer (nnU-Net v2.1.2's `nnUNetTrainerNoDeepSupervision._build_loss`) uses `DC_and_CE_loss` with
weights 1 and 1, cross-entropy averaged over the voxels, and `MemoryEfficientSoftDiceLoss(do_bg=False,
smooth=1e-5, batch_dice=<the plan's>)`: softmax, then per foreground class (2 * intersection + smooth) /
max(sum_pred + sum_gt + smooth, 1e-8), averaged over classes (and over samples unless batch Dice). Ours is the same
except that the Dice term is `1 - Dice`, nnU-Net's `-Dice`: a constant 1 apart (same gradients; our logged losses
are 1 higher than nnU-Net's).

Batch Dice sums the Dice statistics over the whole batch (one Dice per class); under DDP nnU-Net gathers them over
every process, so the batch is the global one (`ddp=True` here does the same). Whether the plan's configuration
uses it: `nnunet_batch_dice` (nnU-Net 2.1's planner).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

# nnU-Net 2.1 (ExperimentPlanner.lowres_creation_threshold): a 3d_lowres configuration is planned when the 3d_fullres
# patch holds fewer than this fraction of the median image's voxels
LOWRES_CREATION_THRESHOLD = 0.25


def nnunet_batch_dice(patch_size: Sequence[int], median_shape: Optional[Sequence[float]]) -> bool:
    """nnU-Net 2.1's `batch_dice` for a 3d_fullres configuration: True only when the planner also makes a 3d_lowres
    configuration, i.e. when the patch covers less than a quarter of the median image after resampling
    (`prod(patch) / prod(median shape) < 0.25`; nnunetv2 2.1.2 `ExperimentPlanner.plan_experiment`: the lowres loop
    runs, and so creates a 3d_lowres plan, exactly when that ratio is below `lowres_creation_threshold`; then
    fullres gets batch_dice True, otherwise False). Without a median shape (a plan made from values) no 3d_lowres
    can be judged: False, the value for the paper's data."""
    if not median_shape:
        return False
    return math.prod(int(p) for p in patch_size) / math.prod(float(m) for m in median_shape) \
        < LOWRES_CREATION_THRESHOLD


def resolve_batch_dice(setting: Optional[bool], plans) -> Tuple[bool, str]:
    """(batch Dice or not, why) for a training configuration's `batch_dice` (None: nnU-Net's rule on the plan's
    patch and median shape; True / False: forced)."""
    if setting is not None:
        return bool(setting), "set by the training configuration"
    median = getattr(plans, "median_shape", None)
    value = nnunet_batch_dice(plans.patch_size, median)
    if not median:
        return value, "nnU-Net 2.1's rule; the plan has no median shape, so no 3d_lowres is assumed"
    ratio = math.prod(plans.patch_size) / math.prod(median)
    lowres = "a 3d_lowres would be planned" if value else "no 3d_lowres would be planned"
    return value, (f"nnU-Net 2.1's rule: patch {list(plans.patch_size)} = {ratio:.2f} of the median image "
                   f"{list(median)} ({'<' if value else '>='} {LOWRES_CREATION_THRESHOLD}: {lowres})")


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's slice (so that, after DDP's
    averaging, the parameters get the gradient of the loss over the global batch)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        parts = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def _distributed() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                   batch_dice: bool = False, smooth: float = 1e-5, ddp: bool = False) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes.

    logits: [B, K, *spatial]; target: [B, *spatial] integer labels. With `batch_dice` the sums run over the whole
    batch (one Dice per class), otherwise one Dice per sample and class, then the mean. With `batch_dice` and `ddp`
    (in a process group of several processes) over the global batch.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = tuple(range(2, probs.ndim))
    intersection = (probs * onehot).sum(dims)                  # [B, K']
    denominator = probs.sum(dims) + onehot.sum(dims)
    if batch_dice:
        if ddp and _distributed():
            intersection = _GatherWithGradient.apply(intersection).sum(0)
            denominator = _GatherWithGradient.apply(denominator).sum(0)
        intersection, denominator = intersection.sum(0), denominator.sum(0)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


class DiceCELoss(torch.nn.Module):
    """`weight_ce * CE + weight_dice * (1 - soft Dice)`; a list of outputs (deep supervision) is weighted 1, 1/2,
    1/4, ... (normalised), each compared with the target downsampled by nearest neighbour."""

    def __init__(self, weight_ce: float = 1.0, weight_dice: float = 1.0, batch_dice: bool = False,
                 ddp: bool = False):
        super().__init__()
        self.weight_ce, self.weight_dice, self.batch_dice, self.ddp = weight_ce, weight_dice, batch_dice, ddp

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target.long())
        dice = soft_dice_loss(logits, target, batch_dice=self.batch_dice, ddp=self.ddp)
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
