"""Optional deep supervision: extra heads are trained and checkpointed beside the network, whose keys stay the same."""
from dataclasses import replace

import pytest
import torch

from RCSegNeXtCore.checkpoint import load_checkpoint
from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.training.state import find_resume_checkpoint
from RCSegNeXtCore.training.deep_supervision import DeepSupervision
from RCSegNeXtCore.training.loss import DiceCELoss
from RCSegNeXtCore.training.config import TrainingConfig
from RCSegNeXtCore.training.trainer import Trainer
from training_helpers import tiny_cases, tiny_plans


def test_heads_give_one_output_per_decoder_stage_and_all_get_gradients():
    plans = tiny_plans()
    wrapped = DeepSupervision(plans.build_network(), plans.num_classes)
    x = torch.randn(2, 1, 8, 32, 32)
    outputs = wrapped(x)
    assert [tuple(o.shape[2:]) for o in outputs] == [(8, 32, 32), (8, 16, 16), (4, 8, 8)][:len(outputs)]
    assert len(outputs) == len(wrapped.network.decoder_widths)
    target = torch.randint(0, 3, (2, 8, 32, 32))
    DiceCELoss()(outputs, target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wrapped.parameters())


def test_training_with_deep_supervision_saves_heads_and_resumes(tmp_path):
    plans = tiny_plans()
    cases = tiny_cases()
    config = TrainingConfig(epochs=2, iterations_per_epoch=2, val_iterations=1, device="cpu", deterministic=True,
                            num_workers=1, progress=False, threads=1, deep_supervision=True)
    trainer = Trainer(plans, cases[:2], cases[2:], tmp_path, config)
    heads_before = [h.weight.clone() for h in trainer.ds.heads]
    trainer.fit()
    assert any(not torch.equal(a, h.weight) for a, h in zip(heads_before, trainer.ds.heads))  # heads learnt
    state = load_checkpoint(tmp_path / "checkpoint_final.pt")
    plain = tiny_plans().build_network().state_dict()
    assert set(state["network"]) == set(plain)            # inference loads the network unchanged
    assert set(state["ds_heads"]) == set(trainer.ds.heads.state_dict())
    again = Trainer(plans, cases[:2], cases[2:], tmp_path, config)
    again.resume(find_resume_checkpoint(tmp_path))
    for a, b in zip(again.ds.heads.parameters(), trainer.ds.heads.parameters()):
        assert torch.equal(a, b)
    # the heads are part of the training state: resuming without them (or them without heads) is refused
    without = Trainer(plans, cases[:2], cases[2:], tmp_path, replace(config, deep_supervision=False))
    with pytest.raises(ModelError, match="trained with deep supervision"):
        without.resume(find_resume_checkpoint(tmp_path))
