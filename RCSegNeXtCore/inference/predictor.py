"""The predictor: a volume on disk (any grid) -> label map and probabilities on exactly that grid.

read -> preprocess exactly as plans.json says -> sliding window (inference.sliding_window) over every chosen fold
(logits averaged), each fold run by a backend (inference/backends.py: `backend` "auto" | "torch" | "openvino" |
"onnxruntime"; auto = `select_backend`: PyTorch on a GPU, else the fastest installed CPU engine) -> restored to the
input grid as the plan's `resampling.restore` says (the logits resampled, then softmax, as nnU-Net's export; or,
for 0.1 plans, the softmax resampled) -> argmax. Optional `resize_to` first resamples the input to a fixed voxel
grid over the same physical extent (as the paper did for its external Dataset B, [21, 512, 512]) and maps the
probabilities back to the original grid before the argmax.

With an engine backend nothing here imports torch: the engines run fold_K/model.onnx (inference/onnx_export.py;
exported first when missing or stale and PyTorch is there, refused when it is not), everything else is numpy.
`Predictor.engine` is the one-line description of the engine in use (also in every output's provenance).
`predict(..., uncertainty=True)` adds the review map (inference/uncertainty.py): `Prediction.uncertainty`, with
several members `Prediction.disagreement`, and the per-case `uncertainty_score`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from RCSegNeXtCore.data.io import Geometry, Image
from RCSegNeXtCore.errors import ImageReadError, ModelError
from RCSegNeXtCore.inference.backends import BackendError, describe, importable, make_backend, select_backend
from RCSegNeXtCore.inference.config import PredictionConfig
from RCSegNeXtCore.inference.export import provenance
from RCSegNeXtCore.inference.model_folder import ModelFolder
from RCSegNeXtCore.inference.sliding_window import WindowStats, predict_sliding_window
from RCSegNeXtCore.plans import resampling_settings
from RCSegNeXtCore.strides import total_stride

# progress(stage, done, total): stage "preprocess" | "predict" (done/total = forward passes) | "restore"
StageProgress = Callable[[str, int, int], None]


class InputWarning(UserWarning):
    """An input far from the training data (spacing, slice orientation): predicted, but results may be poor."""


@dataclass
class Prediction:
    labels: np.ndarray                       # (z, y, x) uint8 on `geometry` (the input's grid)
    geometry: Geometry
    probabilities: Optional[np.ndarray] = None  # (K, z, y, x) float32 when asked for
    stats: Optional[WindowStats] = None
    warnings: List[str] = field(default_factory=list)
    # the review map (predict(uncertainty=True), inference/uncertainty.py), (z, y, x) float32 in [0, 1] on `geometry`
    uncertainty: Optional[np.ndarray] = None    # normalised entropy of the final softmax
    disagreement: Optional[np.ndarray] = None   # members' mutual information / log K (several folds or TTA only)
    uncertainty_score: Optional[float] = None   # mean over uncertainty.score_region (the tumour's boundary band)
    uncertainty_region: Optional[str] = None    # "tumour" | "foreground" | "volume": where the score was taken
    disagreement_score: Optional[float] = None  # the same region's mean disagreement

    def uncertainty_metadata(self) -> dict:
        """The review score's header keys (empty without uncertainty), for the written files' provenance."""
        if self.uncertainty_score is None:
            return {}
        from RCSegNeXtCore.inference.uncertainty import score_metadata
        return score_metadata(self.uncertainty_score, self.uncertainty_region, self.disagreement_score)


def model_plane(model: ModelFolder) -> Optional[str]:
    """The slice plane the model was trained on ('sagittal' | 'coronal' | 'axial'), None when it records none."""
    return model.raw_plans.get("slice_orientation") or model.dataset_json.get("slice_orientation") or None


def input_warnings(geometry: Geometry, model: ModelFolder, source: str = "input") -> List[str]:
    """Why an input may be far from the training data: spacing per axis off by > 2x, another slice plane."""
    found = []
    plans = model.plans
    # the training data's spacing in the input's axis order (the plan's is after its transpose)
    reference = [float((plans.median_spacing or plans.target_spacing)[a]) for a in plans.transpose_backward]
    ratios = np.asarray(geometry.spacing, float) / np.asarray(reference, float)
    if (ratios > 2.0).any() or (ratios < 0.5).any():
        found.append(f"{source}: spacing (z,y,x) {tuple(round(s, 4) for s in geometry.spacing)} is far from the "
                     f"training data's {tuple(round(float(s), 4) for s in reference)}; check the series (results "
                     "may be poor)")
    expected = model_plane(model)
    found_plane = geometry.slice_orientation()
    if expected and found_plane and found_plane != expected:
        article = "an" if found_plane[0] in "aeiou" else "a"
        found.append(f"{source}: {article} {found_plane} series given to a model trained on {expected} series; "
                     f"use the {expected} acquisition (results may be poor)")
    elif found_plane and np.argmax(geometry.spacing) != np.argmax(reference) and max(reference) / min(reference) > 1.5:
        found.append(f"{source}: its thick axis (z,y,x index {int(np.argmax(geometry.spacing))}) differs from the "
                     f"training data's ({int(np.argmax(reference))}); the slices may be in another plane")
    return found


def resized_geometry(geometry: Geometry, shape: Sequence[int]) -> Geometry:
    """The grid of `shape` voxels covering the same physical extent (voxel edges) as `geometry`."""
    shape = tuple(int(s) for s in shape)
    spacing = tuple(s * n / m for s, n, m in zip(geometry.spacing, geometry.shape, shape))
    shift_zyx = [(new - old) / 2.0 for new, old in zip(spacing, geometry.spacing)]
    origin = np.asarray(geometry.origin) + geometry.direction_matrix @ np.asarray(shift_zyx[::-1])
    return Geometry(shape, spacing, tuple(float(v) for v in origin), geometry.direction)


class _Cpu:
    """The device of an engine backend (the CPU), where code asks `predictor.device.type`."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


