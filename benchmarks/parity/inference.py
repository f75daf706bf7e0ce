"""Inference parity: ONE set of trained weights, each pipeline reading the raw files itself: nnU-Net v2.1.2's
nnUNetPredictor (manual_initialization with OUR network module and weights, plans / dataset json written from our
plan, tile step 0.5, Gaussian, mirroring over the plan's axes) vs our predictor (`python -m RCSegNeXtCore predict`,
`--backend torch` when the option exists, `--tile-overlap 0.5 --tta`). Dice per class between the two label maps on
the original grid, on the phantom sets of phantom_sets.py at SHAPE (mixed slice thickness; the same cases stored
thick axis last, predicted with the same weights and the plan's transpose for that order). Then our default tiling
(with --tta, and our plain defaults) against the same nnU-Net maps. Runs in the parity environment:

    python -m benchmarks.parity.inference --json OUT.json [--cases 3] [--model DIR] [--work DIR]

In the environment of nnunetv2 2.1.x, nnU-Net runs three times: as shipped; with its export's spacing transposed
(as later releases pass it); and with that and its sliding-window sums and Gaussian in float32 (`nnunet_patched`; the
algorithm unchanged): this separates our differences from its 2.1.2 export bug and its float16 rounding. With a later
nnunetv2 (the "latest" environment) it runs as shipped only. Weights: `--model DIR` (a model folder), else a small
RCSegNeXt (base width 8, patch [8, 32, 32]: max / patch[0] = 4 > 3, 1,200 iterations without augmentation, 2-4 CPU
minutes: 300 left 2.1.2's float16 rounding flipping 0.2 % of the rectum's voxels) trained by our trainer on the
"aniso" set. Everything runs on 1 torch thread per process (on a shared 2-core machine 2 OpenMP threads made a
training step 12x slower).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.parity import phantom_sets  # noqa: E402
from benchmarks.parity.preprocessing import dataset_folder_name, finish, nnunet_folders  # noqa: E402

CONFIGURATION = "3d_fullres"
SHAPE = (8, 48, 48)           # voxels of a case (z, y, x as the "aniso" set stores it): 2 x 2 tiles in-plane
TRAINING = dict(patch_size=[8, 32, 32], base_channels=8, batch_size=2, lr=0.05, epochs=120, iterations_per_epoch=10,
                val_iterations=2, augment=False, oversample_foreground=0.67, oversample_rule="random", jitter_foreground=True)
NORMALIZATION = {"zscore": "ZScoreNormalization", "ct": "CTNormalization", "none": "NoNormalization",
                 "noNorm": "NoNormalization"}
# (name, our predict options): each compared with nnU-Net's labels
# nnU-Net as shipped; for 2.1.x also with only its export's spacing transposed (the fix later releases carry) and
# with float32 sums as well (nnunet_patched): the two causes of a difference, one at a time
NNUNET_VARIANTS_2_1 = [("nnunet", ()), ("nnunet_export_fixed", ("export",)), ("nnunet_f32", ("export", "float32"))]


def nnunet_variants() -> List:
    """The nnU-Net runs for the installed release: the 2.1.2 patches only make sense on 2.1.x."""
    from importlib import metadata
    return NNUNET_VARIANTS_2_1 if metadata.version("nnunetv2").startswith("2.1.") else NNUNET_VARIANTS_2_1[:1]
RUNS = [("nnunet_tiles_tta", ["--tile-overlap", "0.5", "--tta"]),
        ("default_tiles_tta", ["--tta"]),
        ("default", [])]


# -- the weights -----------------------------------------------------------------------------------------------------
def train_model(raw: Path, out: Path, seconds: Optional[float], threads: int, seed: int = 0,
                epochs: Optional[int] = None) -> Dict[str, Any]:
    """A small RCSegNeXt trained by our trainer on every case of `raw` (fold_all): TRAINING's 1,200 iterations (2-4
    CPU minutes), fewer when `seconds` runs out."""
    import torch
    from RCSegNeXtCore.training.config import TrainingConfig
    from RCSegNeXtCore.training.pipeline import train
    torch.set_num_threads(threads)
    settings = dict(TRAINING, epochs=epochs or TRAINING["epochs"])
    config = TrainingConfig(dataset=str(raw), output=str(out), folds=["all"], device="cpu", seed=seed,
                            threads=threads, num_workers=1, progress=False, check_memory=False, validate=False,
                            max_seconds=seconds, **settings)
    start = time.perf_counter()
    train(config)
    return {"trained_s": round(time.perf_counter() - start, 1), "settings": settings, "max_seconds": seconds}


# -- nnU-Net's side ----------------------------------------------------------------------------------------------
def nnunet_plans_from_ours(plans) -> Dict[str, Any]:
    """An nnU-Net v2 plans dict (one 3d_fullres configuration) that preprocesses, tiles and exports as our plan."""
    from RCSegNeXtCore.plans import resampling_settings
    r = resampling_settings(plans.resampling)
    if r["restore"] != "logits" or r["image_interpolation"] != "bspline" or r["label_rule"] != "nnunet":
        raise SystemExit(f"this plan resamples as RCSegNeXt 0.1 ({r}); nnU-Net cannot express it")
    if float(r["anisotropy_threshold"]) != 3.0:
        raise SystemExit("nnU-Net's anisotropy threshold is fixed at 3")

    def kwargs(is_seg: bool, order: int, order_z: int) -> Dict[str, Any]:
        return {"is_seg": is_seg, "order": int(order), "order_z": int(order_z), "force_separate_z": None}
    pools = [[1, 1, 1]] + [list(s) for s in plans.strides]
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(plans.batch_size), "patch_size": list(plans.patch_size),
        "median_image_size_in_voxels": list(plans.median_shape or plans.patch_size),
        "spacing": [float(s) for s in plans.target_spacing],
        "normalization_schemes": [NORMALIZATION[n] for n in plans.normalization],
        "use_mask_for_norm": [False] * len(plans.normalization),
        "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": int(plans.architecture.base_channels),
        "n_conv_per_stage_encoder": [2] * len(pools), "n_conv_per_stage_decoder": [2] * (len(pools) - 1),
        "num_pool_per_axis": [int(sum(1 for s in plans.strides if s[a] > 1)) for a in range(3)],
        "pool_op_kernel_sizes": pools, "conv_kernel_sizes": [list(k) for k in plans.kernels],
        "unet_max_num_features": 320,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": kwargs(False, r["image_order"], r["image_order_thick_axis"]),
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": kwargs(True, r["label_order"], r["label_order_thick_axis"]),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": kwargs(False, r["restore_order"], r["restore_order_thick_axis"]),
        "batch_dice": False}
    median_spacing = plans.median_spacing or plans.target_spacing
    return {"dataset_name": plans.dataset_name or "RCSegNeXt", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [float(s) for s in median_spacing],
            "original_median_shape_after_transp": list(plans.median_shape or plans.patch_size),
            "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [int(a) for a in plans.transpose_forward],
            "transpose_backward": [int(a) for a in plans.transpose_backward],
            "configurations": {CONFIGURATION: configuration},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": plans.intensity_properties or {}}


def nnunet_dataset_json(plans, file_ending: str = ".nii.gz") -> Dict[str, Any]:
    return {"channel_names": dict(plans.channel_names), "labels": dict(plans.labels),
            "numTraining": int(plans.num_training_cases or 0), "file_ending": file_ending}


def nnunet_predictor(model: Path, threads: int):
    """nnUNetPredictor as the official final validation configures it, with our module and weights."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from RCSegNeXtCore.inference.model_folder import ModelFolder
    torch.set_num_threads(threads)
    folder = ModelFolder(model)
    plans = folder.plans
    folds = folder.select_folds(None)
    network = folder.load_networks(folds[:1], "final", "cpu")[0]
    parameters = [n.state_dict() for n in folder.load_networks(folds, "final", "cpu")]
    manager = PlansManager(nnunet_plans_from_ours(plans))
    import inspect
    on_device = "perform_everything_on_device" if "perform_everything_on_device" in \
        inspect.signature(nnUNetPredictor.__init__).parameters else "perform_everything_on_gpu"   # renamed in 2.2
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False, **{on_device: False})
    predictor.manual_initialization(network, manager, manager.get_configuration(CONFIGURATION), parameters,
                                    nnunet_dataset_json(plans), "nnUNetTrainerRCSegNeXt",
                                    tuple(int(a) for a in plans.mirror_axes))
    return predictor, {"folds": [str(f) for f in folds], "mirror_axes": list(plans.mirror_axes),
                       "patch_size": list(plans.patch_size), "plans_nnunet": manager.plans}


