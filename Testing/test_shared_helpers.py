"""The shared helpers: atomic writes, first_line, devices and threads, the output-format registry, strict blocks."""
from __future__ import annotations

import json

import pytest
import torch

from RCSegNeXtCore.devices import resolve_device, set_cpu_threads
from RCSegNeXtCore.errors import RCSegNeXtError, first_line
from RCSegNeXtCore.files import atomic_open, atomic_path, atomic_write_json, split_extension


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "data.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2}, indent=None)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2} and target.read_text().endswith("\n")
    with atomic_open(tmp_path / "blob.bin", fsync=True) as handle:
        handle.write(b"xyz")
    assert (tmp_path / "blob.bin").read_bytes() == b"xyz"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["blob.bin", "data.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "case.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.name.startswith(".case.") and tmp.name.endswith(".part.nii.gz")  # same extension
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]


def test_split_extension_knows_compound_endings():
    assert split_extension("a/b/case_0000.nii.gz") == ("case_0000", ".nii.gz")
    assert split_extension("pred.seg.nrrd") == ("pred", ".seg.nrrd")
    assert split_extension("plans.json") == ("plans", ".json")


def test_first_line():
    assert first_line(RuntimeError("\x1b[31mError(s) in loading\x1b[0m\n\tMissing key(s)")) == "Error(s) in loading"
    assert first_line(ValueError("")) == "ValueError"


def test_resolve_device_returns_a_torch_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(RCSegNeXtError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RCSegNeXtError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_set_cpu_threads():
    before = torch.get_num_threads()
    try:
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(RCSegNeXtError, match="--threads"):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_output_formats_drive_the_cli_choices_and_the_writer(tmp_path):
    from RCSegNeXtCore.cli import build_parser
    from RCSegNeXtCore.inference.export import OUTPUT_FORMATS, output_format
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    choices = next(a.choices for a in predict._actions if a.dest == "format")
    assert tuple(choices) == tuple(OUTPUT_FORMATS)
    assert output_format("x/case.SEG.NRRD").suffix == "seg.nrrd" and output_format("case.png") is None
    assert all(f.description and callable(f.write) for f in OUTPUT_FORMATS.values())


def test_blocks_reject_unknown_arguments():
    from RCSegNeXtCore.network import BLOCKS, make_block
    for name, cls in BLOCKS.items():
        with pytest.raises(TypeError, match="expanson"):
            cls(8, 8, (1, 3, 3), expanson=2)
        block = make_block(name, 8, 16, (1, 3, 3), scale=4, expansion=2)  # each takes what it knows of these
        assert block(torch.zeros(1, 8, 2, 4, 4)).shape == (1, 16, 2, 4, 4)
