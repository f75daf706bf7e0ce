"""A PNG contact sheet of phantom (or any raw-layout) cases: the middle rectum slice of each, label contours on top.

matplotlib is optional (extra `plot`) and imported only here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from RCSegNeXtCore.data.io import read_image
from RCSegNeXtCore.errors import RCSegNeXtError


def save_case_preview(cases: Sequence[tuple], png: str | os.PathLike, title: str = "") -> Path:
    """`cases`: (name, image (z,y,x), label (z,y,x)) triples; draws the slice through the middle of the labels."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RCSegNeXtError("a preview needs matplotlib: pip install 'rcsegnext[plot]'") from None
    fig, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 4.4), squeeze=False)
    for ax, (name, image, label) in zip(axes[0], cases):
        slices = np.nonzero((label > 0).any(axis=(1, 2)))[0]
        z = int(slices[len(slices) // 2]) if len(slices) else image.shape[0] // 2
        ax.imshow(image[z], cmap="gray", vmin=0, vmax=float(np.percentile(image, 99.5)), interpolation="bilinear")
        for value, colour in ((1, "red"), (2, "lime")):
            if (label[z] == value).any():
                ax.contour(label[z] == value, [0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{name}  slice {z + 1}/{image.shape[0]}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def save_dataset_preview(dataset: str | os.PathLike, png: str | os.PathLike, case_ids: Sequence[str]) -> Path:
    """Preview of cases of a raw-layout dataset (`imagesTr/ID_0000.nii.gz`, `labelsTr/ID.nii.gz`)."""
    dataset = Path(dataset)
    cases = [(case_id, read_image(dataset / "imagesTr" / f"{case_id}_0000.nii.gz").array,
              read_image(dataset / "labelsTr" / f"{case_id}.nii.gz").array) for case_id in case_ids]
    return save_case_preview(cases, png, title=f"{dataset.name}: rectum (red), tumour (green)")
