"""A model folder's folds as ONNX files, so that inference can run on an engine (OpenVINO, ONNX Runtime) without
PyTorch: `fold_K/model.onnx` (from checkpoint_final.pt; `model_best.onnx` from checkpoint_best.pt) and beside it
`model.onnx.json`, what it was made from.

The graph: opset 17, input "image" [batch, C, *patch] float32 -> output "logits" [batch, K, *patch] float32, the
batch dynamic, the spatial size static = the plan's patch size. The network is traced at its smallest input
(one bottleneck cell per axis, two on one) with dynamic spatial axes, so export time does not grow with the patch; the graph's input
and output are then fixed to the patch size and the shapes inferred again, which must give [batch, K, *patch].
TorchScript-based exporter (`torch.onnx.export(dynamo=False)`): it needs the `onnx` package only (the dynamo
exporter also needs onnxscript and took 3-4x longer).

model.onnx.json: the checkpoint it was made from (name, SHA-256), patch size, channels, classes, network signature,
opset, the file's own SHA-256, torch / onnx / rcsegnext versions, date. `onnx_status` compares it with the folder
(standard library, numpy and plans.py only: no torch, no onnx): an ONNX file whose checkpoint, plan or bytes changed
is stale, and `ensure_onnx` exports it again when PyTorch is importable, else refuses it with what to do; a stale
file is never used.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from RCSegNeXtCore import __version__
from RCSegNeXtCore.errors import ModelError
from RCSegNeXtCore.files import atomic_path, atomic_write_json
from RCSegNeXtCore.hashing import file_sha256
from RCSegNeXtCore.plans import Plans

OPSET = 17  # the lowest the engines need; the TorchScript exporter of every torch >= 2.1 writes it
INPUT_NAME, OUTPUT_NAME = "image", "logits"
METADATA_FORMAT = 1
Fold = Union[int, str]
Log = Callable[[str], None]


def onnx_path(model_dir: str | os.PathLike, fold: Fold, checkpoint: str = "final") -> Path:
    """fold_K/model.onnx for checkpoint_final.pt, fold_K/model_best.onnx for checkpoint_best.pt."""
    name = "model.onnx" if checkpoint == "final" else f"model_{checkpoint}.onnx"
    return Path(model_dir) / f"fold_{fold}" / name


def metadata_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def checkpoint_path(model_dir: str | os.PathLike, fold: Fold, checkpoint: str = "final") -> Path:
    return Path(model_dir) / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"


@dataclass(frozen=True)
class OnnxStatus:
    """`state`: "ok" (usable), "stale" (`reason` says what changed) or "missing"; `path`: the ONNX file."""

    state: str
    path: Path
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def _expected(plans: Plans) -> Dict[str, Any]:
    return {"patch_size": [int(p) for p in plans.patch_size], "in_channels": int(plans.architecture.in_channels),
            "num_classes": int(plans.num_classes), "network_signature": plans.network_signature()}


def onnx_status(model_dir: str | os.PathLike, fold: Fold, checkpoint: str = "final",
                plans: Optional[Plans] = None) -> OnnxStatus:
    """Is fold_K's ONNX file there and made from today's checkpoint and plan? No torch, no onnx needed."""
    path = onnx_path(model_dir, fold, checkpoint)
    meta_file = metadata_path(path)
    if not path.is_file():
        return OnnxStatus("missing", path, f"{path.parent.name}/{path.name} does not exist")
    if not meta_file.is_file():
        return OnnxStatus("stale", path, f"{meta_file.name} (what the file was made from) is missing")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return OnnxStatus("stale", path, f"{meta_file.name} cannot be read ({exc})")
    source = checkpoint_path(model_dir, fold, checkpoint)
    if not source.is_file():
        return OnnxStatus("stale", path, f"its checkpoint {source.parent.name}/{source.name} is missing")
    found = file_sha256(source)
    if meta.get("checkpoint_sha256") != found:
        return OnnxStatus("stale", path, f"{source.name} changed since the export (SHA-256 "
                                         f"{str(meta.get('checkpoint_sha256'))[:12]}... recorded, {found[:12]}... now)")
    plans = plans if plans is not None else Plans.load(Path(model_dir) / "plans.json")
    for key, value in _expected(plans).items():
        if meta.get(key) != value:
            return OnnxStatus("stale", path, f"plans.json's {key} is {value}, the file was made for {meta.get(key)}")
    if meta.get("sha256") != file_sha256(path):
        return OnnxStatus("stale", path, f"{path.name} differs from the file that was exported (SHA-256 mismatch)")
    return OnnxStatus("ok", path)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def ensure_onnx(model_dir: str | os.PathLike, fold: Fold, checkpoint: str = "final",
                log: Optional[Log] = None) -> Path:
    """fold_K's ONNX file, exported first when missing or stale and PyTorch is importable; without PyTorch a missing
    or stale file is refused (ModelError saying why and what to do), never used."""
    status = onnx_status(model_dir, fold, checkpoint)
    if status.ok:
        return status.path
    if not torch_available():
        raise ModelError(f"{status.path}: cannot be used: {status.reason}. Exporting it again needs PyTorch: "
                         f"install torch, or run `rcsegnext export-onnx {model_dir}` where PyTorch is installed and "
                         "copy the model folder here")
    if log is not None and status.state == "stale":
        log(f"note: {status.path.parent.name}/{status.path.name} is stale ({status.reason}); exporting it again")
    return export_fold(model_dir, fold, checkpoint)


def _require_exporter() -> None:
    if not torch_available():
        raise ModelError("exporting to ONNX needs PyTorch (pip install torch)")
    if importlib.util.find_spec("onnx") is None:
        raise ModelError("exporting to ONNX needs the onnx package (torch.onnx.export writes the file with it): "
                         "pip install onnx")


def _trace_size(plans: Plans):
    """The smallest input the network takes: one bottleneck cell per axis (the total stride), two on the axis of
    the smallest stride that the patch allows (instance norm needs more than one voxel); the patch when none does.
    The graph does not depend on it (the spatial axes are dynamic when traced), the export time does."""
    from RCSegNeXtCore.strides import total_stride
    stride = [int(s) for s in total_stride(plans.strides)]
    patch = [int(p) for p in plans.patch_size]
    for axis in sorted(range(len(stride)), key=lambda a: stride[a]):
        if patch[axis] >= 2 * stride[axis]:
            return [2 * s if a == axis else s for a, s in enumerate(stride)]
    return patch


def export_network(network, plans: Plans, path: str | os.PathLike, opset: int = OPSET) -> Dict[str, Any]:
    """Write `network` (a torch module for `plans`) as an ONNX file at `path` (atomically); returns the facts the
    metadata records about the file (not yet its source)."""
    _require_exporter()
    import onnx
    import torch

    path = Path(path)
    started = time.perf_counter()
    network = network.eval().cpu()
    example = torch.randn(1, int(plans.architecture.in_channels), *_trace_size(plans),
                          generator=torch.Generator().manual_seed(0))
    options = {"dynamo": False} if "dynamo" in _parameters(torch.onnx.export) else {}
    threads = torch.get_num_threads()
    # one thread: the traced input is tiny, and on a busy machine two threads' barriers made the trace 3x slower
    torch.set_num_threads(1)
    try:
        with atomic_path(path) as tmp:
            _trace(network, example, tmp, plans, int(opset), options)
    finally:
        torch.set_num_threads(threads)
    return {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size, "opset": int(opset),
            "input": INPUT_NAME, "output": OUTPUT_NAME, **_expected(plans),
            "exporter": "torch.onnx.export (TorchScript-based)", "torch": torch.__version__,
            "onnx": onnx.__version__, "rcsegnext": __version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "export_seconds": round(time.perf_counter() - started, 2)}


def _trace(network, example, tmp: Path, plans: Plans, opset: int, options: Dict[str, Any]) -> None:
    import onnx
    import torch

    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on the input-size check, the deprecated exporter's notice
        torch.onnx.export(network, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                          do_constant_folding=True, **options)
    model = onnx.load(str(tmp))
    _fix_spatial_size(model, plans.patch_size)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    _check_output_shape(model, plans)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))


def _parameters(function) -> set:
    import inspect
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def _fix_spatial_size(model, patch_size) -> None:
    """The graph input's and output's spatial axes -> the patch size (the batch stays dynamic); the intermediate
    shapes recorded at the trace size are dropped, to be inferred again."""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims[2:], patch_size):
            dim.ClearField("dim_param")
            dim.dim_value = int(size)
    del model.graph.value_info[:]


def _check_output_shape(model, plans: Plans) -> None:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    expected = [int(plans.num_classes), *[int(p) for p in plans.patch_size]]
    if shape[1:] != expected:
        raise ModelError(f"ONNX export: the graph's output shape is {shape}, expected [batch, {expected}]")


def export_fold(model_dir: str | os.PathLike, fold: Fold, checkpoint: str = "final", network=None,
                plans: Optional[Plans] = None) -> Path:
    """Export fold_K's checkpoint to fold_K/model.onnx (+ model.onnx.json); `network`: that checkpoint's network
    already loaded (else it is loaded from the file, weights checked against plans.json)."""
    _require_exporter()
    plans = plans if plans is not None else Plans.load(Path(model_dir) / "plans.json")
    source = checkpoint_path(model_dir, fold, checkpoint)
    if not source.is_file():
        raise ModelError(f"{source}: not found; nothing to export")
    if network is None:
        from RCSegNeXtCore.checkpoint import load_checkpoint, load_network_weights
        network = plans.build_network()
        load_network_weights(network, load_checkpoint(source), plans.network_signature(), source=str(source))
    path = onnx_path(model_dir, fold, checkpoint)
    facts = export_network(network, plans, path)
    atomic_write_json(metadata_path(path), {"format": METADATA_FORMAT, "checkpoint": source.name,
                                            "checkpoint_sha256": file_sha256(source), **facts})
    return path


def export_fold_or_note(model_dir: str | os.PathLike, fold: Fold, checkpoint: str = "final", network=None,
                        plans: Optional[Plans] = None) -> str:
    """`export_fold` for the commands that make model folders (init-model, import-official, training's end of a
    fold): one line saying what was written, or why nothing was (e.g. the onnx package is missing); it does not
    raise for that, the folder stays usable with PyTorch. An up-to-date file is kept."""
    started = time.perf_counter()
    status = onnx_status(model_dir, fold, checkpoint, plans=plans)
    if status.ok:
        return f"{status.path.parent.name}/{status.path.name}: up to date"
    try:
        path = export_fold(model_dir, fold, checkpoint, network=network, plans=plans)
    except ModelError as exc:
        return f"note: fold_{fold}: no ONNX file written ({exc}); `rcsegnext export-onnx {model_dir}` writes it later"
    return (f"{path.parent.name}/{path.name}: exported for inference without PyTorch "
            f"({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")

