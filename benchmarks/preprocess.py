"""Preprocessing time per case: full-size phantom cases and the real sagittal T2 DICOM series (ProstateX-0000).

    .venv/bin/python benchmarks/preprocess.py [--cases 3] [--threads 2] [--real-data ../shared/data/real]

Each case is timed as read (SimpleITK) + preprocess (crop, z-score, resample; RCSegNeXtCore.data.preprocess) +
write (the .npy/.json cache files), on the CPU, best of `--repeats`. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from RCSegNeXtCore.data.cache import write_preprocessed_case
from RCSegNeXtCore.data.dataset import load_dataset, read_case
from RCSegNeXtCore.data.io import Image, read_image
from RCSegNeXtCore.phantom import make_phantom_dataset
from RCSegNeXtCore.planning import make_plans_from_values
from RCSegNeXtCore.data.preprocess import preprocess_case

REPO = Path(__file__).resolve().parents[1]
PAPER_SPACING = (4.0, 0.875, 0.875)


def _best(function, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_case(name, read, plans, out_dir, repeats):
    """Row of the table: read, preprocess and write times (s) of one case."""
    t_read, (image, label) = _best(read, repeats)
    t_pre, case = _best(lambda: preprocess_case(image, plans, label), repeats)
    t_write, _ = _best(lambda: write_preprocessed_case(out_dir, name, case.data, case.label, case.properties),
                       repeats)
    spacing = ", ".join(f"{s:.3g}" for s in image.geometry.spacing)
    return (f"| {name} | {list(image.geometry.shape)} | ({spacing}) | {list(case.data.shape[1:])} | "
            f"{t_read:.2f} | {t_pre:.2f} | {t_write:.2f} | {t_read + t_pre + t_write:.2f} |"), t_read + t_pre + t_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="full-size phantom cases (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs per step (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--real-data", default=str(REPO.parent / "shared" / "data" / "real"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plans = make_plans_from_values(PAPER_SPACING, (16, 320, 320))
    print(f"# Preprocessing time per case (CPU {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}); target spacing "
          f"{list(PAPER_SPACING)} mm\n")
    print("| case | shape (z,y,x) | spacing (mm) | preprocessed shape | read s | preprocess s | write s | total s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = load_dataset(make_phantom_dataset(tmp / "phantom", args.cases, seed=0, size="full",
                                                    progress=False))
        totals = []
        for case in dataset.cases:
            def read(case=case):
                image, label = read_case(case)
                return image, label.array
            row, total = time_case(case.case_id, read, plans, tmp, args.repeats)
            totals.append(total)
            print(row)
        print(f"| **phantom mean** | | | | | | | **{np.mean(totals):.2f}** |")
        dicom = Path(args.real_data) / "prostatex" / "ProstateX-0000" / "t2_tse_sag_dicom"
        if dicom.is_dir():
            def read_dicom():
                image = read_image(dicom, np.float32)
                return Image(image.array[None], image.geometry), None
            print(time_case("ProstateX-0000 sagittal DICOM", read_dicom, plans, tmp, args.repeats)[0])
            own = make_plans_from_values(read_image(dicom).geometry.spacing, (16, 320, 320))
            print(time_case("ProstateX-0000 at own spacing (no resampling)", read_dicom, own, tmp,
                            args.repeats)[0])
        else:
            print(f"\n(real data folder {dicom} absent: sagittal DICOM row skipped)")


if __name__ == "__main__":
    main()
