"""Safe interruption: 4 epochs straight == 2 epochs, SIGKILL, --resume for 2 more (bit-identical weights)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from RCSegNeXtCore.checkpoint import load_checkpoint
from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.training.state import load_training_checkpoint

HELPER = Path(__file__).with_name("training_helpers.py")
pytestmark = pytest.mark.slow   # every test trains in a subprocess


def _run(fold_dir: Path, epochs: int, *extra: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), str(fold_dir), str(epochs), *extra], env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    result = _run(straight, 4)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    # pause after epoch 2 (index 1) has been checkpointed: the helper passes Trainer.fit a hook that waits there
    proc = subprocess.Popen([sys.executable, str(HELPER), str(killed), "4", "--pause-after", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    deadline = time.time() + 240
    while not (killed / ".paused").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "training did not reach epoch 2"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoint_final.pt").exists()
    assert load_checkpoint(killed / "checkpoint_latest.pt")["epoch"] == 1

    result = _run(killed, 4, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed from checkpoint_latest.pt after epoch 2" in result.stdout

    a = load_checkpoint(straight / "checkpoint_final.pt")
    b = load_checkpoint(killed / "checkpoint_final.pt")
    assert a["network"].keys() == b["network"].keys()
    for key in a["network"]:
        assert torch.equal(a["network"][key], b["network"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    # the weights did change during training (the comparison is not vacuous)
    from training_helpers import tiny_plans
    torch.manual_seed(0)
    initial = tiny_plans().build_network().state_dict()
    assert any(not torch.equal(initial[k], a["network"][k]) for k in initial)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from training_helpers import tiny_plans
    straight = tmp_path / "run"
    result = _run(straight, 1)
    assert result.returncode == 0, result.stderr
    other = tiny_plans(base_channels=8)
    with pytest.raises(ModelError, match="base_channels: checkpoint 4, plan 8"):
        load_training_checkpoint(straight / "checkpoint_latest.pt", other.network_signature())
    # weights_only: loads with the safe unpickler, holds no numpy objects
    data = torch.load(straight / "checkpoint_latest.pt", weights_only=True)
    assert isinstance(data["rank_states"][0]["global"]["numpy"]["keys"], torch.Tensor)
