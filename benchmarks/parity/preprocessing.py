"""Preprocessing parity: nnU-Net v2.1.2's fingerprint, plan and 3d_fullres preprocessed arrays against RCSegNeXt's
(compute_fingerprint, make_plans, preprocess_case), case by case, on the phantom sets of phantom_sets.py (mixed slice
thickness; the same cases stored thick axis last). Runs in the parity environment (environment.py):

    python -m benchmarks.parity.preprocessing --json OUT.json [--cases 8] [--variant-0.1]

Per case: the preprocessed shapes (nnU-Net's after its transpose), the spacing they are on, the image's max |delta|
(z-scored units) and the label agreement (fraction of equal voxels, nnU-Net's -1 outside the non-zero mask read as
background; Dice per class). Per set: the fingerprint's per-case spacings and cropped shapes, the plan's target
spacing and transpose. `--variant-0.1` also preprocesses with RCSegNeXt 0.1's choices (plain median spacing, no
transpose, torch bicubic), to show what the plan fields change.

The nnU-Net side only runs its public API (extract_fingerprints, plan_experiments, preprocess) in temporary
nnUNet_raw / nnUNet_preprocessed folders.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.parity import phantom_sets  # noqa: E402

DATASET_IDS = {"aniso": 901, "thick_last": 902}
CONFIGURATION = "3d_fullres"
ATOL_SPACING = 1e-6


# -- nnU-Net ---------------------------------------------------------------------------------------------------------
def nnunet_folders(root: Path) -> Dict[str, Path]:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results under `root`, exported to the environment (nnunetv2.paths
    reads them when first imported, so call this before importing nnunetv2)."""
    folders = {name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    return folders


def dataset_folder_name(set_name: str) -> str:
    return f"Dataset{DATASET_IDS[set_name]}_Parity{set_name.title().replace('_', '')}"


def write_raw(set_name: str, raw_root: Path, num_cases: int, seed: int) -> Path:
    return phantom_sets.write_set(set_name, raw_root / dataset_folder_name(set_name), num_cases, seed)


def nnunet_plan_and_preprocess(dataset_id: int, processes: int = 2, preprocess: bool = True) -> None:
    """nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres, through its Python API."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess as run_preprocess)
    extract_fingerprints([dataset_id], num_processes=processes, check_dataset_integrity=True, clean=True,
                         verbose=False)
    plan_experiments([dataset_id])
    if preprocess:
        run_preprocess([dataset_id], configurations=[CONFIGURATION], num_processes=[processes], verbose=False)


def nnunet_results(preprocessed: Path) -> Dict[str, Any]:
    """Fingerprint, plans and {case: (data, seg)} of one preprocessed nnU-Net dataset folder."""
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    fingerprint = json.loads((preprocessed / "dataset_fingerprint.json").read_text())
    folder = preprocessed / plans["configurations"][CONFIGURATION]["data_identifier"]
    cases = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as arrays:
            cases[path.stem] = (arrays["data"].astype(np.float32), arrays["seg"][0].astype(np.int16))
    return {"plans": plans, "fingerprint": fingerprint, "cases": cases}


# -- ours ------------------------------------------------------------------------------------------------------------
def ours(raw: Path, variant: str = "official") -> Dict[str, Any]:
    """Our fingerprint, plans and {case: (data, label)}; variant "0.1": RCSegNeXt 0.1's choices."""
    from RCSegNeXtCore.data.dataset import load_dataset, read_case
    from RCSegNeXtCore.data.fingerprint import compute_fingerprint
    from RCSegNeXtCore.data.preprocess import preprocess_case
    from RCSegNeXtCore.planning import make_plans
    from RCSegNeXtCore.plans import V1_RESAMPLING, V1_VALUES
    dataset = load_dataset(raw)
    fingerprint = compute_fingerprint(dataset, workers=1, progress=False)
    overrides = {} if variant == "official" else dict(V1_VALUES, resampling=dict(V1_RESAMPLING))
    plans = make_plans(fingerprint, dataset, **overrides)
    cases = {}
    for case in dataset.cases:
        image, label = read_case(case, labels=plans.labels.values())
        result = preprocess_case(image, plans, label.array)
        cases[case.case_id] = (result.data, result.label.astype(np.int16), result.properties)
    return {"plans": plans, "fingerprint": fingerprint, "cases": cases}


# -- comparison ------------------------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def compare_case(theirs: tuple, mine: tuple, their_spacing: List[float]) -> Dict[str, Any]:
    data_t, seg_t = theirs
    data_o, seg_o, props = mine
    row: Dict[str, Any] = {"shape_nnunet": list(data_t.shape[1:]), "shape_ours": list(data_o.shape[1:]),
                           "spacing_nnunet": [round(float(s), 6) for s in their_spacing],
                           "spacing_ours": [round(float(s), 6) for s in props["target_spacing"]],
                           "outside_mask_voxels_nnunet": int((seg_t < 0).sum())}
    row["shape_match"] = row["shape_nnunet"] == row["shape_ours"]
    row["spacing_match"] = bool(np.allclose(their_spacing, props["target_spacing"], rtol=0, atol=ATOL_SPACING))
    if row["shape_match"]:
        seg_t = np.where(seg_t < 0, 0, seg_t)
        row["image_max_abs_diff"] = float(np.abs(data_t - data_o).max())
        row["image_mean_abs_diff"] = float(np.abs(data_t - data_o).mean())
        row["label_agreement"] = float((seg_t == seg_o).mean())
        row["label_voxels_differing"] = int((seg_t != seg_o).sum())
        row["dice"] = {str(c): dice(seg_t == c, seg_o == c) for c in (1, 2)}
    return row


def compare_set(set_name: str, theirs: Dict[str, Any], mine: Dict[str, Any]) -> Dict[str, Any]:
    plan_t = theirs["plans"]
    config = plan_t["configurations"][CONFIGURATION]
    plans = mine["plans"]
    fp_t, fp_o = theirs["fingerprint"], mine["fingerprint"]
    ids = sorted(theirs["cases"])
    fingerprint_rows = []
    for i, case_id in enumerate(ids):
        mine_case = next(c for c in fp_o["cases"] if c["case_id"] == case_id)
        fingerprint_rows.append({
            "case": case_id, "spacing_match": bool(np.allclose(fp_t["spacings"][i], mine_case["spacing"], atol=1e-6)),
            "shape_after_crop_match": list(fp_t["shapes_after_crop"][i]) == list(mine_case["shape_after_crop"])})
    cases = {case_id: compare_case(theirs["cases"][case_id], mine["cases"][case_id], config["spacing"])
             for case_id in ids}
    matched = [c for c in cases.values() if c["shape_match"]]
    return {
        "plan": {"target_spacing_nnunet": config["spacing"], "target_spacing_ours": plans.target_spacing,
                 "target_spacing_match": bool(np.allclose(config["spacing"], plans.target_spacing, atol=ATOL_SPACING)),
                 "transpose_nnunet": plan_t["transpose_forward"], "transpose_ours": plans.transpose_forward,
                 "median_spacing": fp_o["median_spacing"], "patch_nnunet": config["patch_size"],
                 "patch_ours": plans.patch_size, "normalization_nnunet": config["normalization_schemes"],
                 "dummy_2d_patch_nnunet": max(config["patch_size"]) / config["patch_size"][0] > 3,
                 "dummy_2d_patch_ours": max(plans.patch_size) / plans.patch_size[0] > 3,
                 "use_mask_for_norm_nnunet": config["use_mask_for_norm"], "normalization_ours": plans.normalization},
        "fingerprint_mismatches": sum(not (r["spacing_match"] and r["shape_after_crop_match"])
                                      for r in fingerprint_rows),
        "cases": cases,
        "shape_mismatches": sum(not c["shape_match"] for c in cases.values()),
        "spacing_mismatches": sum(not c["spacing_match"] for c in cases.values()),
        "shape_or_spacing_mismatches": sum(not (c["shape_match"] and c["spacing_match"]) for c in cases.values()),
        "image_max_abs_diff": max((c["image_max_abs_diff"] for c in matched), default=None),
        "label_agreement_min": min((c["label_agreement"] for c in matched), default=None),
        "label_voxels_differing": sum(c["label_voxels_differing"] for c in matched),
    }


def cross_set(first: Dict[str, Any], second: Dict[str, Any]) -> Dict[str, Any]:
    """The same cases preprocessed from two stored axis orders (one pipeline): shapes equal, image max |delta|,
    label voxels differing."""
    shapes, image, labels = 0, 0.0, 0
    for case_id, a in first["cases"].items():
        b = second["cases"][case_id]
        if a[0].shape != b[0].shape:
            shapes += 1
            continue
        image = max(image, float(np.abs(a[0] - b[0]).max()))
        labels += int((a[1] != b[1]).sum())
    return {"shape_mismatches": shapes, "image_max_abs_diff": image, "label_voxels_differing": labels}


def print_table(set_name: str, result: Dict[str, Any], out=sys.stderr) -> None:
    plan = result["plan"]
    print(f"\n{set_name}: target spacing nnU-Net {np.round(plan['target_spacing_nnunet'], 5).tolist()} ours "
          f"{np.round(plan['target_spacing_ours'], 5).tolist()}; transpose {plan['transpose_nnunet']} / "
          f"{plan['transpose_ours']}; fingerprint mismatches {result['fingerprint_mismatches']}", file=out)
    print(f"{'case':12s} {'shape nnU-Net':16s} {'shape ours':16s} {'image max|d|':>12s} {'label agree':>12s} "
          f"{'voxels':>7s} {'Dice 1':>7s} {'Dice 2':>7s}", file=out)
    for case_id, row in result["cases"].items():
        if not row["shape_match"]:
            print(f"{case_id:12s} {str(row['shape_nnunet']):16s} {str(row['shape_ours']):16s}  shape differs", file=out)
            continue
        d = row["dice"]
        print(f"{case_id:12s} {str(row['shape_nnunet']):16s} {str(row['shape_ours']):16s} "
              f"{row['image_max_abs_diff']:12.2e} {row['label_agreement']:12.6f} {row['label_voxels_differing']:7d} "
              f"{d['1'] if d['1'] is not None else float('nan'):7.4f} "
              f"{d['2'] if d['2'] is not None else float('nan'):7.4f}", file=out)


def run(num_cases: int, seed: int, processes: int, variant_01: bool, work: Path) -> Dict[str, Any]:
    folders = nnunet_folders(work)
    result: Dict[str, Any] = {"cases_per_set": num_cases, "sets": {}, "seconds": {}}
    variants: Dict[str, Any] = {}
    kept: Dict[str, Any] = {}
    for set_name in phantom_sets.SETS:
        raw = write_raw(set_name, folders["nnUNet_raw"], num_cases, seed)
        start = time.perf_counter()
        nnunet_plan_and_preprocess(DATASET_IDS[set_name], processes)
        result["seconds"][f"nnunet_{set_name}"] = round(time.perf_counter() - start, 1)
        theirs = nnunet_results(folders["nnUNet_preprocessed"] / raw.name)
        start = time.perf_counter()
        mine = ours(raw)
        result["seconds"][f"ours_{set_name}"] = round(time.perf_counter() - start, 1)
        result["sets"][set_name] = compare_set(set_name, theirs, mine)
        kept[set_name] = (theirs, mine)
        print_table(set_name, result["sets"][set_name])
        if variant_01:
            variants[set_name] = compare_set(set_name, theirs, ours(raw, "0.1"))
            print_table(f"{set_name} (RCSegNeXt 0.1 choices)", variants[set_name])
    # row 9: the thick-axis-last copy must give the arrays of the original, in each pipeline
    result["thick_last_vs_aniso"] = {side: cross_set(kept["aniso"][i], kept["thick_last"][i])
                                     for i, side in enumerate(("nnunet", "ours"))}
    print(f"\nthick_last vs aniso, per pipeline: {result['thick_last_vs_aniso']}", file=sys.stderr)
    sets = result["sets"].values()
    matched = [s for s in sets if s["image_max_abs_diff"] is not None]
    result.update({
        # cases whose preprocessed shape OR spacing differs (the headline, must be 0)
        "preprocess_shape_mismatches": sum(s["shape_or_spacing_mismatches"] for s in sets),
        "preprocess_shape_only_mismatches": sum(s["shape_mismatches"] for s in sets),
        "preprocess_spacing_mismatches": sum(s["spacing_mismatches"] for s in sets)
        + sum(not s["plan"]["target_spacing_match"] for s in sets),
        "preprocess_fingerprint_mismatches": sum(s["fingerprint_mismatches"] for s in sets),
        "preprocess_image_max_abs_diff": max((s["image_max_abs_diff"] for s in matched), default=None),
        "preprocess_label_agreement_min": min((s["label_agreement_min"] for s in matched), default=None),
        "preprocess_label_voxels_differing": sum(s["label_voxels_differing"] for s in matched),
        "preprocess_dummy_2d_patch": {"nnunet": all(s["plan"]["dummy_2d_patch_nnunet"] for s in sets),
                                      "ours": all(s["plan"]["dummy_2d_patch_ours"] for s in sets)},
        "preprocess_thick_last_vs_aniso_max_abs_diff": max(v["image_max_abs_diff"]
                                                           for v in result["thick_last_vs_aniso"].values()),
    })
    if variants:
        result["variant_0.1"] = {"sets": variants,
                                 "shape_mismatches": sum(s["shape_mismatches"] for s in variants.values()),
                                 "image_max_abs_diff": max((s["image_max_abs_diff"] for s in variants.values()
                                                            if s["image_max_abs_diff"] is not None), default=None)}
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8, help="cases per phantom set (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2, help="nnU-Net's worker processes (default 2)")
    parser.add_argument("--variant-0.1", dest="variant_01", action="store_true",
                        help="also compare RCSegNeXt 0.1's choices (median spacing, no transpose, bicubic)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rcsegnext-parity-pre-") as tmp:
        result = run(args.cases, args.seed, args.processes, args.variant_01, Path(tmp))
    return finish(result, lambda key: key.startswith("preprocess_"), args.json)


def finish(result: Dict[str, Any], headline, json_path: Optional[Path]) -> int:
    """A part's end: the keys `headline(key)` accepts as one JSON line on stderr, the whole result to `json_path`."""
    print(json.dumps({k: v for k, v in result.items() if headline(k)}), file=sys.stderr)
    if json_path:
        json_path.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
