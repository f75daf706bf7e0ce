"""Checkpoints: atomic write, safe load (weights_only), refusal of foreign or corrupt files."""
import os
import pickle

import pytest
import torch

from RCSegNeXtCore.checkpoint import check_signature, load_checkpoint, load_network_weights, save_checkpoint
from RCSegNeXtCore.errors import ModelError

SIGNATURE = {"kernels": [[1, 3, 3]], "strides": [], "architecture": {"base_channels": 4}}


def test_round_trip_keeps_tensors_and_extras(tmp_path):
    net = torch.nn.Conv3d(1, 2, 1)
    path = save_checkpoint(tmp_path / "c.pt", net.state_dict(), SIGNATURE, epoch=3, rng={"torch": torch.get_rng_state()})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    data = load_checkpoint(path)
    assert data["epoch"] == 3 and torch.equal(data["rng"]["torch"], torch.get_rng_state())
    other = torch.nn.Conv3d(1, 2, 1)
    load_network_weights(other, data, SIGNATURE)
    assert torch.equal(other.weight, net.weight)


def test_signature_mismatch_names_the_difference(tmp_path):
    data = load_checkpoint(save_checkpoint(tmp_path / "c.pt", {}, SIGNATURE))
    other = {**SIGNATURE, "architecture": {"base_channels": 8}}
    with pytest.raises(ModelError, match=r"architecture.base_channels: checkpoint 4, plan 8"):
        check_signature(data, other)
    with pytest.raises(ModelError, match=r"architecture.scale: checkpoint None, plan 4"):
        check_signature(data, {**SIGNATURE, "architecture": {"base_channels": 4, "scale": 4}})


def test_signature_of_0_1_0_with_deep_supervision_loads(tmp_path):
    """0.1.0 kept the training option deep_supervision in the signature's architecture; it never changed the
    weights, so such a checkpoint (either value) loads against today's signature, which has no such key."""
    for value in (False, True):
        old = {**SIGNATURE, "architecture": {"base_channels": 4, "deep_supervision": value}}
        data = load_checkpoint(save_checkpoint(tmp_path / "old.pt", {}, old))
        assert data["network_signature"] == SIGNATURE
        check_signature(data, SIGNATURE)


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path):
    data = load_checkpoint(save_checkpoint(tmp_path / "c.pt", torch.nn.Conv3d(1, 2, 1).state_dict(), SIGNATURE))
    with pytest.raises(ModelError, match="do not fit"):
        load_network_weights(torch.nn.Conv3d(1, 3, 1), data)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "rcsegnext-checkpoint", "payload": _RunsCode(marker)}, path)
    with pytest.raises(ModelError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ModelError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_missing_empty_truncated_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    good = save_checkpoint(tmp_path / "good.pt", torch.nn.Conv3d(1, 2, 1).state_dict(), SIGNATURE)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="not an RCSegNeXt checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
