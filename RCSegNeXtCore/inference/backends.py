"""The engines that run a network on tiles, behind one interface: `backend.logits(tiles) -> logits`.

    tiles   numpy float32 [N, C, z, y, x] (the plan's patch size for the engines)
    logits  numpy float32 [N, K, z, y, x], owned by the caller (or written into `out=`)

- `torch`: PyTorch eager on the CPU or a GPU (CUDA: bf16/fp16 autocast and channels_last_3d, as sliding_window);
- `openvino`: OpenVINO on the CPU, from fold_K/model.onnx (inference/onnx_export.py);
- `onnxruntime`: ONNX Runtime on the CPU, from the same file.

Each engine is imported only when its backend is made; nothing here imports torch except `TorchBackend` (and
`cuda_available`, only where a GPU driver is present), so the engines run where PyTorch is not installed.

Numeric settings (measured on a trained model: docs/engines.md, benchmarks/engines.py):
- OpenVINO: `INFERENCE_PRECISION_HINT` f32. Its CPU default is bf16 where the CPU has AVX512-BF16 or AMX (f16 on
  ARM): faster, but logits off by ~0.02 and labels that differ from PyTorch's; f32 stays within ~1e-3.
- ONNX Runtime: the CPU memory arena off (with it, one full-width patch peaked at 7.2 GB), graph optimisation ALL.
- Threads: every core this process may use (`available_cores`: its CPU affinity, as `os.sched_getaffinity`), or
  `threads`; one stream / sequential execution (one tile at a time uses all threads).
`backend.settings` records the engine, its version and these settings for the outputs' provenance.

`select_backend("auto" | name, device)` picks one: PyTorch on a GPU; on the CPU the first installed engine of
`ENGINE_ORDER` (fixed from the benchmark, not decided at run time); PyTorch only when no engine is installed, with a
one-line note saying what to install.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from RCSegNeXtCore.errors import RCSegNeXtError

# CPU engines, fastest first (benchmarks/engines.py, docs/engines.md): OpenVINO (f32) ran a full-width patch in
# about half ONNX Runtime's time on the 2-core benchmark machine, at a third of its peak memory
ENGINE_ORDER = ("openvino", "onnxruntime")
BACKENDS = ("torch", *ENGINE_ORDER)
DISTRIBUTIONS = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime"}
OPENVINO_PRECISIONS = ("f32", "bf16", "f16", "default")
INPUT_NAME, OUTPUT_NAME = "image", "logits"  # = onnx_export's


class BackendError(RCSegNeXtError):
    """A backend that was asked for cannot run here (not installed, wrong device, bad setting)."""


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask where the OS has one (containers, taskset), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def importable(module: str) -> bool:
    """True when `import module` would find it (a module blocked as sys.modules[name] = None counts as absent)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def engine_installed(name: str) -> bool:
    return importable(name)


