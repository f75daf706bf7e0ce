"""Import weights saved by the official RCSegNeXt implementation (nnU-Net v2 fork, `RCSegNeXt.py`).

Official keys: `stem`, `encoder{1..5}.{0,1}.<conv>`,
`decoder{4..1}.{0,1}.<conv>`, `tran{1..4}` (tran1 = deepest upsampling), `outconv.0`. Block convs are `conv1`
(AniNeXt/ConvNeXt depthwise), `convs.N` (Res2NeXt/IsoNeXt group convs), `conv2`, `conv3`, `conv_shortcut`.
The official blocks allocate `conv_shortcut` also where input and output widths are equal and never use it there;
those weights are dropped. Everything about the architecture is read from the tensor shapes.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from RCSegNeXtCore.errors import ModelError, first_line
from RCSegNeXtCore.network.blocks import block_class
from RCSegNeXtCore.network.rcsegnext import RCSegNeXt, build_network

_BLOCK_KEY = re.compile(r"^(encoder|decoder)(\d+)\.(\d+)\.([a-z_0-9]+)\.(.+)$")


def _as_tensors(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        if key.startswith("__"):  # e.g. __input__ / __output__ of the reference .npz
            continue
        key = key[len("module."):] if key.startswith("module.") else key
        out[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    return out


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise ModelError(f"not a state_dict of the official RCSegNeXt network: key {key!r} is missing "
                         f"(found e.g. {', '.join(list(sd)[:5])})")
    return sd[key]


def _stage_kind(sd: Mapping[str, torch.Tensor], prefix: str) -> Tuple[str, Tuple[int, ...], int, int]:
    """(block name, kernel, scale or 0, expansion) of one official stage, from its first block's shapes."""
    in_channels = None
    if f"{prefix}.0.conv1.weight" in sd:  # AniNeXt / ConvNeXt: depthwise conv1 over all channels
        w = sd[f"{prefix}.0.conv1.weight"]
        kernel, in_channels = tuple(w.shape[2:]), w.shape[0]
        name, scale = ("aninext" if 1 in kernel else "convnext"), 0
    elif f"{prefix}.0.convs.0.weight" in sd:  # Res2NeXt / IsoNeXt: s-1 depthwise group convs
        w = sd[f"{prefix}.0.convs.0.weight"]
        kernel = tuple(w.shape[2:])
        scale = 1 + sum(1 for k in sd if re.fullmatch(rf"{re.escape(prefix)}\.0\.convs\.\d+\.weight", k))
        in_channels = w.shape[0] * scale
        grouped = _need(sd, f"{prefix}.0.conv2.weight").shape[1] != in_channels
        name = "isonext" if grouped else "res2next"
    else:
        raise ModelError(f"official stage {prefix!r}: unknown block layout (neither conv1 nor convs.*); only the "
                         "official RCSegNeXt network's AniNeXt/ConvNeXt/Res2NeXt/IsoNeXt stages can be imported")
    expansion = _need(sd, f"{prefix}.0.conv2.weight").shape[0] // in_channels
    return name, tuple(int(k) for k in kernel), scale, int(expansion)


def official_architecture(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """kernels, strides and the Architecture fields (in_channels, num_classes, base_channels, scale, expansion,
    aniso_block, iso_block) of an official checkpoint, read from its shapes."""
    sd = _as_tensors(state_dict)
    stem, head = _need(sd, "stem.weight"), _need(sd, "outconv.0.weight")
    levels = sorted({int(m.group(2)) for m in map(_BLOCK_KEY.match, sd) if m and m.group(1) == "encoder"})
    if not levels or levels != list(range(1, len(levels) + 1)) or len(levels) < 2:
        raise ModelError(f"official state_dict: encoder stages {levels} are not 1..n (n >= 2)")
    kinds = [_stage_kind(sd, f"encoder{i}") for i in levels]
    strides = [list(_need(sd, f"tran{len(levels) - i}.weight").shape[2:]) for i in range(1, len(levels))]
    aniso = {name for name, kernel, _, _ in kinds if 1 in kernel} or {"aninext"}
    iso = {name for name, kernel, _, _ in kinds if 1 not in kernel} or {"isonext"}
    scales = {scale for _, _, scale, _ in kinds if scale} or {4}
    expansions = {e for _, _, _, e in kinds}
    if len(aniso) > 1 or len(iso) > 1 or len(scales) > 1 or len(expansions) > 1:
        raise ModelError(f"official state_dict mixes block types {sorted(aniso | iso)}, scales {sorted(scales)} or "
                         f"expansions {sorted(expansions)}; such a network cannot be described by one plan")
    return {"kernels": [list(k) for _, k, _, _ in kinds], "strides": strides,
            "in_channels": int(stem.shape[1]), "num_classes": int(head.shape[0]),
            "base_channels": int(stem.shape[0]), "scale": scales.pop(), "expansion": expansions.pop(),
            "aniso_block": aniso.pop(), "iso_block": iso.pop()}


def _our_key(key: str, arch: Dict[str, Any], num_levels: int) -> Optional[str]:
    """Our name for an official key; None for an unused shortcut (dropped)."""
    if key.startswith("stem."):
        return key
    if key.startswith("outconv.0."):
        return "head." + key[len("outconv.0."):]
    match = re.match(r"^tran(\d+)\.(.+)$", key)
    if match:
        return f"upsamples.{num_levels - 1 - int(match.group(1))}.{match.group(2)}"
    match = _BLOCK_KEY.match(key)
    if not match:
        raise ModelError(f"official state_dict: unexpected key {key!r}")
    part, level, block, name, rest = match.groups()
    level = int(level) - 1
    kernel = arch["kernels"][level]
    cls = block_class(arch["aniso_block"] if 1 in kernel else arch["iso_block"])
    if name not in cls.official_names:
        raise ModelError(f"official state_dict: unexpected key {key!r} for a {cls.__name__}")
    return f"{part}.{level}.{block}.{cls.official_names[name]}.{rest}"


def convert_official_state_dict(state_dict: Mapping[str, Any], kernels: Optional[Sequence[Sequence[int]]] = None,
                                strides: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, torch.Tensor]:
    """Official keys -> ours, unused shortcut weights dropped; loads into build_network(**official_architecture(sd))
    with strict=True. Given kernels/strides (e.g. from plans.json) must match the checkpoint's."""
    sd = _as_tensors(state_dict)
    arch = official_architecture(sd)
    for name, given in (("kernels", kernels), ("strides", strides)):
        if given is not None and [list(map(int, v)) for v in given] != arch[name]:
            raise ModelError(f"the official checkpoint was made for {name} {arch[name]}, the plan has "
                             f"{[list(v) for v in given]}; use a plan with the checkpoint's {name}")
    num_levels = len(arch["kernels"])
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".conv_shortcut." in key:
            weight = sd[key.rsplit(".", 1)[0] + ".weight"]
            if weight.shape[0] == weight.shape[1]:  # C == C': allocated but never used by the official forward
                continue
        out[_our_key(key, arch, num_levels)] = value.float().contiguous()
    return out


def load_official_network(state_dict: Mapping[str, Any]) -> Tuple[RCSegNeXt, Dict[str, Any]]:
    """Build the matching network, load the converted weights strictly; returns (network, architecture)."""
    arch = official_architecture(state_dict)
    network = build_network(**arch)
    try:
        network.load_state_dict(convert_official_state_dict(state_dict), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"official weights do not fit the rebuilt network: {first_line(exc)}") from None
    return network, arch
