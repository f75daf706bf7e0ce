"""On-disk cache of preprocessed cases, read by training without decoding whole volumes.

Per case: `CASE.npy` (float32 (C, z, y, x), memory-mappable), `CASE_seg.npy` (int8 (z, y, x)) and `CASE.json`
(properties). Every file is written to a temporary name and renamed; `CASE.json` comes last, so a case counts as
done only when all its files are complete (resumable: done cases are skipped, unless their source files changed). The folder keeps a copy of the
plans.json it was made with; a plan whose preprocessing differs is refused (or, with overwrite, redone).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from RCSegNeXtCore.errors import DatasetError, PlanError
from RCSegNeXtCore.files import atomic_open, atomic_write_json
from RCSegNeXtCore.plans import Plans
from RCSegNeXtCore.progress import ProgressBar

# the plan fields that change the preprocessed arrays (the network width, batch size, ... do not)
PREPROCESSING_FIELDS = ("target_spacing", "transpose_forward", "normalization", "crop_to_nonzero", "resampling",
                        "labels", "channel_names", "intensity_properties")
# resampling settings that only act after the network (how a prediction goes back to the original grid)
RESTORE_SETTINGS = ("restore", "restore_order", "restore_order_thick_axis")
_RESERVED = {"plans", "dataset"}


def map_over(function: Callable, items: Sequence, workers: int = 1, description: str = "",
             progress: bool = True) -> List[Any]:
    """`[function(item) for item in items]`, over `workers` spawned processes when > 1 (results in input order)."""
    results: List[Any] = [None] * len(items)
    with ProgressBar(len(items), description, enabled=progress, unit="case") as bar:
        if workers <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                results[i] = function(item)
                bar.update(1)
            return results
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=get_context("spawn"),
                                 initializer=_limit_threads) as pool:
            futures = {pool.submit(function, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
    return results


def _limit_threads() -> None:
    import torch
    torch.set_num_threads(1)  # one process per core is the parallelism


def preprocessing_signature(plans: Plans) -> Dict[str, Any]:
    """The plan fields that determine the cached arrays (dataset intensity statistics only matter for 'ct')."""
    data = plans.to_dict()
    signature = {name: data.get(name) for name in PREPROCESSING_FIELDS}
    signature["resampling"] = {k: v for k, v in data["resampling"].items() if k not in RESTORE_SETTINGS}
    if "ct" not in plans.normalization:
        signature["intensity_properties"] = None
    return signature


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_open(path) as handle:
        np.save(handle, array)


def case_files(out_dir: Path, case_id: str) -> Tuple[Path, Path, Path]:
    return out_dir / f"{case_id}.npy", out_dir / f"{case_id}_seg.npy", out_dir / f"{case_id}.json"


def write_preprocessed_case(out_dir: Path, case_id: str, data: np.ndarray, label: Optional[np.ndarray],
                            properties: dict) -> None:
    data_path, seg_path, json_path = case_files(out_dir, case_id)
    if json_path.exists():
        json_path.unlink()                                    # redoing a case: not done until rewritten
    _save_npy(np.ascontiguousarray(data, dtype=np.float32), data_path)
    if label is not None:
        _save_npy(np.ascontiguousarray(label, dtype=np.int8), seg_path)
    elif seg_path.exists():
        seg_path.unlink()
    atomic_write_json(json_path, {**properties, "case_id": case_id}, indent=None)  # last: marks the case as done


def source_signature(case) -> List[List[Any]]:
    """[name, bytes, newest mtime] of each input file (DICOM folders: summed over their files), to notice when
    a case's images or label were replaced after it was cached."""
    signature = []
    for path in [*case.image_paths, *([case.label_path] if case.label_path else [])]:
        path = Path(path)
        files = [f for f in path.iterdir() if f.is_file()] if path.is_dir() else [path]
        stats = [f.stat() for f in files]
        signature.append([path.name, sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats),
                                                                           default=0)])
    return signature


