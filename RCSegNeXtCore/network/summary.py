"""Per-stage architecture table: block type, kernel, stride, width, feature size, parameters and forward GFLOPs.

GFLOPs are counted by torch.utils.flop_counter (2 x multiply-accumulates of convolutions) on a "meta" copy of the
network, so a full-size patch costs no memory and no compute time.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, List, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from RCSegNeXtCore.network.counting import count_parameters, unused_official_parameters
from RCSegNeXtCore.network.rcsegnext import RCSegNeXt, build_network
from RCSegNeXtCore.plans import Architecture


@dataclass
class StageRow:
    name: str
    part: str
    block: str
    kernel: Optional[List[int]]
    stride: Optional[List[int]]
    width: int
    feature_size: List[int]
    live_params: int
    paper_params: int
    gflops: float


@dataclass
class NetworkSummary:
    patch_size: List[int]
    architecture: dict
    rows: List[StageRow] = field(default_factory=list)

    @property
    def live_params(self) -> int:
        return sum(r.live_params for r in self.rows)

    @property
    def paper_params(self) -> int:
        return sum(r.paper_params for r in self.rows)

    @property
    def gflops(self) -> float:
        return sum(r.gflops for r in self.rows)

    def format(self) -> str:
        """A fixed-width text table with totals."""
        def triple(v):
            return "x".join(map(str, v)) if v else "-"
        header = ("stage", "part", "block", "kernel", "stride", "width", "feature", "live params",
                  "paper params", "GFLOPs")
        lines = [[r.name, r.part, r.block, triple(r.kernel), triple(r.stride), str(r.width),
                  triple(r.feature_size), f"{r.live_params:,}", f"{r.paper_params:,}", f"{r.gflops:.2f}"]
                 for r in self.rows]
        lines.append(["total", "", "", "", "", "", "", f"{self.live_params:,}", f"{self.paper_params:,}",
                      f"{self.gflops:.2f}"])
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        fmt = lambda cells: "  ".join(c.rjust(w) if i >= 5 else c.ljust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
        a = self.architecture
        out.append(f"patch {triple(self.patch_size)}, {a['in_channels']} input channel(s), {a['num_classes']} "
                   f"classes, base width {a['base_channels']}, scale {a['scale']}, expansion {a['expansion']}")
        out.append(f"parameters: live {self.live_params:,} ({self.live_params / 1e6:.2f} M); as counted in the "
                   f"paper {self.paper_params:,} ({self.paper_params / 1e6:.2f} M, + unused official shortcut "
                   f"convs); forward {self.gflops:.1f} GFLOPs")
        return "\n".join(out)


def _gflops_per_module(network: RCSegNeXt, patch_size: Sequence[int]) -> dict:
    x = torch.zeros(1, network.stem.in_channels, *patch_size, device="meta")
    with FlopCounterMode(display=False, depth=3) as counter:
        network(x)
    return {name.split(".", 1)[1] if "." in name else "": sum(ops.values()) / 1e9
            for name, ops in counter.get_flop_counts().items()}


def summarize_network(plans_or_kernels: Any, strides: Optional[Sequence[Sequence[int]]] = None,
                      patch_size: Optional[Sequence[int]] = None, **architecture: Any) -> NetworkSummary:
    """Summary for a Plans object (its architecture and patch size unless overridden) or for kernels + strides
    (+ build_network keyword arguments and a patch size)."""
    if hasattr(plans_or_kernels, "kernels"):
        plans = plans_or_kernels
        kernels, strides, base = plans.kernels, plans.strides, plans.architecture
        patch_size = patch_size or plans.patch_size
    else:
        kernels, base = plans_or_kernels, Architecture()        # the defaults are Architecture's
    arch = replace(base, **{k: v for k, v in architecture.items() if v is not None}).network_kwargs()
    if patch_size is None or strides is None:
        raise ValueError("summarize_network needs strides and a patch size")
    patch = [int(p) for p in patch_size]
    with torch.device("meta"):
        network = build_network(kernels, strides, **arch)
    network._check_input(torch.empty(1, arch["in_channels"], *patch, device="meta"))  # clear error if not divisible
    flops = _gflops_per_module(network, patch)
    summary = NetworkSummary(patch, arch)

    def row(name, part, block, kernel, stride, width, size, modules, flop_keys):
        live = sum(count_parameters(m) for m in modules)
        paper = live + sum(unused_official_parameters(m) for m in modules)
        summary.rows.append(StageRow(name, part, block, kernel, stride, width, size, live, paper,
                                     sum(flops.get(k, 0.0) for k in flop_keys)))

    sizes, size = [], list(patch)
    for spec in network.specs:
        size = [s // st for s, st in zip(size, spec.stride or (1, 1, 1))]
        sizes.append(size)
    row("stem", "encoder", "conv 1x1x1", [1, 1, 1], None, network.specs[0].width, patch, [network.stem], ["stem"])
    for spec in network.specs:
        i = spec.index
        row(f"{i + 1}", "encoder", spec.block, list(spec.kernel), list(spec.stride) if spec.stride else None,
            spec.width, sizes[i], [network.encoder[i]], [f"encoder.{i}"])
    for spec in reversed(network.specs[:-1]):
        i = spec.index
        stride = list(network.specs[i + 1].stride)
        row(f"{i + 1}", "decoder", f"{spec.block} (+ up)", list(spec.kernel), stride, spec.width, sizes[i],
            [network.upsamples[i], network.decoder[i]], [f"upsamples.{i}", f"decoder.{i}"])
    row("head", "decoder", "conv 1x1x1", [1, 1, 1], None, arch["num_classes"], patch, [network.head], ["head"])
    return summary
