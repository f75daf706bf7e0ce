"""The blocks of the paper's Table 3, one class each (Sections 2.2-2.3, Fig. 3).

Every block maps [B, C, Z, Y, X] -> [B, C', Z, Y, X] with a stage kernel `k` (e.g. (1, 3, 3) or (3, 3, 3)) and
"same" padding; its keyword arguments are its options (`scale`, `expansion`), and an unknown one is a TypeError. Norm = InstanceNorm3d without affine parameters; all convolutions have biases (official code).
A block's `official_names` maps the official implementation's sub-module names onto ours (see official.py), and
`unused_official_shortcut` says whether the official code allocates a 1x1x1 shortcut conv that it never calls.
"""
from __future__ import annotations

import inspect
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from RCSegNeXtCore.errors import PlanError

Kernel = Tuple[int, int, int]


def _padding(kernel: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(k) // 2 for k in kernel)


def _norm(channels: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(channels, eps=1e-5, affine=False)


def _check_scale(name: str, channels: int, scale: int) -> None:
    if scale < 2 or channels % scale:
        raise PlanError(f"{name} block: {channels} channels are not divisible by scale {scale} "
                        f"(scale must be >= 2 and divide the split width of every block); choose base_channels a "
                        f"multiple of {scale}, or another scale")


def _shortcut(in_channels: int, out_channels: int) -> nn.Module | None:
    """1x1x1 projection only where the widths differ (the official code allocates it always, uses it only then)."""
    return nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None


class ConvBlock(nn.Module):
    """conv(k) -> IN -> ReLU; two of them make a stage of the 3D U-Net baseline ("Refined UNet-IN", Table 3 row 1)."""

    official_names: Dict[str, str] = {}
    unused_official_shortcut = False

    def __init__(self, in_channels: int, out_channels: int, kernel: Kernel):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, tuple(kernel), padding=_padding(kernel))
        self.norm = _norm(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class _ExpandCompressTail(nn.Module):
    """The tail AniNeXt and Res2NeXt share after their spatial mixing: IN -> 1x1x1 expand (x r) -> GELU ->
    1x1x1 compress -> + residual. Subclasses build their spatial module first (state_dict order as the official
    code), then call `_build_tail`."""

    def _build_tail(self, in_channels: int, out_channels: int, expansion: int) -> None:
        self.norm = _norm(in_channels)
        self.expand = nn.Conv3d(in_channels, expansion * in_channels, 1)
        self.act = nn.GELU()
        self.compress = nn.Conv3d(expansion * in_channels, out_channels, 1)
        self.shortcut = _shortcut(in_channels, out_channels)

    def _tail(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        y = self.compress(self.act(self.expand(self.norm(mixed))))
        return y + (x if self.shortcut is None else self.shortcut(x))


class AniNeXtBlock(_ExpandCompressTail):
    """AniNeXt / ConvNeXt block (Sec. 2.2, Fig. 3a): depthwise conv(k) -> IN -> 1x1x1 expand (x r) -> GELU ->
    1x1x1 compress -> + residual. With a (1, 3, 3) kernel it is AniNeXt; with (3, 3, 3) the ConvNeXt of Table 3."""

    official_names = {"conv1": "dwconv", "conv2": "expand", "conv3": "compress", "conv_shortcut": "shortcut"}
    unused_official_shortcut = True

    def __init__(self, in_channels: int, out_channels: int, kernel: Kernel, expansion: int = 2):
        super().__init__()
        self.dwconv = nn.Conv3d(in_channels, in_channels, tuple(kernel), padding=_padding(kernel),
                                groups=in_channels)
        self._build_tail(in_channels, out_channels, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tail(x, self.dwconv(x))


class _HierarchicalSplit(nn.Module):
    """Res2Net-style multi-scale split (Fig. 3b-d): chunks x1..xs of C/s channels; y1 = K1(x1),
    yi = Ki(xi + y(i-1)) for i = 2..s-1, ys = xs passed through unchanged (official semantics)."""

    def __init__(self, channels: int, kernel: Kernel, scale: int, depthwise: bool, norm_act: bool):
        super().__init__()
        width = channels // scale
        self.scale, self.width = scale, width
        self.convs = nn.ModuleList(
            nn.Conv3d(width, width, tuple(kernel), padding=_padding(kernel), groups=width if depthwise else 1)
            for _ in range(scale - 1))
        # Res2Net has IN + ReLU after each group conv; the NeXt variants have none
        self.post = nn.ModuleList(nn.Sequential(_norm(width), nn.ReLU(inplace=True)) for _ in range(scale - 1)) \
            if norm_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # = torch.chunk(x, scale, dim=1), with constant bounds: traced for ONNX with a dynamic batch, chunk's bounds
        # become shape computations and the exported instance norms lose their channel count
        chunks = [x[:, i * self.width:(i + 1) * self.width] for i in range(self.scale)]
        outs = []
        y = None
        for i, conv in enumerate(self.convs):
            y = conv(chunks[i] if y is None else chunks[i] + y)
            if self.post is not None:
                y = self.post[i](y)
            outs.append(y)
        outs.append(chunks[-1])
        return torch.cat(outs, dim=1)


class Res2NetBlock(nn.Module):
    """Res2Net bottleneck (Fig. 3b; Table 3 "Res2Net"): 1x1x1 conv-IN-ReLU (C -> C'), hierarchical k convs-IN-ReLU
    over s groups of C'/s channels (last group passed through), 1x1x1 conv-IN, + residual, ReLU. Not in the official
    code; widths are ours."""

    official_names: Dict[str, str] = {}
    unused_official_shortcut = False

    def __init__(self, in_channels: int, out_channels: int, kernel: Kernel, scale: int = 4):
        super().__init__()
        _check_scale("res2net", out_channels, scale)
        self.reduce = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1), _norm(out_channels), nn.ReLU(inplace=True))
        self.split = _HierarchicalSplit(out_channels, kernel, scale, depthwise=False, norm_act=True)
        self.combine = nn.Sequential(nn.Conv3d(out_channels, out_channels, 1), _norm(out_channels))
        self.shortcut = _shortcut(in_channels, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.combine(self.split(self.reduce(x)))
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


class Res2NeXtBlock(_ExpandCompressTail):
    """Res2NeXt (Sec. 2.3, Fig. 3c): depthwise hierarchical split (s groups) -> IN -> plain 1x1x1 expand (x r) ->
    GELU -> plain 1x1x1 compress -> + residual. IsoNeXt without the Scale-Aware Integration Module."""

    official_names = {"convs": "split.convs", "conv2": "expand", "conv3": "compress", "conv_shortcut": "shortcut"}
    unused_official_shortcut = True

    def __init__(self, in_channels: int, out_channels: int, kernel: Kernel, scale: int = 4, expansion: int = 2):
        super().__init__()
        _check_scale("res2next", in_channels, scale)
        self.split = _HierarchicalSplit(in_channels, kernel, scale, depthwise=True, norm_act=False)
        self._build_tail(in_channels, out_channels, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tail(x, self.split(x))


class ScaleAwareIntegration(nn.Module):
    """SAIM (Sec. 2.3, Fig. 3e): 1x1x1 expansion grouped by scale (s groups, intra-scale) -> GELU -> channel
    shuffle -> 1x1x1 compression with C/s groups (inter-scale), C = the block's input width.

    The shuffle views the r*C expanded channels as [s, r, C/s] (scale, expansion, width) and reorders them to
    [C/s, s, r], so compression group w sees all s*r (scale, expansion) channels of width index w.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, expansion: int):
        super().__init__()
        self.scale, self.expansion, self.width = scale, expansion, in_channels // scale
        if out_channels % self.width:
            raise PlanError(f"isonext block: output width {out_channels} is not divisible by the {self.width} "
                            f"compression groups (input width {in_channels} / scale {scale}); use an even scale")
        self.expand = nn.Conv3d(in_channels, expansion * in_channels, 1, groups=scale)
        self.act = nn.GELU()
        self.compress = nn.Conv3d(expansion * in_channels, out_channels, 1, groups=self.width)

    def shuffle(self, x: torch.Tensor) -> torch.Tensor:
        b, _, *spatial = x.shape
        x = x.view(b, self.scale, self.expansion, self.width, *spatial).permute(0, 3, 1, 2, 4, 5, 6)
        return x.reshape(b, -1, *spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compress(self.shuffle(self.act(self.expand(x))))


class IsoNeXtBlock(nn.Module):
    """IsoNeXt (Sec. 2.3, Fig. 3d/e): depthwise hierarchical split (s groups) -> IN -> Scale-Aware Integration
    Module -> + residual (1x1x1 shortcut conv only where the widths differ)."""

    official_names = {"convs": "split.convs", "conv2": "saim.expand", "conv3": "saim.compress",
                      "conv_shortcut": "shortcut"}
    unused_official_shortcut = True

    def __init__(self, in_channels: int, out_channels: int, kernel: Kernel, scale: int = 4, expansion: int = 2):
        super().__init__()
        _check_scale("isonext", in_channels, scale)
        self.split = _HierarchicalSplit(in_channels, kernel, scale, depthwise=True, norm_act=False)
        self.norm = _norm(in_channels)
        self.saim = ScaleAwareIntegration(in_channels, out_channels, scale, expansion)
        self.shortcut = _shortcut(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.saim(self.norm(self.split(x)))
        return y + (x if self.shortcut is None else self.shortcut(x))


# name -> class; "convnext" is AniNeXt's block in isotropic stages (Table 3)
BLOCKS: Dict[str, type] = {
    "conv": ConvBlock,
    "aninext": AniNeXtBlock,
    "convnext": AniNeXtBlock,
    "res2net": Res2NetBlock,
    "res2next": Res2NeXtBlock,
    "isonext": IsoNeXtBlock,
}


def block_class(name: str) -> type:
    """The block class for a Table 3 name; PlanError listing the valid names otherwise."""
    try:
        return BLOCKS[str(name).lower()]
    except KeyError:
        raise PlanError(f"unknown block type {name!r}; valid block types: {', '.join(BLOCKS)}") from None


def make_block(name: str, in_channels: int, out_channels: int, kernel: Kernel, **options: int) -> nn.Module:
    """A block of type `name`, given only those of the network-wide `options` (scale, expansion) it takes."""
    cls = block_class(name)
    taken = inspect.signature(cls).parameters
    return cls(in_channels, out_channels, kernel, **{k: v for k, v in options.items() if k in taken})
