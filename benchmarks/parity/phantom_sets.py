"""Phantom datasets for the preprocessing and inference parity checks (preprocessing.py, inference.py), each in the
nnU-Net v2 raw layout both pipelines read, small enough for a 2-core CPU.

- "aniso": sagittal cases of mixed slice thickness (5-10 mm across ~2 mm pixels): the median spacing is more than 3x
  anisotropic and the median image has fewer than a third of the voxels along the thick axis, so nnU-Net's target
  spacing takes the 10th percentile on that axis, not the median (row 10); every case is resampled, with the thick
  axis apart (nearest along it, cubic in-plane) both ways (row 8 on the way back). The planned patch, [16, 112, 112],
  has max / patch[0] = 7 > 3 (the augmentation's dummy-2D case).
- "thick_last": the same cases with the array axes stored as (y, x, z): the thick axis last, so the plan's transpose
  puts it first again (row 9); the preprocessed arrays must equal the "aniso" ones.

    from benchmarks.parity import phantom_sets
    folder = phantom_sets.write_set("aniso", "/tmp/raw/Dataset901_Aniso", num_cases=8, seed=0)

Runs with the core only (no nnU-Net import).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from RCSegNeXtCore.data.dataset import write_dataset_json  # noqa: E402
from RCSegNeXtCore.data.io import Geometry, Image, write_image  # noqa: E402
from RCSegNeXtCore.phantom import make_phantom_case  # noqa: E402
from RCSegNeXtCore.plans import DEFAULT_CHANNELS, DEFAULT_LABELS  # noqa: E402

SHAPE = (16, 112, 112)                              # (z = left-right, y, x) voxels
IN_PLANE_MM = 2.0
SLICE_MM = (5.0, 6.5, 7.0, 7.0, 7.5, 8.0, 9.0, 10.0)   # cycled over the cases: median 7.25, 10th percentile ~6
SETS = ("aniso", "thick_last")
THICK_LAST = (1, 2, 0)                              # stored axes (y, x, z) of the (z, y, x) case


def case_spacing(index: int, rng: np.random.Generator) -> Tuple[float, float, float]:
    """Slice thickness from SLICE_MM, in-plane pixels 2 mm +- 5 %."""
    pixel = IN_PLANE_MM * float(rng.uniform(0.95, 1.05))
    return (SLICE_MM[index % len(SLICE_MM)], pixel, pixel)


def permuted(image: Image, label: np.ndarray, axes: Sequence[int]) -> Tuple[Image, np.ndarray]:
    """The same voxels stored with the array axes in another order (new axis j = old axis axes[j]); the geometry
    follows (spacing permuted; ITK's direction columns, which run in reversed numpy order, permuted alike), so every
    voxel keeps its physical position."""
    g = image.geometry
    old = g.direction_matrix
    new = np.empty_like(old)
    for j, a in enumerate(axes):
        new[:, 2 - j] = old[:, 2 - a]
    geometry = Geometry(tuple(int(g.shape[a]) for a in axes), tuple(float(g.spacing[a]) for a in axes), g.origin,
                        tuple(float(v) for v in new.reshape(-1)))
    array = np.ascontiguousarray(np.transpose(image.array, axes))
    return Image(array, geometry), np.ascontiguousarray(np.transpose(label, axes))


def make_cases(num_cases: int, seed: int, shape: Sequence[int] = SHAPE) -> List[Tuple[str, Image, np.ndarray]]:
    """(case id, image, label) of the "aniso" set; case i depends on (seed, i, shape) only; every case has a
    tumour."""
    cases = []
    for i in range(num_cases):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i, 901]))
        spacing = case_spacing(i, rng)
        image, label = make_phantom_case(rng, size="small", shape=tuple(shape), spacing=spacing, tumour=True)
        cases.append((f"PARITY_{i:03d}", image, np.asarray(label, dtype=np.uint8)))
    return cases


def write_set(name: str, out_dir, num_cases: int = 8, seed: int = 0, shape: Sequence[int] = SHAPE) -> Path:
    """Write the phantom set `name` (SETS) in the nnU-Net v2 raw layout to `out_dir`; returns the folder. `shape`:
    the (z, y, x) voxels of a case as the "aniso" set stores it (inference.py uses smaller cases)."""
    if name not in SETS:
        raise ValueError(f"phantom set {name!r}: use one of {', '.join(SETS)}")
    out = Path(out_dir)
    for case_id, image, label in make_cases(num_cases, seed, shape):
        if name == "thick_last":
            image, label = permuted(image, label, THICK_LAST)
        write_image(np.asarray(image.array).astype(np.int16), image.geometry,
                    out / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_image(label, image.geometry, out / "labelsTr" / f"{case_id}.nii.gz")
    write_dataset_json(out, labels=DEFAULT_LABELS, channel_names=DEFAULT_CHANNELS, file_ending=".nii.gz",
                       num_training=int(num_cases), name=f"RCSegNeXtParity_{name}",
                       description=f"phantom parity set {name} (benchmarks/parity/phantom_sets.py)")
    return out


def describe(num_cases: int = 8, seed: int = 0) -> Dict[str, object]:
    """The sets' spacings and shapes (for a report)."""
    cases = make_cases(num_cases, seed)
    return {"shape": list(SHAPE), "spacings": [list(image.geometry.spacing) for _, image, _ in cases],
            "stored_axes_thick_last": list(THICK_LAST)}


if __name__ == "__main__":
    import argparse
    import json
    parser = argparse.ArgumentParser(description="write a parity phantom set")
    parser.add_argument("name", choices=SETS)
    parser.add_argument("out")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_set(args.name, args.out, args.cases, args.seed))
    print(json.dumps(describe(args.cases, args.seed)))
