"""File names and safe writes: a file is written to a hidden temporary sibling, then renamed over its path.

A crash or a full disk never leaves a half-written file under the real name, and readers never see one.
Standard library only: the Slicer module uses it before torch is installed.
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Tuple

COMPOUND_EXTENSIONS = (".seg.nrrd", ".nii.gz")


def split_extension(path: str | os.PathLike) -> Tuple[str, str]:
    """'case_0000.nii.gz' -> ('case_0000', '.nii.gz'); knows the compound endings .nii.gz and .seg.nrrd."""
    name = Path(path).name
    for ext in COMPOUND_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, ext = os.path.splitext(name)
    return stem, ext


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; it replaces `path` when the block ends without an error and is
    removed in any case. It keeps the extension, so writers that choose the format by name (ITK, matplotlib) work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, ext = split_extension(path)
    tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.part{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_open(path: str | os.PathLike, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary handle whose content becomes `path` when the block ends; `fsync` also forces it onto the disk
    before the rename (checkpoints: a power cut must leave the old file or the new one)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2, **dumps: Any) -> Path:
    """`data` as JSON plus a final newline; `dumps` go to json.dumps (e.g. allow_nan=False)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, **dumps) + "\n")