_CPU = _Cpu()


class Predictor:
    """`Predictor(model_dir).predict(image)`; networks are loaded once and reused for every case.

    `folds`: fold numbers and/or "all" (fold_all); default every numbered fold present (fold_all when there is none).
    `backend`: "auto" (default) | "torch" | "openvino" | "onnxruntime" (select_backend; auto with a whole-volume
    pass: torch, the engines refuse it); `threads`: CPU threads for
    the network (default: every core this process may use for the engines, torch's choice for torch). After
    construction, `backend` is the name chosen, `settings` and `engine` say what runs (provenance), `notes` what
    there is to say about the choice (what to install; an ONNX file exported again because it was stale).
    """

    def __init__(self, model_dir: str | os.PathLike, folds: Optional[Sequence[int | str]] = None,
                 checkpoint: str = "final", device: str = "auto", tta: bool = False,
                 tile_overlap: Optional[float] = None, batch_tiles: Optional[int] = None,
                 whole_volume_max_voxels: Optional[int] = 0, resize_to: Optional[Sequence[int]] = None,
                 amp: bool = True, backend: str = "auto", threads: Optional[int] = None):
        self.model = ModelFolder(model_dir)
        self.plans = self.model.plans
        self.folds = self.model.select_folds(folds)
        self.checkpoint = checkpoint
        self.tta = bool(tta)
        self.tile_overlap = None if tile_overlap is None else float(tile_overlap)  # None: the default rule
        if self.tile_overlap is not None and not 0.0 <= self.tile_overlap < 1.0:
            raise ModelError(f"tile overlap must be in [0, 1), got {self.tile_overlap}")
        # 0: tile at the plan's patch size (default: what a patch-trained instance-norm network needs); None or > 0:
        # one whole-volume pass when it fits (faster, NOT equivalent for instance-norm networks), see sliding_window
        self.whole_volume_max_voxels = whole_volume_max_voxels
        if resize_to is not None and (len(resize_to) != 3 or min(int(v) for v in resize_to) < 1):
            raise ModelError(f"--resize-to needs 3 positive sizes Z Y X, got {list(resize_to)}")
        self.resize_to = None if resize_to is None else tuple(int(v) for v in resize_to)
        self.amp = amp
        if threads is not None and (int(threads) != threads or threads < 1):
            raise ModelError(f"--threads must be a whole number >= 1, got {threads!r}")
        if str(backend or "auto").lower() == "auto" and whole_volume_max_voxels != 0 and importable("torch"):
            backend = "torch"  # a whole-volume pass: the engines' graphs have the patch size fixed
        choice = select_backend(backend, device)
        self.backend = choice.name
        self.notes: List[str] = [choice.note] if choice.note else []
        self.weights_sha256 = self.model.weights_sha256(self.folds, checkpoint)
        self.total_stride = total_stride(self.plans.strides)
        if self.backend == "torch":
            self._load_torch(device, threads)
        else:
            self._load_engine(threads)
        self.batch_tiles = int(batch_tiles or (4 if self.device.type == "cuda" else 1))

    def _load_torch(self, device: str, threads: Optional[int]) -> None:
        from RCSegNeXtCore.devices import resolve_device, set_cpu_threads
        from RCSegNeXtCore.inference.backends import TorchBackend
        self.device = resolve_device(device)
        if threads is not None:
            set_cpu_threads(threads)
        self.networks = self.model.load_networks(self.folds, self.checkpoint, self.device)
        self.settings = TorchBackend(self.networks[0], device=self.device, amp=self.amp).settings
        self._engines: List = []

    def _load_engine(self, threads: Optional[int]) -> None:
        from RCSegNeXtCore.inference.onnx_export import ensure_onnx
        if self.whole_volume_max_voxels != 0:
            raise BackendError(f"--whole-volume needs the torch backend (the {self.backend} graph has the patch size "
                               "fixed); tile (the default), or use --backend torch")
        self.device = _CPU
        self.networks = []
        self._engines = [make_backend(self.backend, onnx_file=ensure_onnx(self.model.path, fold, self.checkpoint,
                                                                          log=self.notes.append), threads=threads)
                         for fold in self.folds]
        self.settings = self._engines[0].settings

    @property
    def engine(self) -> str:
        """The engine in use, one line: e.g. 'openvino 2026.4.1 (CPU, f32, 2 threads)'."""
        return describe(self.settings)

    def backends(self) -> List:
        """One backend per fold: the engines, or the (current) torch networks wrapped on the device."""
        if self._engines:
            return self._engines
        from RCSegNeXtCore.inference.backends import TorchBackend
        return [TorchBackend(n, device=self.device, amp=self.amp) for n in self.networks]

    @classmethod
    def from_config(cls, config: PredictionConfig) -> "Predictor":
        """The predictor a PredictionConfig describes: its model folder and its Predictor options."""
        if not config.model:
            raise ModelError("no model folder given (PredictionConfig.model)")
        return cls(config.model, **config.predictor_options())

    @property
    def labels(self):
        return self.model.labels

    def metadata(self) -> dict:
        """Provenance written into every output."""
        return provenance(self.model.name, self.weights_sha256, self.engine)

    def predict(self, image: Image, progress: Optional[StageProgress] = None, source: str = "input",
                keep_probabilities: bool = False, uncertainty: bool = False) -> Prediction:
        """Label map (and on request probabilities, the review map with its score) on `image`'s grid."""
        from RCSegNeXtCore.data.preprocess import preprocess_case, restore_to_original
        from RCSegNeXtCore.data.resample import resample_image, resample_probabilities

        notify = progress or (lambda stage, done, total: None)
        array = np.asarray(image.array, dtype=np.float32)
        array = array[None] if array.ndim == 3 else array
        if array.shape[0] != self.plans.architecture.in_channels:
            raise ImageReadError(f"{source}: has {array.shape[0]} channel(s), the model needs "
                                 f"{self.plans.architecture.in_channels} ({', '.join(self.plans.channel_names.values())})")
        if not np.isfinite(array).all():
            raise ImageReadError(f"{source}: holds NaN or infinite voxel values; fix or re-export the image")
        for channel, values in enumerate(array):
            if values.size and values.min() == values.max():  # z-scoring would divide by 0; any output is noise
                which = f"channel {channel}: " if len(array) > 1 else ""
                raise ImageReadError(f"{source}: {which}constant image (every voxel = {float(values.flat[0]):g}): "
                                     "nothing to segment; check the series/export")
        original = image.geometry
        found = input_warnings(original, self.model, source)
        for message in found:
            warnings.warn(message, InputWarning, stacklevel=2)
        notify("preprocess", 0, 1)
        geometry = original
        if self.resize_to is not None and tuple(self.resize_to) != tuple(original.shape):
            geometry = resized_geometry(original, self.resize_to)
            array = resample_image(array, geometry.shape, original.spacing, geometry.spacing, order=1,
                                   order_thick_axis=1)
        case = preprocess_case(Image(array, geometry), self.plans)
        notify("preprocess", 1, 1)
        restore_logits = resampling_settings(self.plans.resampling)["restore"] == "logits"
        values, stats, *spread = predict_sliding_window(
            self.backends(), case.data, self.plans.patch_size,
            self.plans.num_classes, total_stride=self.total_stride, overlap=self.tile_overlap,
            mirror_axes=self.plans.mirror_axes if self.tta else (), batch_tiles=self.batch_tiles,
            whole_volume_max_voxels=self.whole_volume_max_voxels, device=self.device, amp=self.amp,
            progress=lambda done, total: notify("predict", done, total), logits=restore_logits,
            disagreement=uncertainty)
        notify("restore", 0, 1)
        restored = restore_to_original(values, case.properties, logits=restore_logits)
        if geometry is not original:
            restored = resample_probabilities(restored, original.shape, geometry.spacing, original.spacing)
        labels = np.argmax(restored, axis=0).astype(np.uint8)
        result = Prediction(labels, original, restored if keep_probabilities else None, stats, found)
        if uncertainty:
            self._review(result, restored, spread[0], case.properties, geometry)
        notify("restore", 1, 1)
        return result

    def _review(self, result: Prediction, restored: np.ndarray, spread: Optional[np.ndarray], properties: dict,
                geometry: Geometry) -> None:
        """Fill `result`'s review map: the final softmax's normalised entropy on the input grid, the members'
        disagreement brought back like the probabilities, the per-case scores (inference/uncertainty.py)."""
        from RCSegNeXtCore.data.resample import resample_probabilities
        from RCSegNeXtCore.inference.uncertainty import (normalized_entropy, region_mean, restore_map, score_region,
                                                         tumour_label)
        original = result.geometry
        result.uncertainty = normalized_entropy(restored)
        if spread is not None:
            spread = restore_map(spread, properties)
            if geometry is not original:   # --resize-to: linear on every axis, as the probabilities
                spread = np.clip(resample_probabilities(spread[None], original.shape, geometry.spacing,
                                                        original.spacing)[0], 0.0, 1.0)
            result.disagreement = spread.astype(np.float32, copy=False)
        mask, result.uncertainty_region = score_region(result.labels, original.spacing, tumour_label(self.labels))
        result.uncertainty_score = region_mean(result.uncertainty, mask)
        if result.disagreement is not None:
            result.disagreement_score = region_mean(result.disagreement, mask)

