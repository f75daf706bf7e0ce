"""Pieces of `rcsegnext demo`: an intensity-window baseline, the Dice table and the sagittal-slice figure."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np


def _zscore(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / max(float(image.std()), 1e-8)


class WindowBaseline:
    """Trivial baseline: a voxel is class c when its (per-case z-scored) intensity lies in c's 10th-90th
    percentile window measured on the training cases (tumour windows win over rectum)."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], classes: Sequence[int]):
        self.windows = {}
        for c in classes:
            values = np.concatenate([_zscore(i)[l == c] for i, l in zip(images, labels)])
            if values.size:
                self.windows[c] = (float(np.percentile(values, 10)), float(np.percentile(values, 90)))

    def predict(self, image: np.ndarray) -> np.ndarray:
        z = _zscore(image)
        out = np.zeros(image.shape, np.uint8)
        for c in sorted(self.windows):                       # higher class (tumour) painted last
            lo, hi = self.windows[c]
            out[(z >= lo) & (z <= hi)] = c
        return out


def dice_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]], classes: List[str]) -> str:
    """rows: method -> case -> class -> Dice (0..1, nan when both empty). Mean per class over finite cases."""
    methods = list(rows)
    cases = list(next(iter(rows.values())))
    header = "| case | " + " | ".join(f"{m} {c}" for m in methods for c in classes) + " |"
    lines = [header, "|" + "---|" * (1 + len(methods) * len(classes))]
    fmt = lambda v: "n/a" if not math.isfinite(v) else f"{100 * v:.1f}"   # noqa: E731
    for case in cases:
        lines.append(f"| {case} | " + " | ".join(fmt(rows[m][case][c]) for m in methods for c in classes) + " |")
    means = []
    for m in methods:
        for c in classes:
            values = [rows[m][k][c] for k in cases if math.isfinite(rows[m][k][c])]
            means.append(fmt(float(np.mean(values))) if values else "n/a")
    lines.append("| **mean** | " + " | ".join(f"**{v}**" for v in means) + " |")
    return "\n".join(lines)


def sagittal_figure(images: Sequence[np.ndarray], references: Sequence[np.ndarray],
                    predictions: Sequence[np.ndarray], names: Sequence[str], spacing: Sequence[Sequence[float]],
                    path: str | Path, label_names: Dict[int, str]) -> bool:
    """One column per case: the sagittal slice (z) through the most tumour (else rectum) with reference (dashed)
    and predicted (solid) contours per class. Returns False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from RCSegNeXtCore.inference.segments import style_for
    # the segments' own colours (the paper's red rectum, green tumour), as in Slicer
    colours = {v: style_for(label_names.get(v, str(v)), v).color for v in (1, 2)}
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for ax, image, ref, pred, name, sp in zip(axes[0], images, references, predictions, names, spacing):
        counts = [(ref == 2).sum((1, 2)), (ref == 1).sum((1, 2))]
        z = int(np.argmax(counts[0])) if counts[0].max() > 0 else int(np.argmax(counts[1]))
        ax.imshow(image[z], cmap="gray", aspect=sp[1] / sp[2], interpolation="nearest")
        for value, colour in colours.items():
            if (ref[z] == value).any():
                ax.contour(ref[z] == value, levels=[0.5], colors=[colour], linestyles="dashed", linewidths=1)
            if (pred[z] == value).any():
                ax.contour(pred[z] == value, levels=[0.5], colors=[colour], linewidths=1.2)
        ax.set_title(f"{name}, slice {z}", fontsize=9)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[v], label=f"{label_names.get(v, v)}") for v in colours]
    handles += [plt.Line2D([], [], color="k", ls="--", label="reference"),
                plt.Line2D([], [], color="k", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