def _is_current(out_dir: Path, case) -> bool:
    """The case is complete in the cache and was made from the files the dataset holds now."""
    try:
        properties = json.loads(case_files(out_dir, case.case_id)[2].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return properties.get("source_files") == source_signature(case)


def _preprocess_one(job: Tuple[Any, dict, str]) -> str:
    """Worker: read one case, preprocess it, write it (module-level so spawned processes can import it)."""
    from RCSegNeXtCore.data.dataset import read_case
    from RCSegNeXtCore.data.preprocess import preprocess_case
    case, plans_dict, out_dir = job
    plans = Plans.from_dict(plans_dict)
    image, label = read_case(case, labels=plans.labels.values())
    try:
        result = preprocess_case(image, plans, None if label is None else label.array)
    except DatasetError as exc:
        raise DatasetError(f"case {case.case_id}: {exc}") from None
    write_preprocessed_case(Path(out_dir), case.case_id, result.data, result.label,
                            {**result.properties, "source_files": source_signature(case)})
    return case.case_id


def _check_plans(out_dir: Path, plans: Plans, overwrite: bool) -> None:
    """Refuse (or clear, with `overwrite`) a cache made with a plan whose preprocessing differs."""
    saved_path = out_dir / "plans.json"
    if not saved_path.is_file():
        return
    saved = preprocessing_signature(Plans.load(saved_path))
    wanted = preprocessing_signature(plans)
    changed = [name for name in PREPROCESSING_FIELDS if saved[name] != wanted[name]]
    if not changed:
        return
    details = "; ".join(f"{name}: {saved[name]} (cached) vs {wanted[name]} (now)" for name in changed)
    if not overwrite:
        raise PlanError(f"{out_dir} was preprocessed with a different plan ({details}); use another output "
                        "folder, or overwrite=True / `rcsegnext preprocess --overwrite` to redo every case")
    for case_id in list_preprocessed_cases(out_dir):
        for path in case_files(out_dir, case_id):
            if path.exists():
                path.unlink()


def preprocess_dataset(dataset_or_folder, plans: Plans | str | os.PathLike, out_dir: str | os.PathLike,
                       workers: int = 1, overwrite: bool = False, progress: bool = True) -> List[str]:
    """Preprocess every training case of a dataset into `out_dir` (skipping cases already done).

    Returns the ids of all cases now in the cache, in dataset order.
    """
    from RCSegNeXtCore.data.dataset import load_dataset
    dataset = load_dataset(dataset_or_folder) if isinstance(dataset_or_folder, (str, os.PathLike)) \
        else dataset_or_folder
    plans = plans if isinstance(plans, Plans) else Plans.load(plans)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if set(dataset.labels.items()) != set(plans.labels.items()):
        raise PlanError(f"dataset {dataset.root} has labels {dataset.labels} but the plan has {plans.labels}; "
                        "make the plan from this dataset (`rcsegnext plan`)")
    for case in dataset.cases:
        if case.case_id in _RESERVED or case.case_id.endswith("_seg"):
            raise DatasetError(f"case id '{case.case_id}' clashes with the cache's file names; rename the case")
    _check_plans(out, plans, overwrite)
    plans.save(out / "plans.json")
    atomic_write_json(out / "dataset.json", dataset.dataset_json, indent=None)
    done = set(list_preprocessed_cases(out))
    todo = [case for case in dataset.cases if case.case_id not in done or not _is_current(out, case)]
    plans_dict = plans.to_dict()
    map_over(_preprocess_one, [(case, plans_dict, str(out)) for case in todo], workers, "preprocess", progress)
    return [case.case_id for case in dataset.cases]


def list_preprocessed_cases(out_dir: str | os.PathLike) -> List[str]:
    """Ids of the complete cases in a cache folder (those whose properties file was written), sorted."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(p.stem for p in out.glob("*.json")
                  if not p.name.startswith(".") and p.stem not in _RESERVED and (out / f"{p.stem}.npy").is_file())


def load_preprocessed_case(out_dir: str | os.PathLike, case_id: str,
                           mmap: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any]]:
    """(data float32 (C, z, y, x), label int8 (z, y, x) or None, properties) of a cached case; memory-mapped
    (read-only) by default so training reads patches without loading whole volumes."""
    out = Path(out_dir)
    data_path, seg_path, json_path = case_files(out, case_id)
    if not json_path.is_file() or not data_path.is_file():
        raise DatasetError(f"{out}: case '{case_id}' is not preprocessed (no complete {json_path.name}); "
                           "run `rcsegnext preprocess` first")
    properties = json.loads(json_path.read_text(encoding="utf-8"))
    mode = "r" if mmap else None
    data = np.load(data_path, mmap_mode=mode)
    label = np.load(seg_path, mmap_mode=mode) if seg_path.is_file() else None
    return data, label, properties
