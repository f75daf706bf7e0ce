"""A phantom dataset on disk in the nnU-Net v2 raw layout, reproducible from (seed, case index)."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from RCSegNeXtCore.data.dataset import write_dataset_json
from RCSegNeXtCore.data.io import write_image
from RCSegNeXtCore.errors import RCSegNeXtError
from RCSegNeXtCore.phantom.case import SIZES, TUMOUR_ABSENT_FRACTION, make_phantom_case
from RCSegNeXtCore.plans import DEFAULT_CHANNELS, DEFAULT_LABELS
from RCSegNeXtCore.progress import ProgressBar

CASE_PREFIX = "PHANTOM"


def case_ids(num_cases: int) -> list[str]:
    return [f"{CASE_PREFIX}_{i:03d}" for i in range(num_cases)]


def _tumour_plan(seed: int, num_cases: int) -> list[bool]:
    """Which cases have a tumour: ~10 % without (at least one from 5 cases on), chosen reproducibly."""
    absent = int(round(TUMOUR_ABSENT_FRACTION * num_cases)) or (1 if num_cases >= 5 else 0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2 ** 31 - 1]))
    chosen = set(rng.choice(num_cases, size=absent, replace=False).tolist()) if absent else set()
    return [i not in chosen for i in range(num_cases)]


def _write_case(job) -> str:
    out, index, seed, size, shape, spacing, tumour = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    image, label = make_phantom_case(rng, size=size, shape=shape, spacing=spacing, tumour=tumour)
    case_id = case_ids(index + 1)[index]
    write_image(image.array.astype(np.int16), image.geometry, Path(out) / "imagesTr" / f"{case_id}_0000.nii.gz")
    write_image(label, image.geometry, Path(out) / "labelsTr" / f"{case_id}.nii.gz")
    return case_id


def make_phantom_dataset(out_dir: str | os.PathLike, num_cases: int = 20, seed: int = 0, *, size: str = "full",
                         shape: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
                         workers: int = 1, overwrite: bool = False, progress: bool = True) -> Path:
    """Write `num_cases` phantom cases in nnU-Net v2 raw layout (imagesTr/, labelsTr/, dataset.json) to `out_dir`.

    Case i depends only on (seed, i, size, shape, spacing) and on whether it has a tumour (~10 % of the cases,
    chosen from the seed, have none). Calling again with the same arguments on a complete folder does nothing;
    a non-empty folder holding anything else is refused unless `overwrite`. Returns the dataset folder.
    """
    if int(num_cases) < 1:
        raise RCSegNeXtError(f"phantom: {num_cases} cases requested; ask for at least 1")
    if size not in SIZES:
        raise RCSegNeXtError(f"phantom size {size!r}: use one of {', '.join(SIZES)}")
    out = Path(out_dir)
    ids = case_ids(int(num_cases))
    record = {"seed": int(seed), "num_cases": int(num_cases), "size": size,
              "shape": None if shape is None else [int(s) for s in shape],
              "spacing": None if spacing is None else [float(s) for s in spacing]}
    files = [out / "imagesTr" / f"{c}_0000.nii.gz" for c in ids] + [out / "labelsTr" / f"{c}.nii.gz" for c in ids]
    if (out / "dataset.json").is_file():
        try:
            existing = json.loads((out / "dataset.json").read_text(encoding="utf-8")).get("phantom")
        except (ValueError, AttributeError):
            existing = None
        if existing == record and all(f.is_file() for f in files):
            return out
    if out.exists() and not out.is_dir():
        raise RCSegNeXtError(f"phantom: output {out} is a file; give a folder to write the dataset into")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RCSegNeXtError(f"phantom: output folder {out} is not empty and does not hold this phantom "
                             f"({num_cases} cases, seed {seed}, size {size}); choose an empty folder or overwrite")
    tumours = _tumour_plan(int(seed), int(num_cases))
    jobs = [(str(out), i, int(seed), size, shape, spacing, tumours[i]) for i in range(int(num_cases))]
    out.mkdir(parents=True, exist_ok=True)
    with ProgressBar(len(jobs), "phantom", enabled=progress, unit="case") as bar:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                for _ in pool.map(_write_case, jobs):
                    bar.update(1)
        else:
            for job in jobs:
                _write_case(job)
                bar.update(1)
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):  # stale cases of a larger run
        for stale in (out / folder).glob(f"{CASE_PREFIX}_[0-9][0-9][0-9]{suffix}"):
            if stale.name[: len(CASE_PREFIX) + 4] not in ids:
                stale.unlink()
    write_dataset_json(out, labels=DEFAULT_LABELS, channel_names=DEFAULT_CHANNELS, file_ending=".nii.gz",
                       num_training=int(num_cases), name="RCSegNeXtPhantom",
                       description="Synthetic sagittal T2 pelvis (rectum 1, tumour 2) made by rcsegnext phantom",
                       phantom=record)
    return out
