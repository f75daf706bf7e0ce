"""Tiny synthetic training set-ups shared by the training tests (and runnable as a subprocess for the resume and
DDP tests): `python Testing/training_helpers.py FOLD_DIR EPOCHS [--resume] [--pause-after EPOCH]`; with
--pause-after, after that epoch (index) has been checkpointed the run writes FOLD_DIR/.paused and waits to be killed."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from RCSegNeXtCore.planning import plan_for_patch  # noqa: E402
from RCSegNeXtCore.plans import Plans  # noqa: E402
from RCSegNeXtCore.training.sampler import TrainingCase, class_locations_from  # noqa: E402


def tiny_plans(patch=(8, 32, 32), base_channels=4, batch_size=2) -> Plans:
    kernels, strides = plan_for_patch([3.0, 1.0, 1.0], list(patch), num_pooling=2)
    plans = Plans(target_spacing=[3.0, 1.0, 1.0], patch_size=list(patch), kernels=kernels, strides=strides)
    return plans.with_overrides(base_channels=base_channels, batch_size=batch_size)


def tiny_cases(n=3, shape=(12, 40, 40), seed=0):
    """A box 'rectum' (1) holding a smaller 'tumour' (2), image = labels + noise."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        z0, y0, x0 = rng.integers(1, 4), rng.integers(4, 12), rng.integers(4, 12)
        label[z0:z0 + 6, y0:y0 + 18, x0:x0 + 16] = 1
        label[z0 + 1:z0 + 4, y0 + 4:y0 + 10, x0 + 4:x0 + 10] = 2
        data = (label[None].astype(np.float32) + rng.normal(0, 0.3, (1, *shape))).astype(np.float32)
        cases.append(TrainingCase(f"case_{i:03d}", data, label, class_locations_from(None, label)))
    return cases


def pause_after(fold_dir: str, pause_epoch: int):
    """A Trainer.fit hook: after epoch `pause_epoch`, mark FOLD_DIR/.paused and wait (the test kills the process)."""
    import time

    def hook(epoch: int, record: dict) -> None:
        if epoch == pause_epoch:
            (Path(fold_dir) / ".paused").write_text(str(epoch))
            time.sleep(3600)
    return hook


def run(fold_dir: str, epochs: int, resume: bool = False, iterations: int = 3, pause: int | None = None) -> None:
    import torch
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.state import find_resume_checkpoint
    from RCSegNeXtCore.training.distributed import init_distributed, shutdown
    from RCSegNeXtCore.training.trainer import Trainer
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    cases = tiny_cases()
    config = TrainingConfig(epochs=epochs, iterations_per_epoch=iterations, val_iterations=2, device="cpu",
                            deterministic=True, num_workers=1, progress=False, threads=1)
    trainer = Trainer(tiny_plans(), cases[:2], cases[2:], fold_dir, config, dist)
    if resume:
        trainer.resume(find_resume_checkpoint(Path(fold_dir)))
    trainer.fit(on_epoch_end=None if pause is None else pause_after(fold_dir, pause))
    if "--dump-rank-weights" in sys.argv:            # the DDP test compares what every rank holds
        torch.save(trainer.network.state_dict(), Path(fold_dir) / f"rank{dist.rank}.pt")
    shutdown()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), "--resume" in sys.argv,
        pause=int(sys.argv[sys.argv.index("--pause-after") + 1]) if "--pause-after" in sys.argv else None)
