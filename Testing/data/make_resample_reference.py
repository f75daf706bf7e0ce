"""Writes resample_reference.npz: outputs of the torch resampling (data/resample.py at commit f5b2539, before it
became numpy) on small random inputs, so that Testing/test_resample.py holds the numpy version to them (1e-4).

    git show f5b2539:RCSegNeXtCore/data/resample.py > /tmp/old_resample.py   # the torch implementation
    python Testing/data/make_resample_reference.py /tmp/old_resample.py
(it also needs that commit's training/augment/kernels.py, imported from the package as it was then).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

CASES = [  # (name, shape, new shape, spacing, target spacing)
    ("aniso_down", (5, 17, 19), (3, 11, 13), (4.0, 0.8, 0.8), (4.0, 1.2, 1.1)),
    ("aniso_up", (4, 9, 10), (7, 15, 21), (4.0, 1.0, 1.0), (2.4, 0.6, 0.5)),
    ("iso", (6, 7, 8), (9, 5, 11), (1.0, 1.0, 1.0), (0.7, 1.3, 0.75)),
    ("thick_x", (12, 11, 4), (9, 14, 6), (1.0, 1.0, 5.0), (1.3, 0.8, 3.4)),
]


def main(old_module: str, out: str) -> None:
    spec = importlib.util.spec_from_file_location("old_resample", old_module)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    import torch
    rng = np.random.default_rng(0)
    arrays = {}
    for name, shape, new, spacing, target in CASES:
        image = rng.standard_normal((2, *shape)).astype(np.float32)
        label = rng.integers(0, 3, size=shape).astype(np.int8)
        label[label == 2] = rng.integers(0, 2, size=int((label == 2).sum()))  # class 2 rarer
        arrays[f"{name}/image"] = image
        arrays[f"{name}/label"] = label
        for interp in ("bicubic", "bspline"):
            for order, thick in ((3, 0), (1, 1), (0, 0), (3, 1)):
                arrays[f"{name}/image_{interp}_{order}{thick}"] = old.resample_image(
                    image, new, spacing, target, order, thick, 3.0, interp)
        for rule in ("nnunet", "keep_classes"):
            for order, thick in ((1, 0), (1, 1), (0, 0)):
                arrays[f"{name}/label_{rule}_{order}{thick}"] = old.resample_label(
                    label, new, spacing, target, order, thick, 3.0, rule)
        probs = rng.random((3, *shape)).astype(np.float32)
        arrays[f"{name}/probs"] = probs
        arrays[f"{name}/probs_out"] = old.resample_probabilities(probs, new, spacing, target).numpy()
        arrays[f"{name}/logits64_out"] = old.resample_probabilities(
            torch.from_numpy(probs.astype(np.float64)), new, spacing, target, 1, 0).numpy()
    for m in range(1, 14):  # 1D: every order, many size pairs (index rounding of nearest, edges of linear/cubic)
        for n in range(1, 14):
            line = rng.standard_normal((1, 1, 1, m)).astype(np.float32)
            for order in (0, 1, 3):
                arrays[f"line/{m}_{n}_{order}"] = old.resample_tensor(torch.from_numpy(line), (1, 1, n), None,
                                                                      order, order)[0, 0, 0].numpy()
                arrays[f"line/{m}_{n}_in"] = line[0, 0, 0]
    np.savez_compressed(out, **arrays)
    print(f"{out}: {len(arrays)} arrays")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).with_name("resample_reference.npz")))
