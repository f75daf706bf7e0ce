"""Import of the official implementation's checkpoints: the reference .npz must give the official logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REFERENCE, require_path

from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.network import build_network, count_parameters
from RCSegNeXtCore.network.official import (convert_official_state_dict, load_official_network,
                                            official_architecture)
from RCSegNeXtCore.planning import plan_kernels_and_strides

NPZ = REFERENCE / "official_rcsegnext_reference.npz"
TSV = REFERENCE / "official_rcsegnext_state_dict.tsv"
DATASET_A = plan_kernels_and_strides([4.0, 0.875, 0.875])


@pytest.fixture(scope="module")
def official():
    require_path(NPZ, "official reference output")
    with np.load(NPZ, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def test_reference_keys_match_the_tsv(official):
    rows = [line.split("\t") for line in TSV.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")][1:]
    assert {k: tuple(int(n) for n in s.split("x")) for k, s in rows} == \
        {k: v.shape for k, v in official.items() if not k.startswith("__")}


@pytest.mark.slow
def test_importer_reproduces_the_official_output(official):
    network, arch = load_official_network(official)
    assert arch == {"kernels": DATASET_A[0], "strides": DATASET_A[1], "in_channels": 1, "num_classes": 3,
                    "base_channels": 32, "scale": 4, "expansion": 2, "aniso_block": "aninext",
                    "iso_block": "isonext"}
    network.eval()
    with torch.inference_mode():
        out = network(torch.from_numpy(official["__input__"]))
    expected = torch.from_numpy(official["__output__"])
    assert out.shape == expected.shape == (1, 3, 16, 64, 64)
    assert (out - expected).abs().max().item() < 1e-4


def test_conversion_drops_exactly_the_unused_shortcuts(official):
    converted = convert_official_state_dict(official, *DATASET_A)
    weights = {k: v for k, v in official.items() if not k.startswith("__")}
    assert sum(v.size for v in weights.values()) == 2_759_363  # the paper's 2.76 M
    dropped = {k for k in weights if "conv_shortcut" in k and weights[k.rsplit(".", 1)[0] + ".weight"].shape[0]
               == weights[k.rsplit(".", 1)[0] + ".weight"].shape[1]}
    assert len(dropped) == 2 * 10  # encoder1.0 and every second block of the 9 stages
    assert len(converted) == len(weights) - len(dropped)
    assert sum(v.numel() for v in converted.values()) == 2_320_611
    network = build_network(*DATASET_A)
    network.load_state_dict(converted, strict=True)
    assert count_parameters(network) == 2_320_611
    # spot checks of the mapping
    assert torch.equal(converted["upsamples.3.weight"], torch.from_numpy(official["tran1.weight"]))
    assert torch.equal(converted["encoder.2.0.saim.compress.weight"],
                       torch.from_numpy(official["encoder3.0.conv3.weight"]))
    assert torch.equal(converted["decoder.0.1.dwconv.weight"], torch.from_numpy(official["decoder1.1.conv1.weight"]))


def test_conversion_accepts_tensors_and_a_module_prefix(official):
    as_torch = {f"module.{k}": torch.from_numpy(v) for k, v in official.items() if not k.startswith("__")}
    converted = convert_official_state_dict(as_torch)
    assert torch.equal(converted["head.weight"], torch.from_numpy(official["outconv.0.weight"]))


def test_other_plan_is_refused(official):
    kernels, strides = plan_kernels_and_strides([3.3, 0.234, 0.234])
    with pytest.raises(ModelError, match="kernels"):
        convert_official_state_dict(official, kernels, strides)


def test_not_an_official_checkpoint(official):
    with pytest.raises(ModelError, match="missing"):
        official_architecture({k: v for k, v in official.items() if k != "stem.weight"})
    with pytest.raises(ModelError, match="unexpected key"):
        convert_official_state_dict({**official, "encoder1.0.gamma.weight": np.zeros(3, np.float32)})
    ours = build_network(*DATASET_A, base_channels=4).state_dict()
    with pytest.raises(ModelError):
        official_architecture(ours)


def test_res2next_and_convnext_variants_are_recognised(official):
    """An official-style Res2NeXt/ConvNeXt state_dict: grouped vs ungrouped conv2, conv1 in isotropic stages."""
    weights = {k: v for k, v in official.items() if not k.startswith("__")}
    res2next = dict(weights)
    for key, value in weights.items():  # ungroup conv2 / conv3 of the IsoNeXt stages (shapes only)
        if ".convs." not in key and key.split(".")[0] in ("encoder3", "encoder4", "encoder5", "decoder4",
                                                             "decoder3") and ".conv2.weight" in key:
            c_in = weights[key.replace("conv2", "convs.0")].shape[0] * 4
            res2next[key] = np.zeros((value.shape[0], c_in, 1, 1, 1), np.float32)
            conv3 = key.replace("conv2", "conv3")
            res2next[conv3] = np.zeros((weights[conv3].shape[0], value.shape[0], 1, 1, 1), np.float32)
    network, arch = load_official_network(res2next)
    assert arch["iso_block"] == "res2next" and arch["aniso_block"] == "aninext"
    assert count_parameters(network) == 5_083_363  # param_counts.md, AniNeXt/Res2NeXt live

    convnext = {k: v for k, v in res2next.items() if ".convs." not in k}
    for key in weights:  # ConvNeXt: one depthwise 3x3x3 conv1 over all C input channels instead of convs.*
        if key.endswith(".convs.0.weight"):
            block = key[: -len(".convs.0.weight")]
            c_in = weights[key].shape[0] * 4
            convnext[f"{block}.conv1.weight"] = np.zeros((c_in, 1, 3, 3, 3), np.float32)
            convnext[f"{block}.conv1.bias"] = np.zeros(c_in, np.float32)
    network, arch = load_official_network(convnext)
    assert arch["iso_block"] == "convnext" and arch["kernels"] == DATASET_A[0]
    assert count_parameters(network) == 5_100_835  # param_counts.md, AniNeXt/ConvNeXt live
