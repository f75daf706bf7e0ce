"""Datasets in the nnU-Net v2 raw layout: `imagesTr/CASE_0000.ext`, `labelsTr/CASE.ext`, `imagesTs/`, dataset.json.

A case image may be any file `read_image` takes (.nii, .nii.gz, .nrrd, .mha, .mhd) or a DICOM series folder
(`imagesTr/CASE_0000/`). dataset.json must name the `labels` (nnU-Net requires them; `DEFAULT_LABELS` is what
`write_dataset_json` and the phantom write), the `channel_names` (or nnU-Net v1 `modality`) and the `file_ending`
(the format new files are written in; cases stored in another readable format are accepted as they are).
Nothing is silently fixed: layout problems are collected as `Problem`s; `load_dataset` refuses a dataset that has
any, and `rcsegnext check` (validation.py) lists them all together with the per-case content problems.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from RCSegNeXtCore.data.io import IMAGE_EXTENSIONS, Image, read_image, split_extension
from RCSegNeXtCore.data.problems import Problem, case_content_problems, relative_to_root
from RCSegNeXtCore.errors import DatasetError, ImageReadError
from RCSegNeXtCore.files import atomic_write_json
from RCSegNeXtCore.hashing import file_sha256
from RCSegNeXtCore.plans import DEFAULT_CHANNELS, DEFAULT_LABELS

CHANNEL_STEM = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_DATASET_HINT = "see the nnU-Net v2 dataset format; rcsegnext phantom writes an example dataset.json"


@dataclass(frozen=True)
class Case:
    """One case: an image per channel (`_0000`, `_0001`, ... in channel order) and its label file, if any."""

    case_id: str
    image_paths: List[Path]
    label_path: Optional[Path] = None


@dataclass
class Dataset:
    """A dataset folder in the nnU-Net v2 raw layout; `cases` are the training cases (imagesTr), sorted by id."""

    root: Path
    cases: List[Case]
    labels: Dict[str, int]
    channel_names: Dict[str, str]
    file_ending: str
    dataset_json: dict
    test_cases: List[Case] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_names(self) -> Dict[int, str]:
        """value -> name."""
        return {value: name for name, value in self.labels.items()}

    def case(self, case_id: str) -> Case:
        for case in self.cases + self.test_cases:
            if case.case_id == case_id:
                return case
        raise DatasetError(f"{self.root}: no case '{case_id}'; it has {', '.join(c.case_id for c in self.cases)}")


def _is_image_entry(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(IMAGE_EXTENSIONS)


def _visible_entries(folder: Path) -> List[Path]:
    # dotfiles are skipped: they include the half-written '.NAME.part.ext' files of io.write_sitk
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def parse_dataset_json(root: Path) -> Tuple[dict, Dict[str, int], Dict[str, str], str, List[Problem]]:
    """Read and check `root/dataset.json`: (raw dict, labels, channel_names, file_ending, problems)."""
    where, problems = "dataset.json", []
    path = root / "dataset.json"
    if not path.is_file():
        problems.append(Problem(where, f"{path} is missing",
                                f"write one with labels {json.dumps(DEFAULT_LABELS)}, channel_names "
                                f"{json.dumps(DEFAULT_CHANNELS)} and file_ending \".nii.gz\" ({_DATASET_HINT})"))
        return {}, {}, {}, "", problems
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("top level is not a JSON object")
    except ValueError as exc:
        problems.append(Problem(where, f"{path} is not valid JSON: {exc}", "fix the syntax (e.g. trailing commas)"))
        return {}, {}, {}, "", problems
    labels = _parse_labels(raw.get("labels"), problems)
    channel_names = _parse_channel_names(raw.get("channel_names", raw.get("modality")), problems)
    file_ending = raw.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending.lower().endswith(IMAGE_EXTENSIONS):
        problems.append(Problem(where, f"\"file_ending\" is {json.dumps(file_ending)}",
                                f"set it to one of {', '.join(IMAGE_EXTENSIONS)}"))
        file_ending = ""
    return raw, labels, channel_names, file_ending, problems


def _parse_labels(raw_labels, problems: List[Problem]) -> Dict[str, int]:
    """dataset.json's "labels": one integer 0..255 per name, the values consecutive from 0."""
    where, labels = "dataset.json", {}
    if not isinstance(raw_labels, dict) or not raw_labels:
        problems.append(Problem(where, "has no \"labels\" mapping (nnU-Net requires it)",
                                f"add e.g. \"labels\": {json.dumps(DEFAULT_LABELS)}"))
        return labels
    for name, value in raw_labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem(where, f"label '{name}' has value {json.dumps(value)}; region-based or "
                                    "non-integer labels are not supported",
                                    "give each label one integer value"))
        elif not 0 <= value <= 255:
            problems.append(Problem(where, f"label '{name}' has value {value}, outside 0..255",
                                    "renumber the labels 0, 1, 2, ..."))
        else:
            labels[str(name)] = value
    values = sorted(labels.values())
    if len(set(values)) != len(values):
        problems.append(Problem(where, f"labels {json.dumps(raw_labels)} give one value several names",
                                "give each value one name"))
    elif labels and values != list(range(len(values))):
        problems.append(Problem(where, f"label values {values} are not consecutive from 0",
                                f"renumber them 0..{len(values) - 1} (background must be 0), in the "
                                "label files too"))
    return labels


