"""Parity with the official pipeline (nnU-Net v2.1.2 + batchgenerators v1): runs each part of benchmarks/parity/ in
its reference environment (created on first use, benchmarks/parity/environment.py: nnunetv2 2.1.2 for every part, the
latest nnunetv2 for the headline inference check) and prints ONE final JSON line with every part's headline numbers
(docs/nnunet_parity.md).

    python benchmarks/nnunet_parity.py                    # every part
    python benchmarks/nnunet_parity.py --parts sampler    # some of them
    python benchmarks/nnunet_parity.py --train            # also nnU-Net's trainer vs ours (~25 min on 2 CPU cores)
    python benchmarks/nnunet_parity.py --env /path/venv   # an existing nnunetv2 2.1.2 environment
    python benchmarks/nnunet_parity.py --parts inference --model MODEL_DIR   # inference with given weights

A new part: one `Part` in PARTS (its module runs inside the environment as `python -m MODULE ARGS --json FILE`;
`summarize` turns that JSON into the keys of the final line).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.parity import environment  # noqa: E402


@dataclass
class Part:
    module: str
    args: Callable[[argparse.Namespace], List[str]]
    summarize: Callable[[dict], Dict[str, object]]
    reference: str = "2.1.2"       # the environment it runs in (environment.REFERENCES)


def inference_weights(args: argparse.Namespace, reference: str) -> List[str]:
    """`--model` for the inference runs: the user's, else the one the first run trains into the shared work folder."""
    if args.model:
        return ["--model", str(args.model.resolve())]
    trained = args.inference_work / "latest" / "model"
    if reference == "latest" or not (trained / "plans.json").is_file():
        return ["--work", str(args.inference_work / reference)]
    return ["--model", str(trained), "--work", str(args.inference_work / reference)]


