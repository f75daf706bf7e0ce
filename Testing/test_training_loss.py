"""The loss as nnU-Net 2.1 builds it (batch Dice by its planner's 3d_lowres rule, gathered over DDP processes) and a
fold's final validation with mirroring TTA, each a TrainingConfig field (`batch_dice`, `validation_tta`)."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from training_helpers import tiny_cases, tiny_plans

from RCSegNeXtCore.training.config import TrainingConfig
from RCSegNeXtCore.training.loss import (LOWRES_CREATION_THRESHOLD, DiceCELoss, nnunet_batch_dice,
                                         resolve_batch_dice, soft_dice_loss)
from RCSegNeXtCore.training.trainer import Trainer


# -- batch Dice: nnU-Net 2.1's rule -----------------------------------------------------------------------------
@pytest.mark.parametrize("patch, median, expected", [
    ([16, 64, 64], [16, 96, 96], False),          # the demo's plan on the small phantom: 0.44 of the median image
    ([16, 96, 96], [16, 96, 96], False),          # the small phantom's own plan: the whole image
    ([16, 320, 320], [20, 400, 400], False),      # the paper's plan on Dataset A-like images: 0.51
    ([16, 320, 320], [24, 512, 512], False),      # the largest Dataset A images: 0.26, still no 3d_lowres
    ([16, 320, 320], [24, 560, 560], True),       # 0.22 < 0.25: nnU-Net would plan a 3d_lowres
    ([32, 128, 128], [64, 256, 256], True),       # 1/8
    ([16, 320, 320], None, False),                # a plan made from values: no median shape, nnU-Net's usual value
])
def test_batch_dice_is_true_only_when_nnunet_would_plan_a_3d_lowres(patch, median, expected):
    assert nnunet_batch_dice(patch, median) is expected


def test_the_rule_switches_at_a_quarter_of_the_median_image():
    assert LOWRES_CREATION_THRESHOLD == 0.25
    assert nnunet_batch_dice([10, 10, 10], [40, 10, 10]) is False       # exactly 1/4: no 3d_lowres
    assert nnunet_batch_dice([10, 10, 10], [41, 10, 10]) is True


def test_the_configuration_forces_it_or_leaves_it_to_the_rule():
    plans = tiny_plans().with_overrides(median_shape=[40, 64, 64])     # patch 8 x 32 x 32 = 1/20 of it
    assert TrainingConfig().batch_dice is None
    value, why = resolve_batch_dice(None, plans)
    assert value is True and "3d_lowres" in why and "0.05" in why
    assert resolve_batch_dice(False, plans) == (False, "set by the training configuration")
    assert resolve_batch_dice(True, tiny_plans())[0] is True                # RCSegNeXt 0.1's choice, by name
    assert resolve_batch_dice(None, tiny_plans())[0] is False               # no median shape


@pytest.mark.parametrize("setting, median, expected", [(None, None, False), (None, [40, 64, 64], True),
                                                       (True, None, True), (False, [40, 64, 64], False)])
def test_the_trainer_trains_and_logs_the_resolved_batch_dice(tmp_path, setting, median, expected):
    plans = tiny_plans().with_overrides(median_shape=median)
    config = TrainingConfig(epochs=1, iterations_per_epoch=1, val_iterations=1, device="cpu", num_workers=0,
                            progress=False, threads=1, batch_dice=setting)
    cases = tiny_cases()
    trainer = Trainer(plans, cases[:2], cases[2:], tmp_path / "fold_0", config)
    assert trainer.loss.batch_dice is expected
    trainer.fit()
    assert f"batch Dice {expected} (" in (tmp_path / "fold_0" / "log.txt").read_text()


def test_batch_dice_pools_the_batch_per_sample_dice_does_not():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 8, 8)
    target = torch.randint(0, 3, (2, 4, 8, 8))
    target[1] = 0                                    # sample 1 has no foreground: its Dice is ~0 per sample
    per_sample = soft_dice_loss(logits, target, batch_dice=False)
    pooled = soft_dice_loss(logits, target, batch_dice=True)
    alone = soft_dice_loss(logits[:1], target[:1])
    assert pooled < per_sample and per_sample == pytest.approx((float(alone) + 1) / 2, abs=1e-4)
    assert DiceCELoss().batch_dice is False          # the default is nnU-Net's value for the paper's plan


# -- batch Dice over DDP processes = over the global batch --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, logits, target, out_dir: str) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = logits[rank::world].clone().requires_grad_(True)
        loss = DiceCELoss(batch_dice=True, ddp=True)(mine, target[rank::world])
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": mine.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batch_dice_under_ddp_is_the_dice_of_the_global_batch(tmp_path):
    """As nnU-Net (AllGatherGrad): each process's loss is the global batch's, and its gradient, once DDP has
    averaged the processes' gradients, is the global loss's gradient."""
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 4, 8, 8)
    target = torch.randint(0, 3, (4, 4, 8, 8))
    world = 2
    torch.multiprocessing.spawn(_ddp_worker, args=(world, _free_port(), logits, target, str(tmp_path)),
                                nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    whole = logits.clone().requires_grad_(True)
    dice = soft_dice_loss(whole, target, batch_dice=True)               # one process, the global batch
    dice.backward()
    for r, result in enumerate(ranks):
        own_ce = torch.nn.functional.cross_entropy(logits[r::world], target[r::world])
        assert float(result["loss"]) == pytest.approx(float(own_ce + dice.detach()), abs=1e-5)   # Dice of all 4 samples
        mine = logits[r::world].clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(mine, target[r::world]).backward()
        # the Dice part: world x the global Dice's gradient for this process's samples, which DDP's mean over the
        # processes turns into exactly the global Dice's gradient
        assert torch.allclose(result["grad"], mine.grad + world * whole.grad[r::world], atol=1e-6)


# -- the final validation of a fold: mirroring TTA by default -----------------------------------------------------
@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    from RCSegNeXtCore.phantom import make_phantom_dataset
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom") / "raw", 3, seed=0, size="small",
                                progress=False)


@pytest.mark.slow
def test_a_folds_validation_predicts_with_mirroring_by_default(small_phantom, tmp_path, monkeypatch):
    import RCSegNeXtCore.inference.predictor as predictor_module
    from RCSegNeXtCore.training.cross_validation import validate_fold
    from RCSegNeXtCore.training.pipeline import train

    mirrors = []

    class Recording(predictor_module.Predictor):
        def predict(self, *args, **kwargs):
            prediction = super().predict(*args, **kwargs)
            mirrors.append(prediction.stats.mirrors)
            return prediction

    monkeypatch.setattr(predictor_module, "Predictor", Recording)
    run = tmp_path / "run"
    config = TrainingConfig(dataset=str(small_phantom), output=str(run), num_folds=3, epochs=1,
                            iterations_per_epoch=1, val_iterations=1, base_channels=4, patch_size=[16, 32, 32],
                            device="cpu", num_workers=0, threads=1, progress=False)
    assert config.validation_tta is True
    [result] = train(config)
    assert mirrors == [8] and result["tta"] is True                     # the plan's axes (0, 1, 2): 8 passes
    assert json.loads((run / "fold_0" / "validation" / "metrics.json").read_text())["tta"] is True
    assert json.loads((run / "training_config.json").read_text())["validation_tta"] is True
    # validation_tta=False (RCSegNeXt 0.1): one pass
    dataset_ids = json.loads((run / "splits_final.json").read_text())[0]["val"]
    from RCSegNeXtCore.data.dataset import load_dataset
    again = validate_fold(run, 0, load_dataset(small_phantom), dataset_ids, device="cpu", progress=False, tta=False)
    assert mirrors[-1] == 1 and again["tta"] is False
