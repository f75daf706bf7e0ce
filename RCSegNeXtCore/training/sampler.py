"""Patch sampling from preprocessed cases with foreground oversampling (nnU-Net's recipe, Section 3.1).

A forced patch is centred on a random voxel of a random foreground class present in the case (tumour included), the
others are placed uniformly. Which patches are forced (`oversample_rule`): "batch_position" (nnU-Net v2.1, the
default): sample i of a batch of B is forced iff not i < round(B (1 - oversample_foreground)), i.e. the last
B - round(0.67 B) with 0.33 (1 of 2 at B = 2, 1 of 4 at B = 4); under DDP the rule is applied to the global batch
and each rank forces the positions of its slice of it (`global_batch`, `batch_offset`). "random" (RCSegNeXt 0.1):
each patch forced with probability `oversample_foreground`. Cases smaller than the patch are padded
with zeros (labels: background). Where a window may lie (`placement`): "nnunet" (nnU-Net 2.1's get_bbox, the
default): with `margin` = need_to_pad (region minus final patch, grown to cover a case smaller than the region), a
random window starts in [-margin // 2, shape + margin // 2 + margin % 2 - region], a forced one at the chosen voxel
minus half the region, bounded below only (near the upper edge it runs past the case, zero-padded); "inside"
(RCSegNeXt 0.1): both within [-margin // 2, shape - region + margin // 2], a smaller case centred. With
`jitter_foreground` the chosen voxel lands anywhere in the patch instead of at its centre: in short runs (the demo)
centred patches teach the network "foreground is at the patch centre".
Draws come from one numpy Generator whose state is checkpointed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

OVERSAMPLE_RULES = ("batch_position", "random")
PLACEMENTS = ("nnunet", "inside")


def forced_positions(batch: int, oversample: float, global_batch: Optional[int] = None,
                     offset: int = 0) -> List[bool]:
    """nnU-Net's rule for the samples offset .. offset + batch - 1 of a global batch (default: this batch alone):
    position i is forced onto foreground iff not i < round(global_batch * (1 - oversample))."""
    total = batch if global_batch is None else global_batch
    first_forced = round(total * (1 - oversample))
    return [not i < first_forced for i in range(offset, offset + batch)]


def rank_slice(global_batch: int, rank: int, world_size: int) -> Tuple[int, int]:
    """(offset, size) of a rank's share of the global batch, as nnU-Net v2.1.2 splits it: ceil(B / world) samples
    per rank, the last ranks what is left. Where that would leave a rank without samples (4 over 3 ranks: nnU-Net's
    2, 2, 0) the batch is spread evenly instead (2, 1, 1); a global batch smaller than the number of ranks grows to
    one sample per rank (`global_batch_size`)."""
    total = global_batch_size(global_batch, world_size)
    per = -(-total // world_size)
    if (world_size - 1) * per < total:
        offset = rank * per
        return offset, min(per, total - offset)
    base, extra = divmod(total, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def global_batch_size(global_batch: int, world_size: int) -> int:
    """The global batch the ranks train: the plan's, at least one sample per rank."""
    return max(int(global_batch), int(world_size))


@dataclass
class TrainingCase:
    case_id: str
    data: np.ndarray                    # (C, z, y, x) float32, possibly a memory map
    label: np.ndarray                   # (z, y, x) integer
    class_locations: Dict[int, np.ndarray]  # class -> (N, 3) voxel indices (z, y, x)


def class_locations_from(properties: dict | None, label: np.ndarray, max_per_class: int = 10000,
                         seed: int = 1234) -> Dict[int, np.ndarray]:
    """Foreground voxel lists from the cache's `class_locations` property, or computed from the label."""
    out: Dict[int, np.ndarray] = {}
    stored = (properties or {}).get("class_locations")
    if stored:
        for key, coords in stored.items():
            arr = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
            if int(key) > 0 and len(arr):
                out[int(key)] = arr
        return out
    rng = np.random.default_rng(seed)
    for value in np.unique(np.asarray(label)):
        if value <= 0:
            continue
        coords = np.argwhere(np.asarray(label) == value)
        if len(coords) > max_per_class:
            coords = coords[rng.choice(len(coords), max_per_class, replace=False)]
        out[int(value)] = coords
    return out


