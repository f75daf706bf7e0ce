"""Parameter counts: "live" (what gets a gradient) and "as counted in the paper" (Table 3's #P).

The official implementation allocates a 1x1x1 shortcut conv C -> C' in every AniNeXt / ConvNeXt / Res2NeXt /
IsoNeXt block, also where C == C' and `forward` never calls it; the paper's #P(M) column counts those weights.
We do not allocate them (counts per variant: docs/network.md); `count_paper_parameters` adds them back.
"""
from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Number of parameter values (every parameter of our networks is live: none is allocated and left unused)."""
    return sum(p.numel() for p in module.parameters())


def unused_official_parameters(module: nn.Module) -> int:
    """Weights + biases of the shortcut convs the official code allocates but never uses (C == C' blocks)."""
    total = 0
    for block in module.modules():
        if getattr(type(block), "unused_official_shortcut", False) and getattr(block, "shortcut", 1) is None:
            channels = block.compress.out_channels if hasattr(block, "compress") else block.saim.compress.out_channels
            total += channels * channels + channels
    return total


def count_paper_parameters(module: nn.Module) -> int:
    """Live parameters + the unused official shortcut weights: the count the paper reports (e.g. 2.76 M)."""
    return count_parameters(module) + unused_official_parameters(module)
