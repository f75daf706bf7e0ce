"""Run logs: log.txt (+ console), metrics per epoch (JSON and CSV) and the training curve progress.png."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Dict, List

from RCSegNeXtCore.files import atomic_path, atomic_write_json


class RunLog:
    """Prints a line and appends it, time-stamped, to log.txt (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")


def write_metrics(fold_dir: Path, history: List[Dict[str, float]]) -> None:
    """metrics.json, metrics.csv and (when matplotlib is installed) progress.png."""
    fold_dir = Path(fold_dir)
    atomic_write_json(fold_dir / "metrics.json", history, indent=1)
    keys = list(dict.fromkeys(k for record in history for k in record))
    with open(fold_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    plot_progress(history, fold_dir / "progress.png")


def plot_progress(history: List[Dict[str, float]], path: Path) -> bool:
    """Loss, validation pseudo-Dice per class and learning rate against the epoch."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train loss", color="tab:blue")
    if any("val_loss" in r for r in history):
        ax_loss.plot(epochs, [r.get("val_loss", float("nan")) for r in history], label="val loss",
                     color="tab:red")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    for key in [k for k in history[-1] if k.startswith("dice_")]:
        ax_dice.plot(epochs, [r.get(key, float("nan")) for r in history], "--", label=f"pseudo-Dice {key[5:]}")
    ax_dice.set_ylabel("pseudo-Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax_loss.get_legend_handles_labels()
    more = ax_dice.get_legend_handles_labels()
    ax_loss.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    ax_lr.plot(epochs, [r["lr"] for r in history], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return True
