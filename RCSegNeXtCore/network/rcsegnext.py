"""The RCSegNeXt U-shaped network assembled from a plan (paper Sec. 2.1, Fig. 2, Appendix A).

Stage i has width base * 2**i and two blocks (the first changes the width, the second keeps it). A stage whose kernel
has a 1 on any axis is anisotropic and uses `aniso_block` (AniNeXt), the others use `iso_block` (IsoNeXt).
1x1x1 stem, max pooling with the plan's strides, transposed-conv upsampling (kernel = stride), skip concatenation
(upsampled first, then skip), decoder stages mirroring encoder stages 0..n-2, 1x1x1 head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.network.blocks import BLOCKS, block_class, make_block
from RCSegNeXtCore.strides import total_stride

Triple = Tuple[int, int, int]


@dataclass(frozen=True)
class StageSpec:
    """One resolution level: its kernel, the pooling stride into it (None for the first), width and block name."""

    index: int
    kernel: Triple
    stride: Optional[Triple]
    width: int
    block: str

    @property
    def anisotropic(self) -> bool:
        return 1 in self.kernel


def _triples(name: str, values: Sequence[Sequence[int]]) -> List[Triple]:
    out = []
    for v in values:
        t = tuple(int(x) for x in v)
        if len(t) != 3 or min(t) < 1:
            raise PlanError(f"every entry of {name} must be 3 positive integers (z, y, x), got {list(v)!r}")
        out.append(t)
    return out


def stage_specs(kernels: Sequence[Sequence[int]], strides: Sequence[Sequence[int]], base_channels: int = 32,
                aniso_block: str = "aninext", iso_block: str = "isonext") -> List[StageSpec]:
    """Per-stage specs from a plan (Algorithm 1's kernels and strides)."""
    kernels_t, strides_t = _triples("kernels", kernels), _triples("strides", strides)
    if len(kernels_t) != len(strides_t) + 1 or not strides_t:
        raise PlanError(f"a plan needs one kernel more than strides and at least one stride; got {len(kernels_t)} "
                        f"kernels and {len(strides_t)} strides")
    if int(base_channels) != base_channels or base_channels < 1:
        raise PlanError(f"base_channels must be a positive integer, got {base_channels!r}")
    block_class(aniso_block), block_class(iso_block)  # clear error for unknown names
    return [StageSpec(i, k, strides_t[i - 1] if i else None, int(base_channels) * 2 ** i,
                      (aniso_block if 1 in k else iso_block).lower())
            for i, k in enumerate(kernels_t)]


class Stage(nn.Sequential):
    """Two blocks of one kind: in -> width, width -> width."""

    def __init__(self, block: str, in_channels: int, width: int, kernel: Triple, scale: int, expansion: int):
        super().__init__(make_block(block, in_channels, width, kernel, scale=scale, expansion=expansion),
                         make_block(block, width, width, kernel, scale=scale, expansion=expansion))


class RCSegNeXt(nn.Module):
    """[B, in_channels, Z, Y, X] -> logits [B, num_classes, Z, Y, X]; Z, Y, X divisible by the total stride."""

    def __init__(self, specs: Sequence[StageSpec], in_channels: int = 1, num_classes: int = 3, scale: int = 4,
                 expansion: int = 2):
        super().__init__()
        self.specs = list(specs)
        self.total_stride = total_stride([s.stride for s in self.specs[1:]])
        widths = [s.width for s in self.specs]
        self.decoder_widths = widths[:-1]  # finest first; for deep-supervision heads built by the trainer
        self.stem = nn.Conv3d(in_channels, widths[0], 1)
        self.encoder = nn.ModuleList(
            Stage(s.block, widths[max(i - 1, 0)], s.width, s.kernel, scale, expansion)
            for i, s in enumerate(self.specs))
        self.pools = nn.ModuleList(nn.MaxPool3d(s.stride, s.stride) for s in self.specs[1:])
        # upsamples[i] / decoder[i]: from level i+1 up to level i
        self.upsamples = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], s.stride, s.stride)
            for i, s in enumerate(self.specs[1:]))
        self.decoder = nn.ModuleList(
            Stage(s.block, 2 * s.width, s.width, s.kernel, scale, expansion) for s in self.specs[:-1])
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.stem.in_channels:
            raise PlanError(f"network input must be [B, {self.stem.in_channels}, Z, Y, X], got {list(x.shape)}")
        if any(n % t for n, t in zip(x.shape[2:], self.total_stride)):
            raise PlanError(f"network input size {list(x.shape[2:])} is not divisible by the total stride "
                            f"{self.total_stride}; pad or crop to a multiple of it")

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Logits; with `return_features=True` also the decoder outputs, finest first (for deep supervision)."""
        self._check_input(x)
        skips = []
        x = self.stem(x)
        for i, stage in enumerate(self.encoder):
            if i:
                x = self.pools[i - 1](x)
            x = stage(x)
            skips.append(x)
        features = []
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](torch.cat([self.upsamples[i](x), skips[i]], dim=1))
            features.append(x)
        logits = self.head(x)
        return (logits, features[::-1]) if return_features else logits


def build_network(kernels: Sequence[Sequence[int]], strides: Sequence[Sequence[int]], *, in_channels: int = 1,
                  num_classes: int = 3, base_channels: int = 32, scale: int = 4, expansion: int = 2,
                  aniso_block: str = "aninext", iso_block: str = "isonext") -> RCSegNeXt:
    """The network a plan describes (random weights). Block names: see BLOCKS."""
    for name, value, low in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1),
                             ("scale", scale, 2), ("expansion", expansion, 1)):
        if int(value) != value or value < low:
            raise PlanError(f"{name} must be an integer >= {low}, got {value!r}")
    specs = stage_specs(kernels, strides, base_channels, aniso_block, iso_block)
    return RCSegNeXt(specs, int(in_channels), int(num_classes), int(scale), int(expansion))


__all__ = ["BLOCKS", "RCSegNeXt", "Stage", "StageSpec", "build_network", "stage_specs"]
