"""The training loop: the paper's recipe (Section 3.1) with nnU-Net's details.

SGD (lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5), poly decay (0.9), 100 epochs x 250 iterations, Dice + CE,
foreground oversampling (nnU-Net's: the last third of each batch), gradient clipping at 12, AMP on CUDA (bf16 where
supported). Every epoch writes checkpoint_latest.pt (atomic, full state), metrics.json / metrics.csv, progress.png and
a line in log.txt; the best exponential moving average of the validation pseudo-Dice gives checkpoint_best.pt; the
end, checkpoint_final.pt.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from RCSegNeXtCore.devices import resolve_device, set_cpu_threads
from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.progress import ProgressBar, format_seconds
from RCSegNeXtCore.training import state as ckpt
from RCSegNeXtCore.training.augment import AugmentConfig, Augmenter, context_size, use_dummy_2d
from RCSegNeXtCore.training.config import TrainingConfig
from RCSegNeXtCore.training.deep_supervision import DeepSupervision
from RCSegNeXtCore.training.distributed import DistInfo, all_reduce_sum, barrier, gather_objects
from RCSegNeXtCore.training.logs import RunLog, write_metrics
from RCSegNeXtCore.training.loss import DiceCELoss, resolve_batch_dice
from RCSegNeXtCore.training.sampler import (PatchSampler, TrainingCase, global_batch_size, numpy_rng_state,
                                            rank_slice, set_numpy_rng_state)
from RCSegNeXtCore.training.schedule import PolyLRScheduler

EpochHook = Callable[[int, Dict[str, float]], None]   # (epoch index, its record), see Trainer.fit
TrainConfig = TrainingConfig   # the name before the whole `train` configuration became one object


def idle_cpu_threads(processes: int = 1) -> int:
    """Threads per process for CPU training: the cores not already busy (1-minute load average), at least 1.
    On a machine shared with other jobs, more threads than idle cores make PyTorch's OpenMP threads wait on each
    other and training several times slower."""
    cores = os.cpu_count() or 1
    try:
        busy = int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cores, cores - busy) // max(1, processes))


def amp_dtype(device: str, enabled: bool) -> Optional[torch.dtype]:
    if not enabled or not device.startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Trainer:
    def __init__(self, plans, train_cases: Sequence[TrainingCase], val_cases: Sequence[TrainingCase],
                 fold_dir: str | Path, config: TrainingConfig, dist: DistInfo | None = None):
        self.plans, self.config, self.dist = plans, config, dist or DistInfo()
        self.fold_dir = Path(fold_dir)
        self.val_cases = list(val_cases)
        self.device = resolve_device(config.device, allow_mps=True)
        self._configure_torch()
        self._build_model()                                    # (this order keeps every random stream as it was)
        self.batch_dice, self.batch_dice_reason = resolve_batch_dice(config.batch_dice, plans)
        self.loss = DiceCELoss(batch_dice=self.batch_dice, ddp=self.dist.enabled)
        self._build_sampling(train_cases)
        self.start_epoch, self.history, self.best_ema = 0, [], None
        self.ema: Optional[float] = None
        self.log = RunLog(self.fold_dir / "log.txt", enabled=self.dist.is_main)

    def _configure_torch(self) -> None:
        """CPU threads, deterministic algorithms or cuDNN's autotuner."""
        config = self.config
        if self.device.type == "cpu" and (config.threads or not config.deterministic):
            # deterministic runs keep torch's fixed default unless told: a resume must use the same count
            set_cpu_threads(config.threads or idle_cpu_threads(self.dist.world_size))
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _build_model(self) -> None:
        """The network (+ deep-supervision heads), DDP, optimizer, poly schedule and AMP."""
        config, plans = self.config, self.plans
        torch.manual_seed(config.seed)                         # same initial weights on every rank
        self.network = plans.build_network().to(self.device)
        self.signature = plans.network_signature()
        # what is trained: the network, or the network plus deep-supervision heads (its weights stay separate)
        self.ds = DeepSupervision(self.network, plans.num_classes).to(self.device) \
            if config.deep_supervision else None
        self.trained = self.ds if self.ds is not None else self.network
        self.model = self.trained
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.trained, device_ids=ids)
        self.optimizer = torch.optim.SGD(self.trained.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=True, weight_decay=config.weight_decay)
        self.scheduler = PolyLRScheduler(self.optimizer, config.lr, config.epochs)
        self.amp_dtype = amp_dtype(self.device.type, config.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _build_sampling(self, train_cases: Sequence[TrainingCase]) -> None:
        """Batch and patch size, the patch sampler and the augmenter (each rank its own random streams)."""
        config, plans = self.config, self.plans
        # the plan's batch is the global one: this rank's share of it (and the share's position, for oversampling)
        self.global_batch = global_batch_size(plans.batch_size, self.dist.world_size)
        self.batch_offset, self.batch_size = rank_slice(plans.batch_size, self.dist.rank, self.dist.world_size)
        self.patch = list(plans.patch_size)
        dummy_2d = use_dummy_2d(self.patch, plans.target_spacing, config.aug_dummy_2d_rule)
        self.aug_config = AugmentConfig(mirror_axes=list(plans.mirror_axes), dummy_2d=dummy_2d,
                                        spatial_scaling=config.aug_spatial_scaling, noise_sd=config.aug_noise_sd,
                                        intensity=config.aug_intensity, interpolation=config.aug_interpolation)
        if not config.augment:
            self.aug_config = AugmentConfig(**{**asdict(self.aug_config), **{
                k: 0.0 for k in asdict(self.aug_config) if k.startswith("p_")}})
        rank_seed = config.seed * 1000 + self.dist.rank                      # each rank its own patches
        context = context_size(self.patch, self.aug_config, config.sampler_context)
        self.sampler = PatchSampler(train_cases, context, config.oversample_foreground, seed=rank_seed,
                                    jitter_foreground=config.jitter_foreground,
                                    margin=[c - p for c, p in zip(context, self.patch)],
                                    placement=config.sampler_placement, **self._oversampling())
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        generator = torch.Generator(device=gen_device)
        generator.manual_seed(rank_seed + 17)
        self.augmenter = Augmenter(self.patch, self.aug_config, generator)

    def _oversampling(self) -> dict:
        """The forced-foreground rule over the global batch: this rank's slice of it (nnU-Net under DDP)."""
        return dict(oversample_rule=self.config.oversample_rule, global_batch=self.global_batch,
                    batch_offset=self.batch_offset)

    # -- state ------------------------------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        return {"sampler": numpy_rng_state(self.sampler.rng), "augmenter": self.augmenter.generator.get_state(),
                "global": ckpt.global_rng_state()}

    def _set_rank_state(self, state: dict) -> None:
        set_numpy_rng_state(self.sampler.rng, state["sampler"])
        self.augmenter.generator.set_state(state["augmenter"].cpu())
        ckpt.set_global_rng_state(state["global"])

    def save(self, name: str, epoch: int) -> None:
        rank_states = gather_objects(self._rank_state(), self.dist)
        if self.dist.is_main:
            ckpt.save_training_checkpoint(
                self.fold_dir / name, self.network, self.signature, epoch=epoch,
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                grad_scaler=self.scaler.state_dict(), rank_states=rank_states, world_size=self.dist.world_size,
                history=self.history, ema=self.ema, best_ema=self.best_ema,
                plans=self.plans.to_dict(), config=asdict(self.config),
                **({"ds_heads": self.ds.heads.state_dict()} if self.ds is not None else {}))
        barrier(self.dist)

    def resume(self, path: Path) -> None:
        state = ckpt.load_training_checkpoint(path, self.signature, map_location=self.device)
        if ("ds_heads" in state) != (self.ds is not None):
            was = "with" if "ds_heads" in state else "without"
            raise ModelError(f"{path} was trained {was} deep supervision: resume it with deep_supervision="
                             f"{'ds_heads' in state}")
        self.network.load_state_dict(state["network"])
        if self.ds is not None:
            self.ds.heads.load_state_dict(state["ds_heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["grad_scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.history = list(state.get("history", []))
        self.ema, self.best_ema = state.get("ema"), state.get("best_ema")
        if self.val_cases and self.history and not any(k.startswith("dice_") for k in self.history[-1]):
            # a fold "all" of 0.1 followed the training loss: its score is not a pseudo-Dice, start that anew
            self.ema = self.best_ema = None
        states = state.get("rank_states", [])
        if int(state.get("world_size", 1)) == self.dist.world_size and self.dist.rank < len(states):
            self._set_rank_state(states[self.dist.rank])
        else:
            self.log.write(f"note: checkpoint from {state.get('world_size')} process(es); random streams restart")
        self.log.write(f"resumed from {path.name} after epoch {self.start_epoch}")

    # -- loop -------------------------------------------------------------------------------------------------
    def _batches(self, n: int):
        """`n` sampled batches, prepared by a background thread when num_workers > 0 (exactly n, so the sampler's
        random state at the end of an epoch does not depend on the thread)."""
        if self.config.num_workers <= 0:
            for _ in range(n):
                yield self.sampler.batch(self.batch_size)
            return
        q: queue.Queue = queue.Queue(maxsize=2 * self.config.num_workers)

        def produce():
            for _ in range(n):
                q.put(self.sampler.batch(self.batch_size))
        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        for _ in range(n):
            yield q.get()
        thread.join()

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> float:
        x = torch.from_numpy(images).to(self.device, non_blocking=True)
        y = torch.from_numpy(labels).to(self.device, non_blocking=True)
        x, y = self.augmenter(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(x)
        loss = self.loss(out, y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trained.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self, epoch: int) -> Dict[str, float]:
        """nnU-Net's pseudo-Dice: TP/FP/FN summed over `val_iterations` patches of the held-out cases."""
        k = self.plans.num_classes
        sampler = PatchSampler(self.val_cases, self.patch, self.config.oversample_foreground,
                               seed=10_000 + epoch * 100 + self.dist.rank, **self._oversampling())
        counts = torch.zeros(3, k - 1, dtype=torch.float64)
        losses = []
        self.network.eval()
        for _ in range(max(1, self.config.val_iterations // self.dist.world_size)):
            images, labels, _ = sampler.batch(self.batch_size)
            x, y = torch.from_numpy(images).to(self.device), torch.from_numpy(labels).to(self.device).long()
            with self._autocast():
                out = self.network(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            losses.append(float(self.loss(out, y)))
            pred = out.argmax(1)
            for c in range(1, k):
                p, t = pred == c, y == c
                counts[:, c - 1] += torch.tensor([(p & t).sum().item(), (p & ~t).sum().item(),
                                                  (~p & t).sum().item()], dtype=torch.float64)
        self.network.train()
        counts = all_reduce_sum(counts, self.dist)
        total, n = all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64), self.dist).tolist()
        loss = total / max(1.0, n)
        tp, fp, fn = counts
        dice = (2 * tp / (2 * tp + fp + fn).clamp_min(1)).tolist()
        names = self.plans.class_names
        return {"val_loss": loss, **{f"dice_{names[c]}": float(dice[c - 1]) for c in range(1, k)}}

    def fit(self, on_epoch_end: Optional[EpochHook] = None) -> Dict[str, float]:
        """Train from `start_epoch` to `config.epochs` (fewer when the time budget `config.max_seconds` runs out),
        checkpointing every epoch; returns the last epoch's record. `on_epoch_end(epoch, record)` is called on every
        rank after an epoch's checkpoints and log line (the resume test stops a run there)."""
        self.network.train()
        self._log_start()
        budget = EpochBudget(self.config.epochs, None if self.dist.enabled else self.config.max_seconds)
        self.budget = budget                                   # the epoch hook reads the fitted number of epochs
        last = self.start_epoch - 1                            # (ranks could disagree on timing: no budget)
        for epoch in range(self.start_epoch, self.config.epochs):
            if epoch >= budget.epochs:                         # shortened to fit the time budget
                break
            last = epoch
            record = self.run_epoch(epoch, budget)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if self._fit_to_budget(budget, epoch):
                break
        self.save(ckpt.FINAL, last)
        self.log.write(f"finished {self.fold_dir.name}: {self.fold_dir / ckpt.FINAL}")
        return self.history[-1] if self.history else {}

    def _log_start(self) -> None:
        cfg = self.config
        amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        self.log.write(f"training {self.fold_dir.name}: {len(self.sampler.cases)} training / {len(self.val_cases)} "
                       f"validation cases, device {self.device} x{self.dist.world_size}"
                       + (f" ({torch.get_num_threads()} CPU thread(s))" if self.device.type == "cpu" else "")
                       + f", AMP {amp}, batch "
                       f"{self.global_batch}, patch {self.patch}, epochs {cfg.epochs} x "
                       f"{cfg.iterations_per_epoch} iterations, lr {cfg.lr}, seed {cfg.seed}"
                       + (", deterministic" if cfg.deterministic else ""))
        self.log.write(f"loss: Dice + CE, batch Dice {self.batch_dice} ({self.batch_dice_reason})")

    def run_epoch(self, epoch: int, budget: "EpochBudget") -> Dict[str, float]:
        """One epoch: the iterations, validation, the EMA score, checkpoints latest (and best), metrics, log line."""
        start = time.perf_counter()
        lr = self.scheduler.step(epoch)
        train_loss = self._train_iterations(epoch, budget.epochs)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss}
        if self.val_cases:
            record.update(self.validate(epoch))
            dices = [v for k, v in record.items() if k.startswith("dice_")]
            score = float(np.nanmean(dices)) if dices else 0.0
        else:
            score = -train_loss                      # fold "all": no validation, follow the training loss
        self.ema = score if self.ema is None else 0.9 * self.ema + 0.1 * score
        record["ema_score"] = self.ema
        record["seconds"] = time.perf_counter() - start
        budget.epoch_times.append(record["seconds"])
        self.history.append(record)
        improved = self.best_ema is None or self.ema > self.best_ema
        if improved:
            self.best_ema = self.ema
        self.save(ckpt.LATEST, epoch)
        if improved:
            self.save(ckpt.BEST, epoch)
        if self.dist.is_main:
            write_metrics(self.fold_dir, self.history)
        self._log_epoch(record, budget, improved)
        return record

    def _train_iterations(self, epoch: int, epochs: int) -> float:
        """The epoch's training iterations; the mean loss over every rank."""
        cfg = self.config
        losses = []
        with ProgressBar(cfg.iterations_per_epoch, f"epoch {epoch + 1}/{epochs}",
                         enabled=cfg.progress and self.dist.is_main) as bar:
            for images, labels, _ in self._batches(cfg.iterations_per_epoch):
                losses.append(self.train_step(images, labels))
                bar.update(1, loss=losses[-1])
        return float(all_reduce_sum(torch.tensor(float(np.mean(losses)), dtype=torch.float64),
                                    self.dist)) / self.dist.world_size

    def _log_epoch(self, record: Dict[str, float], budget: "EpochBudget", improved: bool) -> None:
        epoch = record["epoch"]
        eta = float(np.median(budget.epoch_times)) * (budget.epochs - epoch)
        extra = " ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("dice_"))
        self.log.write(f"epoch {epoch}/{budget.epochs}  train loss {record['train_loss']:.4f}"
                       + (f"  val loss {record['val_loss']:.4f}  pseudo-Dice {extra}" if self.val_cases else "")
                       + f"  lr {record['lr']:.5f}  {record['seconds']:.1f} s  ETA {format_seconds(eta)}"
                       + ("  (new best)" if improved else ""))

    def _fit_to_budget(self, budget: "EpochBudget", epoch: int) -> bool:
        """After `epoch`: fit the number of epochs (and the poly schedule) to the time left; True to stop now."""
        if budget.seconds is None:
            return False
        first = budget.epochs == budget.planned
        if budget.refit(epoch):
            self.scheduler.total_epochs = budget.epochs
            if first:                                  # say it once; later updates show as "epoch k/N"
                self.log.write(f"time budget {format_seconds(budget.seconds)}: about {budget.fits} of "
                               f"{budget.planned} epochs fit; the poly schedule is fitted to the budget")
        if epoch + 1 < budget.epochs and budget.elapsed() > budget.seconds:
            self.log.write(f"time budget of {format_seconds(budget.seconds)} used up: stopping after epoch "
                           f"{epoch + 1} of {budget.epochs}")
            return True
        return False


class EpochBudget:
    """The number of epochs to train (`epochs`): the planned number, or, with a time budget of `seconds`, those that
    fit at the median epoch time so far (the configuration itself is never changed)."""

    def __init__(self, planned: int, seconds: Optional[float]):
        self.planned, self.seconds, self.epochs = planned, seconds, planned
        self.fits = planned
        self.started = time.perf_counter()
        self.epoch_times: List[float] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def refit(self, epoch: int) -> bool:
        """After `epoch`: recompute `epochs` (at least epoch + 1, at most planned); True when it changed."""
        left = max(0.0, self.seconds - self.elapsed())
        self.fits = min(self.planned, epoch + 1 + int(left // float(np.median(self.epoch_times))))
        if self.fits == self.epochs:
            return False
        self.epochs = max(self.fits, epoch + 1)
        return True