def export_with_transposed_spacing(predicted, properties: dict, configuration_manager, plans_manager, *args):
    """nnU-Net 2.1.2's export with the original spacing in the transposed order, as later nnU-Net releases pass it
    (`spacing_transposed`): 2.1.2 hands the stored order to the resampling, which then picks the wrong thick axis
    for cases stored thick axis last whenever the target spacing is not itself > 3x anisotropic."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    properties = dict(properties)
    properties["spacing"] = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    return export_prediction_from_logits(predicted, properties, configuration_manager, plans_manager, *args)


class _Float32Buffers:
    """The torch module as nnU-Net's predictor sees it, with its float16 buffers made float32."""

    def __getattr__(self, name):
        import torch
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, dtype=None, **kwargs):
        import torch
        return torch.zeros(*args, dtype=torch.float32 if dtype == torch.half else dtype, **kwargs)


@contextlib.contextmanager
def nnunet_patched(patches=("export", "float32")):
    """nnUNetPredictor 2.1.2 with "float32": its sliding-window sums and Gaussian in float32 (it keeps them in
    float16, the Gaussian cast BEFORE its x1000 scaling, so weights below 6e-5 are subnormal: tile borders get coarse
    weights); "export": the export's spacing transposed (export_with_transposed_spacing). The algorithm is
    unchanged."""
    import torch
    from nnunetv2.inference import predict_from_raw_data as module
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    @functools.lru_cache(maxsize=2)
    def gaussian(tile_size, sigma_scale=1. / 8, value_scaling_factor=1, dtype=torch.float16, device=None):
        return compute_gaussian(tile_size, sigma_scale, value_scaling_factor, torch.float32, device)
    saved = module.torch, module.compute_gaussian, module.export_prediction_from_logits
    if "float32" in patches:
        module.torch, module.compute_gaussian = _Float32Buffers(), gaussian
    if "export" in patches:
        module.export_prediction_from_logits = export_with_transposed_spacing
    try:
        yield
    finally:
        module.torch, module.compute_gaussian, module.export_prediction_from_logits = saved


