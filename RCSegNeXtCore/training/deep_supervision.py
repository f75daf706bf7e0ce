"""Optional deep supervision (off in the paper, `--deep-supervision`): 1x1x1 heads on the coarser decoder outputs.

The heads live outside the network so the network's checkpoint keys (and inference) never change; the trainer
saves their weights beside the network's ("ds_heads") and `DiceCELoss` weights the outputs 1, 1/2, 1/4, ...
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn


class DeepSupervision(nn.Module):
    """network(x) -> [full-resolution logits, logits of each coarser decoder stage, finest first]."""

    def __init__(self, network: nn.Module, num_classes: int):
        super().__init__()
        self.network = network
        self.heads = nn.ModuleList(nn.Conv3d(width, num_classes, 1) for width in network.decoder_widths[1:])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        logits, features = self.network(x, return_features=True)
        return [logits] + [head(feature) for head, feature in zip(self.heads, features[1:])]