def _parse_channel_names(channels, problems: List[Problem]) -> Dict[str, str]:
    """dataset.json's "channel_names" (or nnU-Net v1's "modality"): keys "0", "1", ... in file-suffix order."""
    where = "dataset.json"
    if not isinstance(channels, dict) or not channels:
        problems.append(Problem(where, "has no \"channel_names\" mapping",
                                f"add e.g. \"channel_names\": {json.dumps(DEFAULT_CHANNELS)}"))
        return {}
    channel_names = {str(k): str(v) for k, v in channels.items()}
    keys = sorted(channel_names, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    if keys != [str(i) for i in range(len(keys))]:
        problems.append(Problem(where, f"channel_names keys {keys} are not \"0\", \"1\", ...",
                                "number the channels from \"0\" in file-suffix order (_0000, _0001, ...)"))
    return {k: channel_names[k] for k in keys}


def _scan_images(folder: Path, num_channels: int) -> Tuple[Dict[str, Dict[int, List[Path]]], List[Problem]]:
    """case id -> channel -> entries found (several = duplicate), plus naming problems."""
    found: Dict[str, Dict[int, List[Path]]] = {}
    problems: List[Problem] = []
    for entry in _visible_entries(folder):
        stem = entry.name if entry.is_dir() else split_extension(entry)[0]
        match = CHANNEL_STEM.match(stem)
        if not _is_image_entry(entry):
            problems.append(Problem(stem, f"{entry} is not an image file this tool reads",
                                    f"use one of {', '.join(IMAGE_EXTENSIONS)} or a DICOM series folder, "
                                    f"or move the file out of {folder.name}/"))
        elif match is None:
            suffix = "" if entry.is_dir() else split_extension(entry)[1]
            problems.append(Problem(stem, f"{entry} is not named CASE_XXXX (a 4-digit channel suffix)",
                                    f"rename it, e.g. {stem}_0000{suffix}"))
        else:
            found.setdefault(match["case"], {}).setdefault(int(match["channel"]), []).append(entry)
    for case_id, channels in sorted(found.items()):
        for channel, entries in sorted(channels.items()):
            if len(entries) > 1:
                problems.append(Problem(case_id, f"channel {channel} is stored {len(entries)} times: "
                                        + ", ".join(e.name for e in entries) + " (duplicate case id)",
                                        "keep one of them and remove or rename the others"))
            if num_channels and channel >= num_channels:
                problems.append(Problem(case_id, f"{entries[0].name} is channel {channel}, but dataset.json "
                                        f"declares {num_channels} channel(s)",
                                        "remove the file or add the channel to channel_names"))
        missing = [f"_{c:04d}" for c in range(num_channels) if c not in channels]
        if missing:
            problems.append(Problem(case_id, f"missing channel(s) {', '.join(missing)} of {num_channels} "
                                    "declared in dataset.json",
                                    f"add {case_id}{missing[0]} to {folder.name}/ or remove the case"))
    return found, problems


def _scan_labels(folder: Path) -> Tuple[Dict[str, List[Path]], List[Problem]]:
    found: Dict[str, List[Path]] = {}
    problems: List[Problem] = []
    for entry in _visible_entries(folder):
        stem = split_extension(entry)[0]
        if entry.is_dir() or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            problems.append(Problem(stem, f"{entry} is not a label image file",
                                    f"store labels as files ({', '.join(IMAGE_EXTENSIONS)}) or move it out of "
                                    "labelsTr/"))
        else:
            found.setdefault(stem, []).append(entry)
    for case_id, entries in sorted(found.items()):
        if len(entries) > 1:
            problems.append(Problem(case_id, "label is stored " f"{len(entries)} times: "
                                    + ", ".join(e.name for e in entries) + " (duplicate case id)",
                                    "keep one of them and remove the others"))
    return found, problems


def _first(entries: Mapping[int, List[Path]], num_channels: int) -> List[Path]:
    count = num_channels or (max(entries) + 1)
    return [entries[c][0] for c in range(count) if c in entries]


def scan_dataset(folder: str | os.PathLike) -> Tuple[Dataset, List[Problem]]:
    """Find all cases and every layout problem without reading voxels. Raises only when `folder` is no folder."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder; expected imagesTr/, labelsTr/ and dataset.json "
                           "(nnU-Net v2 raw layout)")
    raw, labels, channel_names, file_ending, problems = parse_dataset_json(root)
    num_channels = len(channel_names)

    images_tr, labels_tr = root / "imagesTr", root / "labelsTr"
    if not images_tr.is_dir():
        problems.append(Problem("imagesTr", f"{images_tr} is missing",
                                "put the training images there as CASE_0000.ext (one file per channel)"))
    if not labels_tr.is_dir():
        problems.append(Problem("labelsTr", f"{labels_tr} is missing", "put one label file CASE.ext per case there"))
    images, image_problems = _scan_images(images_tr, num_channels) if images_tr.is_dir() else ({}, [])
    label_files, label_problems = _scan_labels(labels_tr) if labels_tr.is_dir() else ({}, [])
    problems += image_problems + label_problems

    cases = []
    for case_id in sorted(images):
        label = label_files.get(case_id, [None])[0]
        if label is None and labels_tr.is_dir():
            problems.append(Problem(case_id, "has an image but no label in labelsTr/",
                                    f"add labelsTr/{case_id}{file_ending or '.nii.gz'} or move the case to "
                                    "imagesTs/"))
        cases.append(Case(case_id, _first(images[case_id], num_channels), label))
    for case_id in sorted(set(label_files) - set(images)):
        match = CHANNEL_STEM.match(case_id)
        if match and match["case"] in images:  # labelsTr/CASE_0000.ext: labels carry no channel suffix
            hint = f"rename it to labelsTr/{match['case']}{split_extension(label_files[case_id][0])[1]}"
        else:
            hint = f"add imagesTr/{case_id}_0000{file_ending or '.nii.gz'} or remove the label"
        problems.append(Problem(case_id, f"has a label ({label_files[case_id][0].name}) but no image in imagesTr/",
                                hint))
    if images_tr.is_dir() and not images:
        problems.append(Problem("imagesTr", f"{images_tr} holds no training case", "add CASE_0000.ext files"))
    num_training = raw.get("numTraining")
    if isinstance(num_training, int) and images and num_training != len(images):
        problems.append(Problem("dataset.json", f"numTraining is {num_training} but imagesTr/ holds "
                                f"{len(images)} case(s)", f"set \"numTraining\": {len(images)}"))

    test_cases = []
    images_ts = root / "imagesTs"
    if images_ts.is_dir():
        test_images, test_problems = _scan_images(images_ts, num_channels)
        problems += test_problems
        test_cases = [Case(cid, _first(test_images[cid], num_channels), None) for cid in sorted(test_images)]
    dataset = Dataset(root, cases, labels, channel_names, file_ending, raw, test_cases)
    return dataset, problems


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """The dataset in `folder`; raises DatasetError listing every layout problem (run `rcsegnext check`)."""
    dataset, problems = scan_dataset(folder)
    if problems:
        lines = "\n".join(f"  {p}" for p in relative_to_root(problems, dataset.root))
        raise DatasetError(f"{dataset.root}: {len(problems)} problem(s) in the dataset layout:\n{lines}\n"
                           f"(run `rcsegnext check {dataset.root}` for a full check of the voxels too)")
    return dataset


def read_case(case: Case, labels: Optional[Iterable[int]] = None) -> Tuple[Image, Optional[Image]]:
    """Read a case: image (C, z, y, x) float32 and label (z, y, x) uint8 (or None), on the same exact grid.

    Raises DatasetError naming the case and every problem (channel/label grid mismatch, non-finite voxels,
    non-integer label values, values outside `labels` when given): nothing is resampled or fixed here.
    """
    try:
        channels = [read_image(path) for path in case.image_paths]
        label = read_image(case.label_path) if case.label_path is not None else None
    except ImageReadError as exc:  # names the file; add the case
        raise DatasetError(f"case {case.case_id}: {exc}") from None
    if not channels:
        raise DatasetError(f"case {case.case_id}: has no image file")
    problems = case_content_problems(case.case_id, channels, label, labels)
    if problems:
        raise DatasetError(f"case {case.case_id}: " + "; ".join(f"{p.message} ({p.hint})" for p in problems))
    array = np.stack([c.array.astype(np.float32, copy=False) for c in channels])
    image = Image(array, channels[0].geometry)
    if label is None:
        return image, None
    return image, Image(label.array.astype(np.uint8), label.geometry)


def write_dataset_json(folder: str | os.PathLike, labels: Optional[Mapping[str, int]] = None,
                       channel_names: Optional[Mapping[str, str]] = None, file_ending: str = ".nii.gz",
                       num_training: int = 0, **extra) -> Path:
    """Write `folder/dataset.json` in nnU-Net v2 form (defaults: background 0, rectum 1, tumour 2; one T2 channel)."""
    labels = dict(DEFAULT_LABELS if labels is None else labels)
    channel_names = {str(k): str(v) for k, v in (DEFAULT_CHANNELS if channel_names is None else channel_names).items()}
    if sorted(labels.values()) != list(range(len(labels))) or labels.get("background", 0) != 0:
        raise DatasetError(f"labels {labels}: values must be 0, 1, 2, ... with background = 0")
    if not file_ending.lower().endswith(IMAGE_EXTENSIONS):
        raise DatasetError(f"file_ending {file_ending!r}: use one of {', '.join(IMAGE_EXTENSIONS)}")
    content = {"channel_names": channel_names, "labels": {str(k): int(v) for k, v in labels.items()},
               "numTraining": int(num_training), "file_ending": file_ending, **extra}
    return atomic_write_json(Path(folder) / "dataset.json", content)


def _entry_sha256(path: Path) -> str:
    """A file's SHA-256; for a DICOM series folder, the SHA-256 over its files' relative names and digests."""
    if not path.is_dir():
        return file_sha256(path)
    lines = [f"{p.relative_to(path).as_posix()} {file_sha256(p)}\n"
             for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def dataset_sha256(dataset: Dataset, case_ids: Optional[Iterable[str]] = None) -> str:
    """SHA-256 over the training cases (all, or `case_ids`), sorted by name: each case's name and the SHA-256 of
    its image files (channel order) and label file. It changes when a case is added, removed, renamed or any of its
    files changes, and only then (a model's provenance: which data it was trained on)."""
    chosen = set(case_ids) if case_ids is not None else None
    digest = hashlib.sha256()
    for case in sorted(dataset.cases, key=lambda c: c.case_id):
        if chosen is not None and case.case_id not in chosen:
            continue
        files = [_entry_sha256(Path(p)) for p in case.image_paths]
        label = _entry_sha256(Path(case.label_path)) if case.label_path is not None else "-"
        digest.update(f"{case.case_id} {' '.join(files)} {label}\n".encode("utf-8"))
    return digest.hexdigest()
