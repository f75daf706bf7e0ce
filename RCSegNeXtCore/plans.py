"""plans.json: the versioned, human-readable description of how to preprocess an image and which network to build.

A model folder's plans.json is all inference needs. Training writes every override (e.g. a narrower width) into the
run's own copy. Spacing, shapes and patch sizes are in (z, y, x) order.

Training options are not part of a plan (they are `training.config.TrainingConfig`); plans.json files written by
0.1.0 kept `deep_supervision` under "architecture": on load it is taken out of the architecture and kept in
`Plans.legacy_training` (never written back), so a run folder trained with it keeps it (training/pipeline.py).

Format version 2 names every choice where RCSegNeXt 0.1 differed from the official pipeline (nnU-Net v2.1.2):
`transpose_forward` (the thickest axis first), `target_spacing_rule`, and in `resampling` the image interpolation and
how a prediction goes back to the original grid (`restore`). New plans get the official values; a version 1 file is
read with the values 0.1 used (`V1_VALUES`, `V1_RESAMPLING`), so it preprocesses and predicts as before.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from RCSegNeXtCore.errors import PlanError
from RCSegNeXtCore.files import atomic_write_json
from RCSegNeXtCore.strides import total_stride

PLANS_FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# the model's classes and its one input channel, unless a dataset.json says otherwise
DEFAULT_LABELS: Dict[str, int] = {"background": 0, "rectum": 1, "tumour": 2}
DEFAULT_CHANNELS: Dict[str, str] = {"0": "T2"}
# training options that plans.json files (and checkpoint signatures) of 0.1.0 held under "architecture"
LEGACY_TRAINING_KEYS = ("deep_supervision",)

# resampling (data/resample.py), (z, y, x) after the transpose. Images: order 3 in-plane and order 0 along an axis
# whose spacing is > anisotropy_threshold x the finest; "bspline" = skimage's resize as nnU-Net calls it (cubic
# B-spline, edge mode, clipped to the input's range), "bicubic" = torch's cubic convolution (0.1). Labels: one-hot
# linear, argmax, nearest along the thick axis; label_rule "nnunet" = exact ties go to the nearest neighbour's label
# (batchgenerators 0.25.5), "keep_classes" = ties to the lower label, a vanishing class kept at its most likely voxel
# (0.1). restore: "logits" = the network's logits resampled to the cropped
# original grid (order restore_order in-plane, restore_order_thick_axis along the thick axis), then softmax (nnU-Net's
# export); "probabilities" = the softmax resampled (0.1, linear along the thick axis too).
RESAMPLING_DEFAULTS: Dict[str, Any] = {
    "image_order": 3, "image_order_thick_axis": 0, "image_interpolation": "bspline",
    "label_order": 1, "label_order_thick_axis": 0, "label_rule": "nnunet",
    "restore": "logits", "restore_order": 1, "restore_order_thick_axis": 0, "anisotropy_threshold": 3.0}
RESAMPLING_CHOICES = {"image_interpolation": ("bspline", "bicubic"), "label_rule": ("nnunet", "keep_classes"),
                      "restore": ("logits", "probabilities")}
# what a format_version 1 file (RCSegNeXt 0.1) meant by leaving these out
V1_RESAMPLING: Dict[str, Any] = {**RESAMPLING_DEFAULTS, "image_interpolation": "bicubic", "label_rule": "keep_classes",
                                 "restore": "probabilities", "restore_order_thick_axis": 1}
V1_VALUES: Dict[str, Any] = {"transpose_forward": [0, 1, 2], "target_spacing_rule": "median"}
# target spacing: "nnunet" = the median, but the thick axis takes the 10th percentile of its spacings when the median
# spacing and shape are both anisotropic (ExperimentPlanner.determine_fullres_target_spacing); "median" (0.1);
# "given" = set explicitly (rcsegnext plan --spacing, train --target-spacing)
TARGET_SPACING_RULES = ("nnunet", "median", "given")


@dataclass
class Architecture:
    """Network hyper-parameters (paper Sections 2.1-2.3; Table 3 ablations switch the block kinds)."""

    in_channels: int = 1
    num_classes: int = 3
    base_channels: int = 32
    scale: int = 4
    expansion: int = 2
    aniso_block: str = "aninext"
    iso_block: str = "isonext"

    def network_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments of `network.build_network(kernels, strides, **...)`: the one place an Architecture
        becomes a network (plans, the network summary and the official-checkpoint import use it)."""
        return asdict(self)


