"""Installed models: install from a folder or a zip, list with provenance, locate, remove. Qt-free, no torch.

A model is a model folder (`plans.json`, `dataset.json`, `fold_K/checkpoint_*.pt`) copied under the models root
(the Widget uses `<Slicer settings folder>/RCSegNeXt/models`). Installing records where it came from in
`install.json` (source, SHA-256 of the archive, time, folds, software version) and, for a model the panel (or
`train`) trained, its training provenance (`RUN/provenance.json`: from scratch or fine-tuned from which model, on how
many cases, the dataset's SHA-256, when). A given SHA-256 is checked before
anything is unpacked; a zip member that would land outside the target (absolute path, `..`, a link) refuses the
whole archive. Installation is atomic: a half-copied model is never listed.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional

from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.files import atomic_write_json
from RCSegNeXtCore.hashing import file_sha256

INSTALL_RECORD = "install.json"
MAX_UNPACKED_BYTES = 8 << 30  # refuse zip bombs: a model is a few hundred MB at most

NO_MODEL_HINT = ("Choose a model first: install one in the 'Models' section below (a model folder or zip), or "
                 "choose a training run folder as 'Model folder'.")


def model_guidance(python_slicer: str = "PythonSlicer") -> str:
    """What the panel says while no model is installed: where a model comes from, with commands that work in an
    Extensions-Manager install (the core ships inside the extension; there is no `rcsegnext` command there)."""
    run = f"{python_slicer} -m RCSegNeXtCore"
    return (
        "No model is installed yet. A model is a folder with plans.json, dataset.json and "
        "fold_K/checkpoint_final.pt. Three ways to get one:\n"
        "1. A model you were given (a colleague's, or one published with its SHA-256): 'Install zip...' or "
        "'Install folder...' below.\n"
        "2. Train one from cases saved with 'Save as training case' (a CUDA GPU is strongly advised): section "
        "'Improve the model', 'From scratch', Train; the finished model is installed here and selected. Or from "
        f"a terminal:\n   {run} check DATASET\n   {run} train DATASET -o RUN_FOLDER --fold all, then "
        "'Install folder...' with RUN_FOLDER.\n"
        "3. The official RCSegNeXt weights were announced but not published; once they are:\n"
        f"   {run} import-official CHECKPOINT --plans PLANS_JSON -o MODEL_FOLDER, then install MODEL_FOLDER.")


def default_models_root(settings_dir: str | os.PathLike, platform: str = sys.platform,
                        environ: Optional[Dict[str, str]] = None) -> Path:
    """Where installed models live: beside Slicer's settings, except on Windows, where those settings sit in the
    roaming profile (copied at every logon and capped by hospital quotas): there, %LOCALAPPDATA%."""
    environ = os.environ if environ is None else environ
    if platform.startswith("win") and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"]) / "RCSegNeXt" / "models"
    return Path(settings_dir) / "RCSegNeXt" / "models"


def move_legacy_models(legacy_root: str | os.PathLike, models_root: str | os.PathLike) -> List[str]:
    """Move models installed under an earlier models root into the current one (names already there are left
    alone); returns the names moved. Used once on Windows, where the root left the roaming profile."""
    legacy, root = Path(legacy_root), Path(models_root)
    if legacy.resolve() == root.resolve() or not legacy.is_dir():
        return []
    moved = []
    for model in list_models(legacy):
        target = root / model.name
        if target.exists():
            continue
        root.mkdir(parents=True, exist_ok=True)
        shutil.move(str(model.path), str(target))
        moved.append(model.name)
    return moved


@dataclass
class InstalledModel:
    name: str
    path: Path
    provenance: Dict = field(default_factory=dict)  # the install record (install.json)

    @property
    def training(self) -> Dict:
        """The training provenance recorded at install ({} for a model installed without one)."""
        record = self.provenance.get("training")
        return record if isinstance(record, dict) else {}

    @property
    def parent(self) -> Optional[str]:
        """Name of the model this one was fine-tuned from (None: trained from scratch, or unknown)."""
        parent = self.training.get("parent")
        return str(parent.get("name") or parent.get("path") or "?") if isinstance(parent, dict) else None

    @property
    def description(self) -> str:
        p = self.provenance
        text = (f"{self.name}: folds {p.get('folds', '?')}, from {p.get('source', 'unknown')}, installed "
                f"{p.get('installed_at', '?')}" + (f", sha256 {p['sha256'][:12]}..." if p.get("sha256") else ""))
        return text + ("\n" + training_summary(self.training) if self.training else "")


def training_summary(record: Dict) -> str:
    """One line on how a model was trained, from its provenance.json record."""
    parent = record.get("parent")
    how = (f"fine-tuned from '{parent.get('name') or parent.get('path')}' (fold {parent.get('fold', '?')})"
           if isinstance(parent, dict) else "trained from scratch")
    sha = str(record.get("dataset_sha256") or "")
    return (f"{how} on {record.get('cases', '?')} case(s) of {Path(str(record.get('dataset') or '?')).name}"
            + (f" (dataset sha256 {sha[:12]}...)" if sha else "")
            + f", {record.get('epochs', '?')} epochs, finished {record.get('date', '?')}")


def model_folds(folder: Path) -> List:
    """The folds with a checkpoint: numbers, then "all" (the fold trained on every case) when present."""
    folds = [p.name[5:] for p in folder.glob("fold_*") if any(p.glob("checkpoint_*.pt"))]
    return sorted(int(f) for f in folds if f.isdigit()) + (["all"] if "all" in folds else [])


# a training run folder's parts that inference never reads: the preprocessed cache (often GBs) and the resume state
RUN_ONLY = ("preprocessed", "checkpoint_latest.pt")


def check_model_folder(folder: Path, source: str = "") -> None:
    """Refuse anything that is not a model folder (plans.json valid, dataset.json labels, one checkpoint)."""
    from RCSegNeXtCore.plans import Plans
    where = source or str(folder)
    if not (folder / "plans.json").is_file():
        raise ModelError(f"{where}: not a model folder (no plans.json); give the folder `rcsegnext train` wrote, or "
                         "a zip of it")
    Plans.load(folder / "plans.json")  # PlanError names the problem
    if not (folder / "dataset.json").is_file():
        raise ModelError(f"{where}: dataset.json is missing (it names the classes); add the training dataset's "
                         "dataset.json to the model folder")
    if not model_folds(folder):
        raise ModelError(f"{where}: no fold_K/checkpoint_final.pt (or checkpoint_best.pt) in the model folder")


def _safe_members(archive: zipfile.ZipFile, source: str) -> None:
    """Refuse the archive when any member could write outside the target folder (zip-slip) or is a link."""
    total = 0
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (parts and (":" in parts[0])) or ".." in parts:
            raise ModelError(f"{source}: refused: member '{info.filename}' would be written outside the model "
                             "folder (absolute path or '..'); the archive is unsafe, get the model from its source")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ModelError(f"{source}: refused: member '{info.filename}' is a symbolic link; links are not "
                             "allowed in model archives")
        total += info.file_size
    if total > MAX_UNPACKED_BYTES:
        raise ModelError(f"{source}: refused: it unpacks to {total / 1e9:.1f} GB (limit "
                         f"{MAX_UNPACKED_BYTES / 1e9:.0f} GB)")


def _model_root_in(folder: Path) -> Path:
    """The model folder inside an unpacked archive: its top level, or its single top-level folder."""
    if (folder / "plans.json").is_file():
        return folder
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def install_model(source: str | os.PathLike, models_root: str | os.PathLike, name: Optional[str] = None,
                  sha256: Optional[str] = None, overwrite: bool = False, training_run: bool = False) -> InstalledModel:
    """Install a model folder or a .zip of one under `models_root/<name>`; returns the installed model.
    `training_run`: the folder is a training run, whose RUN_ONLY parts are not copied."""
    source, root = Path(source), Path(models_root)
    if not source.exists():
        raise ModelError(f"{source}: no such file or folder")
    digest = None
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise ModelError(f"{source}: not a zip archive; give a model folder or a .zip of one")
        digest = file_sha256(source)
        if sha256 and digest.lower() != sha256.strip().lower():
            raise ModelError(f"{source}: SHA-256 mismatch: expected {sha256.strip().lower()}, file has {digest}; the "
                             "download is corrupt or not the published model. Download it again.")
    elif sha256:
        raise ModelError(f"{source}: a SHA-256 checks an archive file; give the .zip, or no SHA-256 for a folder")
    name = name or (source.name[:-4] if source.suffix.lower() == ".zip" else source.name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ModelError(f"model name '{name}' is not a plain folder name")
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists() and not overwrite:
        raise ModelError(f"a model named '{name}' is already installed at {target}; remove it first or choose "
                         "another name")
    staging = Path(tempfile.mkdtemp(prefix=f".installing-{name}-", dir=root))
    try:
        if source.is_file():
            with zipfile.ZipFile(source) as archive:
                _safe_members(archive, str(source))
                archive.extractall(staging / "unpacked")
            model_dir = _model_root_in(staging / "unpacked")
        else:
            model_dir = staging / "unpacked"
            shutil.copytree(source, model_dir, symlinks=False,
                            ignore=shutil.ignore_patterns(*RUN_ONLY) if training_run else None)
        check_model_folder(model_dir, str(source))
        record = {"name": name, "source": str(source.resolve()), "sha256": digest,
                  "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "folds": model_folds(model_dir), "software_version": _version(),
                  "dataset_name": json.loads((model_dir / "plans.json").read_text(encoding="utf-8")).get("dataset_name", "")}
        from RCSegNeXtCore.training.provenance import read_provenance  # standard library only: no torch
        training = read_provenance(model_dir)
        if training:
            record["training"] = training
        atomic_write_json(model_dir / INSTALL_RECORD, record)
        if target.exists():
            shutil.rmtree(target)
        os.replace(model_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return InstalledModel(name, target, record)


def _version() -> str:
    from RCSegNeXtCore import __version__
    return __version__


def list_models(models_root: str | os.PathLike) -> List[InstalledModel]:
    """Installed models (folders with plans.json), by name, with their install record ({} when absent)."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "plans.json").is_file():
            continue
        try:
            record = json.loads((folder / INSTALL_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        found.append(InstalledModel(folder.name, folder, record if isinstance(record, dict) else {}))
    return found


def model_path(models_root: str | os.PathLike, name: str) -> Path:
    """The folder of an installed model (for 'open folder'); refuses names that leave the models root."""
    root = Path(models_root).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ModelError(f"model name '{name}' is not a folder directly under {root}")
    if not (path / "plans.json").is_file():
        raise ModelError(f"no installed model named '{name}' in {root}")
    return path


def remove_model(models_root: str | os.PathLike, name: str) -> None:
    """Delete an installed model's folder (only inside the models root, only a model folder)."""
    shutil.rmtree(model_path(models_root, name))