def engine_version(name: str) -> Optional[str]:
    """The installed version of a backend's package, from its metadata (nothing imported)."""
    try:
        return importlib.metadata.version(DISTRIBUTIONS[name])
    except (importlib.metadata.PackageNotFoundError, KeyError):
        return None


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA (or ROCm) GPU. On Linux without a loaded NVIDIA or AMD GPU driver it answers
    False without importing torch (the engine path then never loads it)."""
    if not importable("torch"):
        return False
    if sys.platform.startswith("linux") and not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/kfd")):
        return False
    import torch
    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class BackendChoice:
    """What `select_backend` decided: the backend's name and, when it is PyTorch on the CPU only because no engine
    is installed, a one-line note saying what to install."""

    name: str
    note: Optional[str] = None


def _is_gpu(device: str) -> bool:
    return device.startswith("cuda") or device == "mps"


def select_backend(name: str = "auto", device: str = "auto",
                   installed: Callable[[str], bool] = engine_installed,
                   gpu: Optional[Callable[[], bool]] = None) -> BackendChoice:
    """The backend for `name` ("auto" | "torch" | "openvino" | "onnxruntime") on `device` ("auto" | "cpu" |
    "cuda[:N]" | "mps"). auto: PyTorch on a GPU (device cuda/mps, or auto when one is there), else the first
    installed engine of ENGINE_ORDER, else PyTorch with a note. An explicit engine must be installed and runs on
    the CPU. `installed` / `gpu`: what is installed / whether a GPU is there (default: ask this machine)."""
    name = str(name or "auto").lower()
    device = str(device or "auto").lower()
    if name not in ("auto", *BACKENDS):
        raise BackendError(f"--backend {name}: use auto, {', '.join(BACKENDS)}")
    if name == "torch":
        if not installed("torch"):
            raise BackendError("--backend torch: PyTorch is not installed (pip install torch); or use "
                               "--backend auto to run on an installed engine")
        return BackendChoice("torch")
    if name != "auto":
        if _is_gpu(device):
            raise BackendError(f"--backend {name} runs on the CPU; use --device cpu (or auto), or --backend torch "
                               f"for {device}")
        if not installed(name):
            raise BackendError(f"--backend {name}: {name} is not installed (pip install {DISTRIBUTIONS[name]}); "
                               "or use --backend auto")
        return BackendChoice(name)
    if _is_gpu(device) or (device == "auto" and (gpu or cuda_available)()):
        if not installed("torch"):
            raise BackendError(f"--device {device}: running on a GPU needs PyTorch (pip install torch)")
        return BackendChoice("torch")
    for engine in ENGINE_ORDER:
        if installed(engine):
            return BackendChoice(engine)
    if installed("torch"):
        return BackendChoice("torch", f"note: no inference engine installed, running PyTorch on the CPU; "
                                      f"`pip install {ENGINE_ORDER[0]}` runs it several times faster")
    raise BackendError(f"no backend to run the network: install {ENGINE_ORDER[0]} (pip install "
                       f"{DISTRIBUTIONS[ENGINE_ORDER[0]]}) or PyTorch")


def _as_tiles(tiles: np.ndarray) -> np.ndarray:
    tiles = np.ascontiguousarray(tiles, dtype=np.float32)
    if tiles.ndim != 5:
        raise BackendError(f"tiles must be [N, C, z, y, x], got shape {list(tiles.shape)}")
    return tiles


def _deliver(result: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    if out is None:
        return result
    out[...] = result
    return out


class TorchBackend:
    """A torch module (one fold's network, eval mode) on `device`. CUDA: autocast (bf16 where supported, else
    fp16) and channels_last_3d; CPU: float32."""

    name = "torch"

    def __init__(self, network, device="cpu", amp: bool = True):
        import torch
        self._torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.network = network.to(self.device).eval()
        if self.cuda:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        self.amp_dtype = None
        if amp and self.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.settings: Dict[str, Any] = {
            "engine": "torch", "version": torch.__version__, "device": str(self.device),
            "precision": {None: "f32", torch.bfloat16: "bf16 autocast", torch.float16: "f16 autocast"}[self.amp_dtype],
            "threads": torch.get_num_threads() if not self.cuda else None}

    def logits(self, tiles: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(_as_tiles(tiles)).to(self.device)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                                    enabled=self.amp_dtype is not None):
            y = self.network(x)
        if isinstance(y, (list, tuple)):  # deep supervision: full resolution first
            y = y[0]
        return _deliver(y.float().cpu().numpy(), out)


class OnnxRuntimeBackend:
    """ONNX Runtime's CPU execution provider on an exported fold (dynamic batch)."""

    name = "onnxruntime"

    def __init__(self, onnx_file: str | os.PathLike, threads: Optional[int] = None, memory_arena: bool = False):
        import onnxruntime as ort
        threads = int(threads or available_cores())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = bool(memory_arena)
        options.log_severity_level = 3  # errors only
        self.path = Path(onnx_file)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.settings = {"engine": "onnxruntime", "version": ort.__version__, "device": "cpu", "precision": "f32",
                         "threads": threads, "memory_arena": bool(memory_arena), "graph_optimization": "all"}

    def logits(self, tiles: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        result = self.session.run([OUTPUT_NAME], {INPUT_NAME: _as_tiles(tiles)})[0]
        return _deliver(result, out)


class OpenVinoBackend:
    """OpenVINO on the CPU on an exported fold, compiled once per batch size with a static shape."""

    name = "openvino"

    def __init__(self, onnx_file: str | os.PathLike, threads: Optional[int] = None, precision: str = "f32"):
        import openvino as ov
        if precision not in OPENVINO_PRECISIONS:
            raise BackendError(f"OpenVINO precision {precision!r}: use one of {', '.join(OPENVINO_PRECISIONS)}")
        self._ov = ov
        self.core = ov.Core()
        self.path = Path(onnx_file)
        self.threads = int(threads or available_cores())
        self.precision = precision
        self.config: Dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                                       "NUM_STREAMS": 1}
        if precision != "default":
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self._compiled: Dict[int, Any] = {}
        self._requests: Dict[int, Any] = {}
        self._input_shape: Sequence[int] = ()
        self._request(1)  # compiled now: a broken file or setting fails here, not at the first tile
        actual = str(self._compiled[1].get_property("INFERENCE_PRECISION_HINT"))
        self.settings = {"engine": "openvino", "version": ov.__version__.split("-")[0], "device": "CPU",
                         "precision": _precision_name(actual), "precision_hint": precision, "threads": self.threads,
                         "streams": 1}

    def _request(self, batch: int):
        if batch not in self._requests:
            model = self.core.read_model(str(self.path))
            shape = [d.get_length() if d.is_static else -1 for d in model.input(0).get_partial_shape()]
            if any(s < 0 for s in shape[1:]):
                raise BackendError(f"{self.path}: the ONNX input's spatial size is not fixed ({shape}); export it "
                                   "again with `rcsegnext export-onnx --force`")
            self._input_shape = shape[1:]
            model.reshape({model.input(0).get_any_name(): [batch, *shape[1:]]})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self._compiled[batch] = compiled
            self._requests[batch] = compiled.create_infer_request()
        return self._requests[batch]

    def logits(self, tiles: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        tiles = _as_tiles(tiles)
        request = self._request(int(tiles.shape[0]))
        if list(tiles.shape[1:]) != list(self._input_shape):
            raise BackendError(f"tiles of shape {list(tiles.shape[1:])} given to a model exported for "
                               f"{list(self._input_shape)}")
        request.infer({0: tiles})
        result = request.get_output_tensor(0).data  # OpenVINO's own buffer, reused by the next call: copy it
        if out is not None:
            out[...] = result
            return out
        return np.array(result, dtype=np.float32, copy=True)


def _precision_name(value: str) -> str:
    """OpenVINO's element type as printed ('<Type: 'float32'>', 'f32', 'bf16') -> f32 | bf16 | f16."""
    text = value.lower()
    for short, words in (("bf16", ("bf16", "bfloat16")), ("f16", ("f16", "float16")), ("f32", ("f32", "float32"))):
        if any(w in text for w in words):
            return short
    return value


def make_backend(name: str, *, onnx_file: str | os.PathLike | None = None, network=None, device="cpu",
                 threads: Optional[int] = None, amp: bool = True, openvino_precision: str = "f32",
                 onnxruntime_memory_arena: bool = False):
    """One fold's backend: `network` (a torch module) for torch, `onnx_file` (fold_K/model.onnx) for the engines."""
    if name == "torch":
        if network is None:
            raise BackendError("the torch backend needs the fold's network")
        return TorchBackend(network, device=device, amp=amp)
    if onnx_file is None:
        raise BackendError(f"the {name} backend needs the fold's ONNX file (rcsegnext export-onnx)")
    if name == "openvino":
        return OpenVinoBackend(onnx_file, threads=threads, precision=openvino_precision)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(onnx_file, threads=threads, memory_arena=onnxruntime_memory_arena)
    raise BackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")


def describe(settings: Dict[str, Any]) -> str:
    """One line for logs, the Slicer panel and provenance, e.g. 'openvino 2026.4.1 (CPU, f32, 2 threads)'."""
    parts = [str(settings.get("device", "")), str(settings.get("precision", ""))]
    if settings.get("threads"):
        parts.append(f"{settings['threads']} thread{'s' if settings['threads'] != 1 else ''}")
    return f"{settings.get('engine')} {settings.get('version')} ({', '.join(p for p in parts if p)})"

