"""The training loop: the paper's recipe (Section 3.1) with nnU-Net's details.

SGD (lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5), poly decay (0.9), 100 epochs x 250 iterations, Dice + CE,
1/3 foreground oversampling, gradient clipping at 12, AMP on CUDA (bf16 where supported). Every epoch writes
checkpoint_latest.pt (atomic, full state), metrics.json / metrics.csv, progress.png and a line in log.txt; the best
exponential moving average of the validation pseudo-Dice gives checkpoint_best.pt; the end, checkpoint_final.pt.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from RCSegNeXtCore.devices import resolve_device, set_cpu_threads
from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.progress import ProgressBar, format_seconds
from RCSegNeXtCore.training import state as ckpt
from RCSegNeXtCore.training.augment import AugmentConfig, Augmenter, context_size
from RCSegNeXtCore.training.config import TrainingConfig
from RCSegNeXtCore.training.deep_supervision import DeepSupervision
from RCSegNeXtCore.training.distributed import DistInfo, all_reduce_sum, barrier, gather_objects
from RCSegNeXtCore.training.logs import RunLog, write_metrics
from RCSegNeXtCore.training.loss import DiceCELoss
from RCSegNeXtCore.training.sampler import PatchSampler, TrainingCase, numpy_rng_state, set_numpy_rng_state
from RCSegNeXtCore.training.schedule import PolyLRScheduler

PAUSE_ENV = "RCSEGNEXT_TEST_PAUSE_AFTER_EPOCH"   # test hook: after this epoch's checkpoint, wait to be killed


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
        self.device = resolve_device(config.device, allow_mps=True)
        if self.device.type == "cpu" and (config.threads or not config.deterministic):
            # deterministic runs keep torch's fixed default unless told: a resume must use the same count
            set_cpu_threads(config.threads or idle_cpu_threads(self.dist.world_size))
        self.val_cases = list(val_cases)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
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
        self.loss = DiceCELoss()
        self.batch_size = max(1, plans.batch_size // self.dist.world_size)   # the plan's batch is the global one
        self.patch = list(plans.patch_size)
        aniso = max(plans.target_spacing) / min(plans.target_spacing) > 3
        self.aug_config = AugmentConfig(mirror_axes=list(plans.mirror_axes), anisotropic=aniso)
        if not config.augment:
            self.aug_config = AugmentConfig(**{**asdict(self.aug_config), **{
                k: 0.0 for k in asdict(self.aug_config) if k.startswith("p_")}})
        rank_seed = config.seed * 1000 + self.dist.rank                      # each rank its own patches
        context = context_size(self.patch, self.aug_config)
        self.sampler = PatchSampler(train_cases, context, config.oversample_foreground, seed=rank_seed,
                                    jitter_foreground=config.jitter_foreground,
                                    margin=[(c - p) // 2 for c, p in zip(context, self.patch)])
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        generator = torch.Generator(device=gen_device)
        generator.manual_seed(rank_seed + 17)
        self.augmenter = Augmenter(self.patch, self.aug_config, generator)
        self.start_epoch, self.history, self.best_ema = 0, [], None
        self.ema: Optional[float] = None
        self.log = RunLog(self.fold_dir / "log.txt", enabled=self.dist.is_main)

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
                               seed=10_000 + epoch * 100 + self.dist.rank)
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

    def fit(self) -> Dict[str, float]:
        cfg = self.config
        self.network.train()
        amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        self.log.write(f"training {self.fold_dir.name}: {len(self.sampler.cases)} training / {len(self.val_cases)} "
                       f"validation cases, device {self.device} x{self.dist.world_size}"
                       + (f" ({torch.get_num_threads()} CPU thread(s))" if self.device.type == "cpu" else "")
                       + f", AMP {amp}, batch "
                       f"{self.batch_size * self.dist.world_size}, patch {self.patch}, epochs {cfg.epochs} x "
                       f"{cfg.iterations_per_epoch} iterations, lr {cfg.lr}, seed {cfg.seed}"
                       + (", deterministic" if cfg.deterministic else ""))
        epoch_times: List[float] = []
        pause_after = int(os.environ.get(PAUSE_ENV, "-1"))
        started, last, planned = time.perf_counter(), self.start_epoch - 1, cfg.epochs
        for epoch in range(self.start_epoch, cfg.epochs):
            if epoch >= cfg.epochs:                          # shortened to fit a time budget
                break
            start, last = time.perf_counter(), epoch
            lr = self.scheduler.step(epoch)
            losses = []
            with ProgressBar(cfg.iterations_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                             enabled=cfg.progress and self.dist.is_main) as bar:
                for images, labels, _ in self._batches(cfg.iterations_per_epoch):
                    losses.append(self.train_step(images, labels))
                    bar.update(1, loss=losses[-1])
            train_loss = float(all_reduce_sum(torch.tensor(float(np.mean(losses)), dtype=torch.float64),
                                              self.dist)) / self.dist.world_size
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
            epoch_times.append(record["seconds"])
            self.history.append(record)
            improved = self.best_ema is None or self.ema > self.best_ema
            if improved:
                self.best_ema = self.ema
            self.save(ckpt.LATEST, epoch)
            if improved:
                self.save(ckpt.BEST, epoch)
            if self.dist.is_main:
                write_metrics(self.fold_dir, self.history)
            eta = float(np.median(epoch_times)) * (cfg.epochs - epoch - 1)
            extra = " ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("dice_"))
            self.log.write(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f}"
                           + (f"  val loss {record['val_loss']:.4f}  pseudo-Dice {extra}" if self.val_cases else "")
                           + f"  lr {lr:.5f}  {record['seconds']:.1f} s  ETA {format_seconds(eta)}"
                           + ("  (new best)" if improved else ""))
            if epoch == pause_after and self.dist.is_main:
                (self.fold_dir / ".paused").write_text(str(epoch))
                time.sleep(3600)                        # the test kills the process here (SIGKILL)
            budget = cfg.max_seconds if not self.dist.enabled else None   # (ranks could disagree on timing)
            if budget is not None:                          # fit the schedule into the time budget
                left = cfg.max_seconds - (time.perf_counter() - started)
                fits = min(planned, epoch + 1 + int(max(0.0, left) // float(np.median(epoch_times))))
                if fits != cfg.epochs:
                    if cfg.epochs == planned:                # say it once; later updates show as "epoch k/N"
                        self.log.write(f"time budget {format_seconds(cfg.max_seconds)}: about {fits} of {planned} "
                                       "epochs fit; the poly schedule is fitted to the budget")
                    cfg.epochs = self.scheduler.total_epochs = max(fits, epoch + 1)
            if budget is not None and epoch + 1 < cfg.epochs and \
                    time.perf_counter() - started > cfg.max_seconds:
                self.log.write(f"time budget of {format_seconds(cfg.max_seconds)} used up: stopping after epoch "
                               f"{epoch + 1} of {cfg.epochs}")
                break
        self.save(ckpt.FINAL, last)
        self.log.write(f"finished {self.fold_dir.name}: {self.fold_dir / ckpt.FINAL}")
        return self.history[-1] if self.history else {}
