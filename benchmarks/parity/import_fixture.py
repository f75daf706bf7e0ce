"""Writes Testing/data/nnunet_results/ (the fixture of Testing/test_import_nnunet.py) with nnU-Net v2.1.2's own code,
and checks that a checkpoint written by nnU-Net's own `save_checkpoint` loads with `weights_only=True` through
RCSegNeXtCore.nnunet_import. Runs in the parity environment (environment.py); the test itself needs no nnU-Net:

    python -m benchmarks.parity.import_fixture [--write] [--json OUT.json]

- plans.json and dataset.json: nnU-Net's fingerprint extractor and ExperimentPlanner on 3 phantom cases at the
  paper's Dataset A geometry (16 x 256 x 256 at [4.0, 0.875, 0.875] mm), as `nnUNetv2_plan_and_preprocess -d ID`
  writes them (copied into the results folder as nnU-Net's trainer does);
- checkpoint_structure.json: the keys and value types of a checkpoint saved by nnUNetTrainer.save_checkpoint
  (a trainer named nnUNetTrainerRCSegNeXt whose network holds the official reference weights, after one epoch's
  logging as nnU-Net does it), so the test can build the same structure from the reference .npz in ../shared.

Without --write it only checks (the weights_only load of the real checkpoint and that the committed fixture is what
nnU-Net writes today).
"""
from __future__ import annotations

import argparse
import json
import os
import pickletools
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "Testing" / "data" / "nnunet_results" / "nnUNetTrainerRCSegNeXt__nnUNetPlans__3d_fullres"
REFERENCE = REPO.parent / "shared" / "reference" / "official_rcsegnext_reference.npz"
DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_RCSegNeXtImport"


def plan_with_nnunet(work: Path) -> Dict[str, Path]:
    """nnU-Net's fingerprint + plan of a 3-case phantom at Dataset A's geometry; the files it wrote."""
    from benchmarks.parity.preprocessing import nnunet_folders
    folders = nnunet_folders(work)
    from RCSegNeXtCore.phantom import make_phantom_dataset
    make_phantom_dataset(folders["nnUNet_raw"] / DATASET_NAME, 3, seed=0, size="full", shape=(16, 256, 256),
                         spacing=(4.0, 0.875, 0.875), progress=False)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    extract_fingerprints([DATASET_ID], num_processes=2, check_dataset_integrity=True, verbose=False)
    plan_experiments([DATASET_ID])
    pre = folders["nnUNet_preprocessed"] / DATASET_NAME
    return {"plans.json": pre / "nnUNetPlans.json", "dataset.json": pre / "dataset.json"}


def _holder(state: Dict[str, np.ndarray]):
    """A torch module whose state_dict is exactly the official reference weights (nested by the dotted names)."""
    import torch
    root = torch.nn.Module()
    for key, value in state.items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(name, torch.nn.Parameter(torch.from_numpy(np.array(value))))
    return root


def save_real_checkpoint(plans_path: Path, dataset_json_path: Path, out: Path) -> Path:
    """A checkpoint written by nnU-Net's own nnUNetTrainer.save_checkpoint after one epoch's logging."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    with np.load(REFERENCE) as data:
        state = {k: data[k] for k in data.files if not k.startswith("__")}

    class nnUNetTrainerRCSegNeXt(nnUNetTrainer):           # the official trainer's name; its network is built here
        @staticmethod
        def build_network_architecture(*args, **kwargs):
            return _holder(state)

        def configure_optimizers(self):
            # nnU-Net's SGD; its PolyLRScheduler passes `verbose`, which torch >= 2.7 no longer takes, so the poly
            # rule is applied by hand (the scheduler is not part of a checkpoint)
            optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                        momentum=0.99, nesterov=True)

            class Poly:
                def step(self, epoch):
                    for group in optimizer.param_groups:
                        group["lr"] = trainer.initial_lr * (1 - epoch / trainer.num_epochs) ** 0.9
            return optimizer, Poly()

    plans = json.loads(plans_path.read_text())
    dataset_json = json.loads(dataset_json_path.read_text())
    trainer = nnUNetTrainerRCSegNeXt(plans, "3d_fullres", 0, dataset_json, True, torch.device("cpu"))
    trainer.initialize()
    trainer.inference_allowed_mirroring_axes = (0, 1, 2)  # what 3d_fullres training sets (all axes mirrored)
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    for p in trainer.network.parameters():               # one optimiser step: momentum buffers in its state
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    trainer.on_train_epoch_end([{"loss": np.array(0.9)}, {"loss": np.array(0.8)}])
    trainer.on_validation_epoch_end([{"loss": np.array(0.7), "tp_hard": np.array([10.0, 2.0]),
                                      "fp_hard": np.array([1.0, 1.0]), "fn_hard": np.array([2.0, 1.0])}])
    trainer.logger.log("epoch_end_timestamps", 1.0, trainer.current_epoch)
    trainer._best_ema = trainer.logger.my_fantastic_logging["ema_fg_dice"][-1]
    trainer.current_epoch += 1
    path = out / "fold_0" / "checkpoint_final.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(path))
    return path


def pickle_globals(path: Path) -> List[str]:
    """The classes and functions a torch checkpoint's pickle names (what a weights_only load must allow)."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        data = archive.read(name)
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
    return sorted(found)


def describe(value: Any, depth: int = 0) -> Any:
    """The structure of a loaded checkpoint: dict keys with the type of each value (lists: their first item)."""
    import torch
    if isinstance(value, dict) and len(value) > 12:         # weights, optimiser state: their size and first entry
        key = next(iter(value))
        return {"entries": len(value), "first": {str(key): describe(value[key], depth + 1)}}
    if isinstance(value, dict) and depth < 3:
        return {str(k): describe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and depth < 4:
        return [type(value).__name__, describe(value[0], depth + 1)]
    if isinstance(value, torch.Tensor):
        return "tensor"
    return type(value).__module__ + "." + type(value).__name__


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="(re)write the fixture in Testing/data/nnunet_results")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from RCSegNeXtCore.nnunet_import import load_nnunet_checkpoint
    with tempfile.TemporaryDirectory(prefix="rcsegnext-import-fixture-") as tmp:
        work = Path(tmp)
        files = plan_with_nnunet(work)
        results = work / "results" / FIXTURE.name
        results.mkdir(parents=True)
        for name, path in files.items():
            shutil.copy(path, results / name)
        checkpoint = save_real_checkpoint(results / "plans.json", results / "dataset.json", results)
        loaded = load_nnunet_checkpoint(checkpoint)          # weights_only=True with the allow-list
        structure = {"saved_by": "nnunetv2 2.1.2 nnUNetTrainer.save_checkpoint", "keys": describe(loaded),
                     "pickle_globals": pickle_globals(checkpoint)}
        plans_now = json.loads(files["plans.json"].read_text())
        report = {"weights_only_load": "ok", "keys": sorted(loaded), "pickle_globals": structure["pickle_globals"],
                  "fixture_up_to_date": (FIXTURE / "plans.json").is_file()
                  and json.loads((FIXTURE / "plans.json").read_text()) == plans_now}
        if args.write:
            FIXTURE.mkdir(parents=True, exist_ok=True)
            for name, path in files.items():
                shutil.copy(path, FIXTURE / name)
            (FIXTURE / "checkpoint_structure.json").write_text(json.dumps(structure, indent=1) + "\n")
            report["written"] = str(FIXTURE)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