PARTS: Dict[str, Part] = {
    "augmentation": Part(
        "benchmarks.parity.augmentation",
        lambda a: ["--draws", str(a.draws), "--seed", str(a.seed)] + (["--sensitivity"] if a.sensitivity else []),
        lambda r: {"augmentation_tests_failed": r["confirmed"], "augmentation_tests": r["tests"],
                   "augmentation_tests_failed_first_stage": r["failed"],
                   "augmentation_tests_failed_holm": r["failed_holm"],
                   "augmentation_checks_failed": r["checks_failed"], "augmentation_draws": r["draws"],
                   **({"augmentation_0.1_variants_tests_failed": r["sensitivity"]["failed"]}
                      if "sensitivity" in r else {})}),
    "sampler": Part(
        "benchmarks.parity.sampler", lambda a: [],
        lambda r: {"sampler_rule_mismatches": r["sampler_rule_mismatches"]}),
    "preprocessing": Part(
        "benchmarks.parity.preprocessing", lambda a: ["--cases", str(a.preprocess_cases)],
        lambda r: {k: r[k] for k in ("preprocess_shape_mismatches", "preprocess_spacing_mismatches",
                                     "preprocess_fingerprint_mismatches", "preprocess_image_max_abs_diff",
                                     "preprocess_label_agreement_min", "preprocess_label_voxels_differing",
                                     "preprocess_thick_last_vs_aniso_max_abs_diff")}),
    # nnUNetPredictor as shipped by the newest release (the headline) and by 2.1.2 (the paper's era, with its two
    # defects removed one at a time); one set of weights, trained in the first of the two runs
    "inference": Part(
        "benchmarks.parity.inference",
        lambda a: ["--cases", str(a.inference_cases), *inference_weights(a, "latest")],
        lambda r: {"inference_reference": f"nnunetv2 {r['nnunetv2']}",
                   "inference_label_agreement": r["nnunet_tiles_tta_vs_nnunet"]["dice"],
                   "inference_label_agreement_case_min": r["nnunet_tiles_tta_vs_nnunet"]["dice_case_min"],
                   "inference_label_agreement_by_set": r["nnunet_tiles_tta_vs_nnunet"]["by_set"],
                   "inference_voxels_differing": r["nnunet_tiles_tta_vs_nnunet"]["voxels_differing"],
                   "inference_geometry_mismatches": r["nnunet_tiles_tta_vs_nnunet"]["geometry_mismatches"],
                   "inference_label_agreement_default_tiles": r["default_tiles_tta_vs_nnunet"]["dice"],
                   "inference_label_agreement_defaults_no_tta": r["default_vs_nnunet"]["dice"],
                   "inference_thick_last_vs_aniso_voxels_differing": {k: v["voxels_differing"]
                                                                      for k, v in r["cross_set"].items()}},
        reference="latest"),
    "inference_2.1.2": Part(
        "benchmarks.parity.inference",
        lambda a: ["--cases", str(a.inference_cases), *inference_weights(a, "2.1.2")],
        lambda r: {"inference_2.1.2_label_agreement": r["nnunet_tiles_tta_vs_nnunet"]["dice"],
                   "inference_2.1.2_label_agreement_by_set": r["nnunet_tiles_tta_vs_nnunet"]["by_set"],
                   "inference_2.1.2_voxels_differing": r["nnunet_tiles_tta_vs_nnunet"]["voxels_differing"],
                   # its export's spacing transposed as later releases pass it (float16 sums kept)
                   "inference_2.1.2_export_fixed_label_agreement":
                       r["nnunet_tiles_tta_vs_nnunet_export_fixed"]["dice"],
                   "inference_2.1.2_export_fixed_voxels_differing":
                       r["nnunet_tiles_tta_vs_nnunet_export_fixed"]["voxels_differing"],
                   # ... and its sums and Gaussian in float32
                   "inference_2.1.2_patched_label_agreement": r["nnunet_tiles_tta_vs_nnunet_f32"]["dice"],
                   "inference_2.1.2_patched_voxels_differing": r["nnunet_tiles_tta_vs_nnunet_f32"]["voxels_differing"],
                   "inference_2.1.2_thick_last_vs_aniso_voxels_differing": {k: v["voxels_differing"]
                                                                            for k, v in r["cross_set"].items()}}),
    # only with --train (about 25 minutes on 2 shared CPU cores): both trainers, the held-out Dice tables per seed
    "training": Part(
        "benchmarks.parity.training",
        lambda a: ["--seeds", *map(str, a.train_seeds)] + (["--work", str(a.train_work)] if a.train_work else []),
        lambda r: {"training_dice": r["dice"], "training_comparison": r["comparison"],
                   "training_within_twice_seed_spread": r["within"], "training_budget": r["budget"],
                   "training_batch_dice": r["batch_dice"], "training_loss_check": r["loss_check"],
                   "training_batch_dice_rule_agrees": all(row["agree"] for row in r.get("batch_dice_rule", []))}),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=[p for p in PARTS if p != "training"])
    parser.add_argument("--train", action="store_true", help="also the training part: nnU-Net's trainer and ours "
                        "side by side on the phantom (about 25 minutes on 2 shared CPU cores)")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1], help="training: seeds (default 0 1)")
    parser.add_argument("--train-work", type=Path, default=None, help="training: keep its work folder here (data, "
                        "both preprocessings, run folders, predictions; default: a temporary folder, removed)")
    parser.add_argument("--env", type=Path, default=None, help="the nnunetv2 2.1.2 environment's folder (default: "
                        f"$RCSEGNEXT_PARITY_ENV or {environment.env_dir('2.1.2')})")
    parser.add_argument("--env-latest", type=Path, default=None, help="the latest nnunetv2's environment folder "
                        f"(default: $RCSEGNEXT_PARITY_ENV_LATEST or {environment.env_dir('latest')})")
    parser.add_argument("--draws", type=int, default=10000, help="augmentation: samples per transform and side")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--sensitivity", action="store_true",
                        help="augmentation: also test RCSegNeXt 0.1's variants (they should fail)")
    parser.add_argument("--preprocess-cases", type=int, default=8, help="preprocessing: cases per phantom set")
    parser.add_argument("--inference-cases", type=int, default=3, help="inference: cases predicted per phantom set")
    parser.add_argument("--model", type=Path, default=None,
                        help="inference: an existing model folder (default: train a small one, 2-4 min)")
    parser.add_argument("--json", type=Path, default=None, help="also write every part's full result here")
    args = parser.parse_args(argv)
    if args.train and "training" not in args.parts:
        args.parts.append("training")
    if "inference" in args.parts and "inference_2.1.2" in args.parts:
        args.parts.remove("inference_2.1.2")      # after the run that trains the weights
        args.parts.insert(args.parts.index("inference") + 1, "inference_2.1.2")
    pythons = {reference: environment.ensure(args.env if reference == "2.1.2" else args.env_latest,
                                             reference=reference)
               for reference in sorted({PARTS[name].reference for name in args.parts})}
    summary: Dict[str, object] = {"reference": {r: environment.installed(p) for r, p in pythons.items()}}
    full = {}
    work = tempfile.TemporaryDirectory(prefix="rcsegnext-parity-")
    args.inference_work = Path(work.name)
    for name in args.parts:
        part = PARTS[name]
        start = time.perf_counter()
        print(f"== {name} (nnunetv2 {part.reference} environment)", file=sys.stderr, flush=True)
        result = environment.run(part.module, part.args(args), python=pythons[part.reference])
        full[name] = result
        summary.update(part.summarize(result))
        summary[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
    work.cleanup()
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "parts": full}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