def predict_nnunet(predictor, images: Path, out: Path, patches=()) -> float:
    start = time.perf_counter()
    with nnunet_patched(patches):
        predictor.predict_from_files(str(images), str(out), save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return time.perf_counter() - start


# -- ours ------------------------------------------------------------------------------------------------------------
def predict_ours(model: Path, images: Path, out: Path, options: List[str], threads: int) -> float:
    """`python -m RCSegNeXtCore predict` (PyTorch backend) in a process of its own."""
    command = [sys.executable, "-m", "RCSegNeXtCore", "predict", "-m", str(model), "-i", str(images), "-o", str(out),
               "--device", "cpu", "--threads", str(threads), *options]
    help_text = subprocess.run([sys.executable, "-m", "RCSegNeXtCore", "predict", "--help"], capture_output=True,
                               text=True, cwd=REPO).stdout
    if "--backend" in help_text:
        command += ["--backend", "torch"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


# -- comparison ------------------------------------------------------------------------------------------------------
def read_labels(path: Path):
    from RCSegNeXtCore.data.io import read_image
    image = read_image(path)
    return np.asarray(image.array).astype(np.int16), image.geometry


def compare_folders(theirs: Path, mine: Path, ids: List[str], classes: List[int]) -> Dict[str, Any]:
    """Per case and pooled over the cases: Dice per class between the two label maps, voxels differing."""
    pooled = {c: [0, 0] for c in classes}            # (2 |A and B|, |A| + |B|)
    cases, geometry_mismatches = {}, 0
    for case_id in ids:
        a, ga = read_labels(theirs / f"{case_id}.nii.gz")
        b, gb = read_labels(mine / f"{case_id}.nii.gz")
        if a.shape != b.shape or not ga.matches(gb):
            geometry_mismatches += 1
            cases[case_id] = {"geometry_match": False}
            continue
        row = {"geometry_match": True, "voxels_differing": int((a != b).sum()), "dice": {}}
        for c in classes:
            both, total = int(np.logical_and(a == c, b == c).sum()), int((a == c).sum() + (b == c).sum())
            pooled[c][0] += 2 * both
            pooled[c][1] += total
            row["dice"][str(c)] = None if total == 0 else 2 * both / total
            row.setdefault("voxels", {})[str(c)] = [int((a == c).sum()), int((b == c).sum())]
        cases[case_id] = row
    return {"cases": cases, "geometry_mismatches": geometry_mismatches,
            "dice": {str(c): (None if t == 0 else s / t) for c, (s, t) in pooled.items()},
            "dice_case_min": {str(c): min((r["dice"][str(c)] for r in cases.values()
                                           if r.get("dice", {}).get(str(c)) is not None), default=None)
                              for c in classes},
            "voxels_differing": sum(r.get("voxels_differing", 0) for r in cases.values())}


def merge(results: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Dice per class pooled over several compare_folders results (the sets)."""
    out = {}
    for c in results[0]["dice"]:
        s = t = 0
        for r in results:
            for row in r["cases"].values():
                if c in row.get("dice", {}):
                    a, b = row["voxels"][c]
                    t += a + b
                    s += (row["dice"][c] or 0.0) * (a + b)
        out[c] = None if t == 0 else s / t
    return out


def print_table(name: str, result: Dict[str, Any], out=sys.stderr) -> None:
    print(f"\n{name}: Dice per class {result['dice']}, voxels differing {result['voxels_differing']}, "
          f"geometry mismatches {result['geometry_mismatches']}", file=out)
    for case_id, row in result["cases"].items():
        if row.get("geometry_match"):
            dice = "  ".join(f"{c}: {d:.6f}" if d is not None else f"{c}: -" for c, d in row["dice"].items())
            print(f"  {case_id:12s} {dice}  voxels (nnU-Net, ours) {row['voxels']}  differing "
                  f"{row['voxels_differing']}", file=out)


def thick_last_model(model: Path, out: Path) -> Path:
    """The same weights with the plan's axis order for cases stored thick axis last (what both planners choose for
    the "thick_last" set): transpose_forward (2, 0, 1) for a model of (0, 1, 2); everything else is in the network's
    order already."""
    from RCSegNeXtCore.plans import Plans
    out.mkdir(parents=True)
    plans = json.loads((model / "plans.json").read_text())
    stored = [int(a) for a in np.argsort(phantom_sets.THICK_LAST)]     # where each "aniso" axis is stored now
    plans["transpose_forward"] = [stored[int(a)] for a in plans.get("transpose_forward", [0, 1, 2])]
    Plans.from_dict(plans)                    # still a valid plan
    (out / "plans.json").write_text(json.dumps(plans, indent=1))
    (out / "dataset.json").write_text((model / "dataset.json").read_text())
    for fold in model.glob("fold_*"):
        (out / fold.name).symlink_to(fold.resolve(), target_is_directory=True)
    return out


def cross_set(pred: Path, ids: List[str], run_name: str) -> Dict[str, Any]:
    """One pipeline's labels of the "thick_last" cases, stored back in (z, y, x), against its "aniso" labels."""
    differing, total = 0, 0
    for case_id in ids:
        a, _ = read_labels(pred / "aniso" / run_name / f"{case_id}.nii.gz")
        b, _ = read_labels(pred / "thick_last" / run_name / f"{case_id}.nii.gz")
        b = np.transpose(b, np.argsort(phantom_sets.THICK_LAST))
        differing += int((a != b).sum()) if a.shape == b.shape else a.size
        total += a.size
    return {"voxels_differing": differing, "voxels": total}


def run(num_cases: int, train_cases: int, seed: int, model: Optional[Path], train_seconds: float, threads: int,
        work: Path, epochs: Optional[int] = None) -> Dict[str, Any]:
    folders = nnunet_folders(work)            # before nnunetv2 is imported
    os.environ["nnUNet_def_n_proc"] = str(threads)   # its export's torch threads (default 8)
    raws = {name: phantom_sets.write_set(name, folders["nnUNet_raw"] / dataset_folder_name(name),
                                         max(num_cases, train_cases), seed, SHAPE)
            for name in phantom_sets.SETS}
    from importlib import metadata
    variants = nnunet_variants()
    result: Dict[str, Any] = {"cases_per_set": num_cases, "shape": list(SHAPE), "sets": {}, "seconds": {},
                              "cross_set": {}, "nnunetv2": metadata.version("nnunetv2"),
                              "nnunet_variants": [v for v, _ in variants]}
    if model is None:
        model = work / "model"
        result["training"] = train_model(raws["aniso"], model, train_seconds, threads, seed, epochs)
        result["training"]["cases"] = train_cases
    result["model"] = str(model)
    models = {"aniso": model, "thick_last": thick_last_model(model, work / "model_thick_last")}
    from RCSegNeXtCore.inference.model_folder import ModelFolder
    classes = sorted(int(v) for v in ModelFolder(model).plans.labels.values() if int(v) > 0)
    ids = [f"PARITY_{i:03d}" for i in range(num_cases)]
    for name, raw in raws.items():
        images = work / "images" / name                 # the cases predicted
        images.mkdir(parents=True)
        for case_id in ids:
            (images / f"{case_id}_0000.nii.gz").symlink_to(raw / "imagesTr" / f"{case_id}_0000.nii.gz")
        predictor, info = nnunet_predictor(models[name], threads)
        result["nnunet_predictor"] = {k: v for k, v in info.items() if k != "plans_nnunet"}
        result.setdefault("transpose_forward", {})[name] = info["plans_nnunet"]["transpose_forward"]
        for variant, patches in variants:
            seconds = predict_nnunet(predictor, images, work / "pred" / name / variant, patches)
            result["seconds"][f"{variant}_{name}"] = round(seconds, 1)
        del predictor
        sets = result["sets"].setdefault(name, {})
        for run_name, options in RUNS:
            mine = work / "pred" / name / run_name
            seconds = predict_ours(models[name], images, mine, options, threads)
            result["seconds"][f"ours_{run_name}_{name}"] = round(seconds, 1)
            for variant, _ in variants:
                key = f"{run_name}_vs_{variant}"
                sets[key] = compare_folders(work / "pred" / name / variant, mine, ids, classes)
                print_table(f"{name}: {variant} vs ours {' '.join(options) or '(defaults)'}", sets[key])
    for run_name in [v for v, _ in variants] + [r for r, _ in RUNS]:
        result["cross_set"][run_name] = cross_set(work / "pred", ids, run_name)
    print(f"\nthick_last (transposed back) vs aniso, per pipeline: {result['cross_set']}", file=sys.stderr)
    for key in result["sets"]["aniso"]:
        per_set = [result["sets"][name][key] for name in raws]
        result[key] = {"dice": merge(per_set),
                            "dice_case_min": {c: min((r["dice_case_min"][c] for r in per_set
                                                      if r["dice_case_min"][c] is not None), default=None)
                                              for c in per_set[0]["dice"]},
                            "voxels_differing": sum(r["voxels_differing"] for r in per_set),
                            "geometry_mismatches": sum(r["geometry_mismatches"] for r in per_set),
                            "by_set": {name: result["sets"][name][key]["dice"] for name in raws}}
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="cases predicted per phantom set (default 3)")
    parser.add_argument("--train-cases", type=int, default=8, help="cases trained on (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: train a small one)")
    parser.add_argument("--train-seconds", type=float, default=None,
                        help="cap on the training time (default: none; 1,200 iterations)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of {TRAINING['iterations_per_epoch']} iterations (default {TRAINING['epochs']})")
    parser.add_argument("--work", type=Path, default=None, help="keep the work folder here (default: temporary)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each pipeline (default 1: on a "
                        "shared machine 2 OpenMP threads ran a training step 12x slower than 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.work:
        args.work.mkdir(parents=True)
        result = run(args.cases, args.train_cases, args.seed, args.model, args.train_seconds, args.threads, args.work,
                     args.epochs)
    else:
        with tempfile.TemporaryDirectory(prefix="rcsegnext-parity-inf-") as tmp:
            result = run(args.cases, args.train_cases, args.seed, args.model, args.train_seconds, args.threads,
                         Path(tmp), args.epochs)
    return finish(result, lambda key: "_vs_" in key or key == "cross_set", args.json)


if __name__ == "__main__":
    raise SystemExit(main())
