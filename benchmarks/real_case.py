"""Round trip on the single real rectal case (`rectal_filitto/` in the real-data folder, $RCSEGNEXT_REAL_DATA,
default ../shared/data/real, not part of the repository): train on it and predict it,
tumour as the only foreground, then report the tumour Dice back on the ORIGINAL grid (target >= 0.8) — proof that
real geometry (oblique axial, 0.43 x 0.43 x 3 mm) survives plan -> preprocess -> train -> predict -> restore.

A one-case dataset is built in a temporary folder (symbolic links, nothing copied), with a one-fold split whose
training and validation case are that case, so `rcsegnext train` itself predicts it through the inference pipeline
and evaluates it. CPU default: width 8, in-plane resampling to 1.5 mm, patch [16, 80, 80], 1000 iterations at lr 0.05, no augmentation; GPU:
--device cuda (and e.g. --base-channels 32 --spacing 3 0.86 0.86 --patch 16 160 160).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REAL = Path(os.environ.get("RCSEGNEXT_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
CASE = "RECTAL_001"


def build_dataset(folder: Path) -> Path:
    source = REAL / "rectal_filitto"
    image, label = source / "rectal_ca_ax_t2.nii.gz", source / "rectal_ca_ax_t2_tumor.nii.gz"
    if not image.is_file():
        raise SystemExit(f"{image}: the real rectal case is absent (set RCSEGNEXT_REAL_DATA)")
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    os.symlink(image, folder / "imagesTr" / f"{CASE}_0000.nii.gz")
    os.symlink(label, folder / "labelsTr" / f"{CASE}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "labels": {"background": 0, "tumour": 1}, "numTraining": 1,
        "file_ending": ".nii.gz", "name": "RealRectalCase"}))
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--iterations-per-epoch", type=int, default=20)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--spacing", type=float, nargs=3, default=[3.0, 1.5, 1.5])
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 80, 80])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05, help="default 0.05: short CPU schedule")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the idle cores)")
    parser.add_argument("--augment", action="store_true",
                        help="with data augmentation (off by default: fitting this one case is the point)")
    args = parser.parse_args(argv)

    from RCSegNeXtCore.cli import main as cli_main
    from RCSegNeXtCore.evaluation.evaluate import load_metrics

    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset(Path(tmp) / "raw")
        run = Path(args.out) if args.out else Path(tmp) / "run"
        splits = Path(tmp) / "splits_final.json"
        splits.write_text(json.dumps([{"train": [CASE], "val": [CASE]}]))
        start = time.perf_counter()
        code = cli_main(["train", str(dataset), "-o", str(run), "--fold", "0", "--splits", str(splits),
                         "--target-spacing", *map(str, args.spacing), "--patch-size", *map(str, args.patch),
                         "--epochs", str(args.epochs), "--iterations-per-epoch", str(args.iterations_per_epoch),
                         "--val-iterations", "4", "--base-channels", str(args.base_channels),
                         "--batch-size", str(args.batch_size), "--device", args.device, "--lr", str(args.lr)]
                        + (["--threads", str(args.threads)] if args.threads else [])
                        + ([] if args.augment else ["--no-augmentation"]))
        if code != 0:
            return code
        seconds = time.perf_counter() - start
        metrics = load_metrics(run / "fold_0" / "validation" / "metrics.json")
        tumour = metrics["cases"][CASE]["tumour"]
        print(f"\nreal rectal case, trained and predicted on itself ({args.device}, {seconds / 60:.1f} min; "
              f"spacing {args.spacing}, patch {args.patch}, width {args.base_channels}, "
              f"{args.epochs} x {args.iterations_per_epoch} iterations, lr {args.lr}, "
              f"augmentation {'on' if args.augment else 'off'})")
        print("| case | tumour Dice (original grid) | HD95 (mm) | volume pred / ref (ml) |")
        print("|---|---:|---:|---:|")
        print(f"| {CASE} | {tumour['dice']:.4f} | {tumour['hd95']:.2f} | {tumour.get('volume_pred_ml', float('nan')):.2f}"
              f" / {tumour.get('volume_ref_ml', float('nan')):.2f} |")
        print("target >= 0.8:", "reached" if tumour["dice"] >= 0.8 else "NOT reached")
        return 0 if tumour["dice"] >= 0.8 else 1


if __name__ == "__main__":
    raise SystemExit(main())
