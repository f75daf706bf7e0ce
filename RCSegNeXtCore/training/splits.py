"""Cross-validation splits in nnU-Net's `splits_final.json` format: a list of {"train": [...], "val": [...]}.

The default 5-fold split reproduces nnU-Net's (sorted case ids, shuffled with seed 12345, folds as sklearn's KFold
cuts them), so a split made here and one made by nnU-Net for the same cases agree. A user's existing file is used
as is. Fold "all" (nnU-Net's meaning) trains on every case and has no validation cases.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from RCSegNeXtCore.errors import DatasetError
from RCSegNeXtCore.files import atomic_write_json

Split = Dict[str, List[str]]
Fold = Union[int, str]


def make_splits(case_ids: Sequence[str], num_folds: int = 5, seed: int = 12345) -> List[Split]:
    """Deterministic k-fold split; fewer cases than folds is refused."""
    keys = sorted(case_ids)
    if len(set(keys)) != len(keys):
        raise DatasetError("duplicate case ids in the dataset; every case needs a unique id")
    if num_folds < 2:
        raise DatasetError(f"cross-validation needs at least 2 folds, got {num_folds}")
    if len(keys) < num_folds:
        raise DatasetError(f"the dataset has {len(keys)} case(s), fewer than the {num_folds} folds asked for; "
                           f"add cases, choose --num-folds {max(2, len(keys))} or fewer, or train with --fold all")
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(num_folds, len(keys) // num_folds)
    sizes[: len(keys) % num_folds] += 1
    splits, start = [], 0
    for size in sizes:
        val_mask = np.zeros(len(keys), dtype=bool)
        val_mask[order[start:start + size]] = True
        start += size
        splits.append({"train": [keys[i] for i in np.flatnonzero(~val_mask)],
                       "val": [keys[i] for i in np.flatnonzero(val_mask)]})
    return splits


def save_splits(splits: List[Split], path: str | os.PathLike) -> Path:
    return atomic_write_json(path, splits)


def load_splits(path: str | os.PathLike, case_ids: Sequence[str] | None = None) -> List[Split]:
    """Read and check an nnU-Net splits file (ours or a user's); every id must be a case of the dataset."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the splits file ({exc})") from None
    if not isinstance(splits, list) or not all(isinstance(s, dict) and isinstance(s.get("train"), list)
                                               and isinstance(s.get("val"), list) for s in splits):
        raise DatasetError(f"{path}: expected nnU-Net's format, a list of {{\"train\": [...], \"val\": [...]}}")
    if case_ids is not None:
        known = set(case_ids)
        for k, split in enumerate(splits):
            unknown = sorted(set(split["train"] + split["val"]) - known)
            if unknown:
                raise DatasetError(f"{path}: fold {k} names case(s) not in the dataset: {', '.join(unknown[:5])}"
                                   "; delete the file to make a new split or fix the ids")
    return splits


def get_or_create_splits(path: str | os.PathLike, case_ids: Sequence[str], num_folds: int = 5) -> List[Split]:
    """Use `path` when it exists (a user's nnU-Net file, or a previous run's), else make and save a new split."""
    path = Path(path)
    if path.is_file():
        return load_splits(path, case_ids)
    splits = make_splits(case_ids, num_folds)
    save_splits(splits, path)
    return splits


def parse_fold(value: str | int) -> Fold:
    """'all' or a non-negative integer."""
    if str(value).lower() == "all":
        return "all"
    try:
        fold = int(value)
    except ValueError:
        raise DatasetError(f"fold must be an integer (0..4) or 'all', got {value!r}") from None
    if fold < 0:
        raise DatasetError(f"fold must be >= 0, got {fold}")
    return fold


def cases_for_fold(splits: List[Split] | None, fold: Fold, case_ids: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(train, val) case ids; fold 'all' = every case for training, none for validation."""
    if fold == "all":
        return sorted(case_ids), []
    assert splits is not None
    if not 0 <= int(fold) < len(splits):
        raise DatasetError(f"fold {fold} does not exist: the split has folds 0..{len(splits) - 1}")
    split = splits[int(fold)]
    return list(split["train"]), list(split["val"])


def fold_name(fold: Fold) -> str:
    return f"fold_{fold}"
