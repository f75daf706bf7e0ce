"""`rcsegnext predict`: segment a file, a DICOM series or study folder, or a folder of cases with a model folder."""
from __future__ import annotations

import argparse
import sys

HELP = "segment a volume, a DICOM series folder or a folder of cases (label map or Slicer .seg.nrrd)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from RCSegNeXtCore.inference.export import OUTPUT_FORMATS  # light: the writers import numpy/SimpleITK
    parser.add_argument("-i", "--input", required=True,
                        help="image file, DICOM series folder, folder of cases (files or DICOM sub-folders), or a "
                             "study folder (sub-folders = DICOM series of one study: the series in the model's "
                             "slice plane are segmented, the others listed)")
    parser.add_argument("-o", "--output", required=True,
                        help="output file (one case: .nii.gz, .nrrd, .seg.nrrd, or .dcm: a DICOM SEG of a DICOM series "
                             "input, docs/dicom_seg.md) or folder (a folder of cases)")
    parser.add_argument("-m", "--model", required=True, help="model folder (plans.json, dataset.json, fold_K/)")
    parser.add_argument("--folds", nargs="+", default=None, metavar="K|all",
                        help="folds to average: numbers (fold_K) and/or 'all' (fold_all, trained on every case); "
                             "default: every numbered fold present, fold_all only when there is none")
    parser.add_argument("--checkpoint", choices=("final", "best"), default="final")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino", "onnxruntime"), default="auto",
                        help="what runs the network: auto (default: PyTorch on a GPU, else the fastest installed CPU "
                             "engine: OpenVINO, then ONNX Runtime, PyTorch when none is installed), torch, openvino "
                             "or onnxruntime (the engines run fold_K/model.onnx on the CPU, without PyTorch)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the network (default: every core this process may use)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation over the plan's axes")
    parser.add_argument("--tile-overlap", type=float, default=None,
                        help="minimum overlap of neighbouring tiles, fraction of the patch, taken as given (default: "
                             "1/4 of the patch, at least two bottleneck cells, at most half; 0.5 places nnU-Net's "
                             "tiles)")
    parser.add_argument("--batch-tiles", type=int, default=None, help="tiles per forward pass (default 1 CPU, 4 CUDA)")
    parser.add_argument("--whole-volume", action="store_true",
                        help="one pass over the whole volume when it fits in memory instead of tiles at the plan's "
                             "patch size: faster, but NOT equivalent for networks with instance normalisation "
                             "(RCSegNeXt): their statistics then cover another extent than in training")
    parser.add_argument("--format", choices=tuple(OUTPUT_FORMATS), default=None,
                        help="output format (default: from the output name; nii.gz for folders): "
                             + "; ".join(f"{f.suffix} {f.description}" for f in OUTPUT_FORMATS.values()))
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write the softmax probabilities (K-component NRRD)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write the review map CASE_uncertainty (float32 in [0, 1], normalised entropy of "
                             "the softmax) beside each label map, and a per-case uncertainty score in its header, "
                             "the progress lines and the summary (sort a worklist by it; docs/inference.md)")
    parser.add_argument("--progress-json", action="store_true",
                        help="print one JSON progress object per line on stdout (for GUIs)")
    parser.add_argument("--resize-to", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="first resample each input to this voxel grid over the same extent (external sets)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    parser.add_argument("--series", default=None, metavar="NAME",
                        help="in a study folder, segment this series (sub-folder name, SeriesDescription or "
                             "SeriesInstanceUID, any case) instead of those in the model's slice plane")


def config_from_args(args: argparse.Namespace):
    """The PredictionConfig this command line asks for (every option lands in one field)."""
    from RCSegNeXtCore.inference.config import PredictionConfig
    return PredictionConfig(
        model=args.model, input=args.input, output=args.output, folds=args.folds, checkpoint=args.checkpoint,
        device=args.device, tta=args.tta, tile_overlap=args.tile_overlap, batch_tiles=args.batch_tiles,
        whole_volume_max_voxels=None if args.whole_volume else 0, resize_to=args.resize_to, backend=args.backend,
        threads=args.threads,
        format=args.format, save_probabilities=args.save_probabilities, uncertainty=args.uncertainty,
        progress_json=args.progress_json,
        overwrite=args.overwrite, series=args.series)


def run(args: argparse.Namespace) -> int:
    from RCSegNeXtCore.inference.runner import run_prediction

    config = config_from_args(args)
    result = run_prediction(config)
    if not config.progress_json:
        not_chosen = f", series not segmented {len(result.skipped_series)}" if result.skipped_series else ""
        print(f"written {len(result.written)}, skipped (already there) {len(result.skipped)}, "
              f"failed {len(result.failed)}{not_chosen}")
        if result.uncertainty_scores:
            print("uncertainty score (highest first: review those first):")
            for case, score in sorted(result.uncertainty_scores.items(), key=lambda kv: -kv[1]):
                print(f"  {score:.4f}  {case}")
    for failure in result.failed:
        print(f"FAILED {failure['case']}: {failure['message']}", file=sys.stderr)
    return 1 if result.failed else 0