def split_legacy_training(architecture: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """An "architecture" object as any version wrote it -> (the Architecture fields, the training options an
    older version kept among them, e.g. {"deep_supervision": True})."""
    current = {k: v for k, v in architecture.items() if k not in LEGACY_TRAINING_KEYS}
    return current, {k: architecture[k] for k in LEGACY_TRAINING_KEYS if k in architecture}


def resampling_settings(resampling: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Every resampling setting, from a plan's or a preprocessed case's "resampling" object of any version: one
    without "restore" was written by 0.1 (format 1, where probabilities were restored along the thick axis with
    `probability_order_thick_axis`)."""
    given = dict(resampling or {})
    if "restore" in given:
        return {**RESAMPLING_DEFAULTS, **given}
    old = {k: v for k, v in given.items() if k in RESAMPLING_DEFAULTS}
    if "probability_order_thick_axis" in given:
        old["restore_order_thick_axis"] = given["probability_order_thick_axis"]
    return {**V1_RESAMPLING, **old}


def migrate_v1(data: Dict[str, Any]) -> Dict[str, Any]:
    """A format_version 1 plans.json in today's terms: the fields version 2 added get the values 0.1 used."""
    data = {**V1_VALUES, **data}
    data["resampling"] = resampling_settings(data.get("resampling"))
    data["format_version"] = PLANS_FORMAT_VERSION
    return data


def inverse_permutation(order: List[int]) -> List[int]:
    """transpose_backward from transpose_forward: axis i of the original is axis backward[i] after the transpose."""
    return [int(v) for v in np.argsort(order)]


def current_signature(signature: Dict[str, Any]) -> Dict[str, Any]:
    """A network signature as a checkpoint of any version stored it, in today's terms (training options out of its
    architecture: they never changed the weights)."""
    architecture = signature.get("architecture")
    if not isinstance(architecture, dict):
        return signature
    return {**signature, "architecture": split_legacy_training(architecture)[0]}


@dataclass
class Plans:
    target_spacing: List[float]
    patch_size: List[int]
    kernels: List[List[int]]
    strides: List[List[int]]
    architecture: Architecture = field(default_factory=Architecture)
    batch_size: int = 2
    labels: Dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    channel_names: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CHANNELS))
    normalization: List[str] = field(default_factory=lambda: ["zscore"])  # one scheme per channel
    crop_to_nonzero: bool = True
    # how images, labels and predictions are resampled (RESAMPLING_DEFAULTS above; data/resample.py)
    resampling: Dict[str, Any] = field(default_factory=lambda: dict(RESAMPLING_DEFAULTS))
    # the image's axes in the network's order: array.transpose(transpose_forward) puts the thickest axis first
    # (nnU-Net's plans); target_spacing, patch_size, kernels, strides, mirror_axes, median_* are in that order
    transpose_forward: List[int] = field(default_factory=lambda: [0, 1, 2])
    target_spacing_rule: str = "nnunet"      # how make_plans chose target_spacing (TARGET_SPACING_RULES)
    mirror_axes: List[int] = field(default_factory=lambda: [0, 1, 2])  # axes for test-time mirroring
    median_shape: Optional[List[int]] = None
    median_spacing: Optional[List[float]] = None
    slice_orientation: Optional[str] = None  # plane of the training series (sagittal for the paper's data)
    intensity_properties: Optional[Dict[str, Any]] = None  # per channel, from the dataset fingerprint
    dataset_name: str = ""
    num_training_cases: Optional[int] = None
    format_version: int = PLANS_FORMAT_VERSION
    # read from a 0.1.0 file's architecture (LEGACY_TRAINING_KEYS), never written; training/pipeline.py honours it
    legacy_training: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- derived -----------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.architecture.num_classes

    @property
    def transpose_backward(self) -> List[int]:
        return inverse_permutation(self.transpose_forward)

    @property
    def class_names(self) -> Dict[int, str]:
        return {int(v): k for k, v in self.labels.items()}

    def build_network(self):
        """The torch module this plan describes (random weights)."""
        from RCSegNeXtCore.network import build_network
        return build_network(self.kernels, self.strides, **self.architecture.network_kwargs())

    def network_signature(self) -> Dict[str, Any]:
        """What a checkpoint must match to load into this plan's network."""
        return {"kernels": [list(k) for k in self.kernels], "strides": [list(s) for s in self.strides],
                "architecture": asdict(self.architecture)}

    def with_overrides(self, **architecture_or_plan_fields) -> "Plans":
        """A copy with some fields replaced; Architecture field names are accepted too (e.g. base_channels=8)."""
        arch_names = {f.name for f in fields(Architecture)}
        arch = {k: v for k, v in architecture_or_plan_fields.items() if k in arch_names and v is not None}
        rest = {k: v for k, v in architecture_or_plan_fields.items() if k not in arch_names and v is not None}
        unknown = set(rest) - {f.name for f in fields(Plans)}
        if unknown:
            raise PlanError(f"unknown plan field(s): {', '.join(sorted(unknown))}")
        return replace(self, architecture=replace(self.architecture, **arch), **rest)

    # -- serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        from RCSegNeXtCore import __version__
        data = asdict(self)
        del data["legacy_training"]
        data["software_version"] = __version__
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "plans") -> "Plans":
        if not isinstance(data, dict):
            raise PlanError(f"{source}: expected a JSON object")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise PlanError(f"{source}: format_version {version!r} is not supported (this software reads "
                            f"versions {', '.join(map(str, READABLE_VERSIONS))}); re-create it with `rcsegnext plan`")
        if version == 1:
            data = migrate_v1(data)
        known = {f.name for f in fields(cls)}
        missing = [n for n in ("target_spacing", "patch_size", "kernels", "strides") if n not in data]
        if missing:
            raise PlanError(f"{source}: missing required field(s) {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known and k != "legacy_training"}
        if not isinstance(data.get("architecture", {}), dict):
            raise PlanError(f"{source}: 'architecture' must be a JSON object")
        architecture, values["legacy_training"] = split_legacy_training(data.get("architecture", {}))
        if not isinstance(values.get("resampling", {}), dict):
            raise PlanError(f"{source}: 'resampling' must be a JSON object")
        values["resampling"] = {**RESAMPLING_DEFAULTS, **values.get("resampling", {})}
        try:
            values["architecture"] = Architecture(**architecture)
        except TypeError as exc:
            raise PlanError(f"{source}: invalid 'architecture': {exc}") from None
        plans = cls(**values)
        plans.validate(source)
        return plans

    def validate(self, source: str = "plans") -> None:
        def triple(name, value, kind):
            if len(value) != 3 or not all(isinstance(v, kind) and v > 0 for v in value):
                raise PlanError(f"{source}: {name} must be 3 positive {kind.__name__}s in (z, y, x), got {value}")
        triple("target_spacing", [float(v) for v in self.target_spacing], float)
        triple("patch_size", self.patch_size, int)
        if len(self.kernels) != len(self.strides) + 1:
            raise PlanError(f"{source}: {len(self.kernels)} kernels for {len(self.strides)} strides; "
                            "a plan has one kernel more than strides")
        total = total_stride(self.strides)
        if any(p % t for p, t in zip(self.patch_size, total)):
            raise PlanError(f"{source}: patch size {self.patch_size} is not divisible by the total stride {total}")
        if sorted(self.labels.values()) != list(range(len(self.labels))):
            raise PlanError(f"{source}: label values {sorted(self.labels.values())} must be 0..N-1")
        if len(self.labels) != self.architecture.num_classes:
            raise PlanError(f"{source}: {len(self.labels)} labels but architecture.num_classes = "
                            f"{self.architecture.num_classes}")
        if len(self.channel_names) != self.architecture.in_channels:
            raise PlanError(f"{source}: {len(self.channel_names)} channels but architecture.in_channels = "
                            f"{self.architecture.in_channels}")
        if sorted(int(a) for a in self.transpose_forward) != [0, 1, 2] or len(self.transpose_forward) != 3:
            raise PlanError(f"{source}: transpose_forward {self.transpose_forward} must order the axes 0, 1, 2")
        if self.target_spacing_rule not in TARGET_SPACING_RULES:
            raise PlanError(f"{source}: target_spacing_rule {self.target_spacing_rule!r}: use one of "
                            f"{', '.join(TARGET_SPACING_RULES)}")
        unknown = sorted(set(self.resampling) - set(RESAMPLING_DEFAULTS))
        if unknown:
            raise PlanError(f"{source}: unknown resampling setting(s) {', '.join(unknown)}; known: "
                            f"{', '.join(RESAMPLING_DEFAULTS)}")
        for name, choices in RESAMPLING_CHOICES.items():
            if self.resampling.get(name, RESAMPLING_DEFAULTS[name]) not in choices:
                raise PlanError(f"{source}: resampling {name} {self.resampling[name]!r}: use one of "
                                f"{', '.join(choices)}")

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plans":
        path = Path(path)
        if path.is_dir():
            path = path / "plans.json"
        if not path.is_file():
            raise PlanError(f"{path}: plans file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(path))
