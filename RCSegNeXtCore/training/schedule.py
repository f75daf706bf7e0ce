"""Poly learning-rate decay (paper Section 3.1: "adjusted dynamically using a 'poly' decay strategy")."""
from __future__ import annotations

import torch


def poly_lr(initial_lr: float, step: int, total_steps: int, exponent: float = 0.9) -> float:
    """`initial_lr * (1 - step / total_steps) ** exponent` (nnU-Net updates it once per epoch)."""
    step = min(max(step, 0), total_steps)
    return initial_lr * (1 - step / total_steps) ** exponent


class PolyLRScheduler:
    """Sets the optimiser's lr for epoch `epoch`; stateless apart from the epoch count, which `state_dict` keeps."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, total_epochs: int,
                 exponent: float = 0.9):
        self.optimizer, self.initial_lr = optimizer, initial_lr
        self.total_epochs, self.exponent = total_epochs, exponent
        self.epoch = 0

    def step(self, epoch: int) -> float:
        self.epoch = epoch
        lr = poly_lr(self.initial_lr, epoch, self.total_epochs, self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "initial_lr": self.initial_lr, "total_epochs": self.total_epochs,
                "exponent": self.exponent}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