class PatchSampler:
    """`images, labels, forced = sampler.batch(n)` -> ([n,C,*size] float32, [n,*size] int16, [n] bool)."""

    def __init__(self, cases: Sequence[TrainingCase], size: Sequence[int], oversample_foreground: float = 0.33,
                 seed: int = 0, jitter_foreground: bool = False, margin: Optional[Sequence[int]] = None,
                 oversample_rule: str = "batch_position", global_batch: Optional[int] = None, batch_offset: int = 0,
                 placement: str = "nnunet"):
        if not cases:
            raise ValueError("no training cases to sample from")
        if oversample_rule not in OVERSAMPLE_RULES:
            raise ValueError(f"oversample_rule must be one of {', '.join(map(repr, OVERSAMPLE_RULES))}, "
                             f"not {oversample_rule!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"sampler_placement must be one of {', '.join(map(repr, PLACEMENTS))}, not {placement!r}")
        self.placement = placement
        self.cases, self.size = list(cases), [int(s) for s in size]
        self.oversample = oversample_foreground
        self.oversample_rule = oversample_rule
        self.global_batch, self.batch_offset = global_batch, batch_offset
        self.jitter = jitter_foreground
        # margin: nnU-Net's need_to_pad, the sampled (context) region minus the final patch: a window may leave the
        # case by half of it on each side, so that the final patch, cropped from the window's centre after the
        # spatial augmentation, reaches the case's borders
        self.margin = [0] * len(self.size) if margin is None else [max(0, int(m)) for m in margin]
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, labels, forced = [], [], []
        positions = forced_positions(n, self.oversample, self.global_batch, self.batch_offset) \
            if self.oversample_rule == "batch_position" else None
        for i in range(n):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            force = positions[i] if positions is not None else bool(self.rng.random() < self.oversample)
            image, label, used = self.patch(case, force)
            images.append(image)
            labels.append(label)
            forced.append(used)
        return np.stack(images), np.stack(labels), np.asarray(forced)

    def patch(self, case: TrainingCase, force_foreground: bool) -> Tuple[np.ndarray, np.ndarray, bool]:
        shape = case.label.shape
        centre: Optional[List[int]] = None
        if force_foreground and case.class_locations:
            classes = sorted(case.class_locations)
            cls = classes[int(self.rng.integers(len(classes)))]
            coords = case.class_locations[cls]
            centre = [int(v) for v in coords[int(self.rng.integers(len(coords)))]]
        starts = [self._start(axis, s, p, need, centre)
                  for axis, (s, p, need) in enumerate(zip(shape, self.size, self.margin))]
        image = _crop(case.data, starts, self.size, leading=1)
        label = _crop(case.label, starts, self.size, leading=0)
        return image.astype(np.float32, copy=False), label.astype(np.int16, copy=False), centre is not None

    def _start(self, axis: int, s: int, p: int, need: int, centre: Optional[List[int]]) -> int:
        """Where the window of size p starts on an axis of length s (module docstring: `placement`)."""
        if self.placement == "nnunet":
            need = max(need, p - s)          # a case smaller than the region: padded on both sides
            lo, hi = -(need // 2), s + need // 2 + need % 2 - p
            if centre is not None and self.jitter:
                a, b = max(centre[axis] - p + need // 2 + 1, lo), min(centre[axis] - need // 2, hi)
                return int(self.rng.integers(a, b + 1)) if a <= b else max(centre[axis] - p // 2, lo)
            if centre is not None:
                return max(lo, centre[axis] - p // 2)
            return int(self.rng.integers(lo, hi + 1))
        m = need // 2
        lo, hi = -m, s - p + m              # the window may leave the case by the margin (zero padding)
        small = hi < lo                     # case smaller than the final patch: padded
        lo, hi = min(lo, hi), max(lo, hi)
        if small and centre is None:
            return (s - p) // 2
        if centre is not None and self.jitter:
            # the voxel anywhere in the final (margin-cropped) patch, uniformly
            a, b = max(centre[axis] - p + m + 1, lo), min(centre[axis] - m, hi)
            return int(self.rng.integers(a, b + 1)) if a <= b else min(max(centre[axis] - p // 2, lo), hi)
        if centre is not None:
            return min(max(centre[axis] - p // 2, lo), hi)
        return int(self.rng.integers(lo, hi + 1))


def _crop(array: np.ndarray, starts: Sequence[int], size: Sequence[int], leading: int) -> np.ndarray:
    """array[..., starts:starts+size] with zero padding where the window leaves the array."""
    spatial = array.shape[leading:]
    src, dst = [], []
    for s, start, p in zip(spatial, starts, size):
        lo, hi = max(start, 0), min(start + p, s)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out = np.zeros(array.shape[:leading] + tuple(size), dtype=array.dtype)
    lead = (slice(None),) * leading
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


def numpy_rng_state(rng: np.random.Generator) -> dict:
    """JSON/weights_only-safe copy of a Generator's state (128-bit integers as strings)."""
    return _stringify(rng.bit_generator.state)


def set_numpy_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = _unstringify(state)


def _stringify(obj):
    if isinstance(obj, dict):
        return {k: _stringify(v) for k, v in obj.items()}
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return f"int:{int(obj)}"
    return obj


def _unstringify(obj):
    if isinstance(obj, dict):
        return {k: _unstringify(v) for k, v in obj.items()}
    if isinstance(obj, str) and obj.startswith("int:"):
        return int(obj[4:])
    return obj
