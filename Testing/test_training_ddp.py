"""DDP on CPU: 2 gloo processes started by torchrun; both ranks hold identical weights, and the run resumes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from RCSegNeXtCore.checkpoint import load_checkpoint

HELPER = Path(__file__).with_name("training_helpers.py")
pytestmark = pytest.mark.slow   # torchrun starts 2 processes, twice


def _torchrun(fold_dir: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HELPER), str(fold_dir), str(epochs), "--dump-rank-weights", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)


def _assert_ranks_equal(fold_dir: Path) -> dict:
    w0 = torch.load(fold_dir / "rank0.pt", weights_only=True)
    w1 = torch.load(fold_dir / "rank1.pt", weights_only=True)
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    return w0


def test_ddp_two_cpu_processes_identical_weights_and_resume(tmp_path):
    fold = tmp_path / "fold_0"
    result = _torchrun(fold, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    after_one = _assert_ranks_equal(fold)
    ckpt = load_checkpoint(fold / "checkpoint_final.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rank_states"]) == 2
    # each rank sampled its own patches: different sampler streams
    assert ckpt["rank_states"][0]["sampler"] != ckpt["rank_states"][1]["sampler"]
    for key in after_one:                              # rank 0 wrote what every rank holds
        assert torch.equal(after_one[key], ckpt["network"][key])
    log = (fold / "log.txt").read_text()
    assert "x2" in log and log.count("epoch 1/1") == 1  # only rank 0 logs

    result = _torchrun(fold, 2, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    after_two = _assert_ranks_equal(fold)
    assert "resumed from" in (fold / "log.txt").read_text()
    assert load_checkpoint(fold / "checkpoint_final.pt")["epoch"] == 1
    assert any(not torch.equal(after_one[k], after_two[k]) for k in after_one)
