"""Augmentation parity: RCSegNeXt's Augmenter against batchgenerators v1's transforms as nnU-Net v2.1.2 configures them
(`nnUNetTrainer.get_training_transforms`, the official RCSegNeXt trainer's pipeline). Runs in the parity environment
(environment.py):

    python -m benchmarks.parity.augmentation --draws 10000 --json OUT.json

For each transform, `--draws` samples on each side (fixed seeds) of a probe from which the drawn parameter can be
read back from the output (zeros -> noise SD; an impulse -> blur sigma per axis; a constant -> brightness; a ramp ->
contrast factor and gamma; a coded volume -> mirror axes; a labelled box and marker -> rotation, scale and whether z
changed), whether it fired, and simple output statistics. Continuous quantities: two-sample Kolmogorov-Smirnov;
firing (and categories): chi-square on the contingency table. A test fails at p < 0.01; Holm's correction over all
tests is reported beside. Also: the configuration itself (probabilities and ranges read from nnU-Net's transform
objects), the dummy-2D switch (nnU-Net's configure function vs ours on several patches), and deterministic checks at
fixed parameters against batchgenerators' own functions (maximum absolute difference). `--sensitivity` also runs our
RCSegNeXt 0.1 variants through the same tests (they should fail where the rows were fixed).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from RCSegNeXtCore.training.augment import AugmentConfig, Augmenter, use_dummy_2d  # noqa: E402
from RCSegNeXtCore.training.augment import intensity as ours_intensity  # noqa: E402
from RCSegNeXtCore.training.augment import spatial as ours_spatial  # noqa: E402

ALPHA = 0.01
OLD_VARIANTS = dict(spatial_scaling="all_axes_uniform", noise_sd="sqrt", intensity="0.1",
                    interpolation="linear_nearest")
PATCH_2D, CONTEXT_2D = [4, 16, 16], [4, 24, 24]        # dummy 2D: max(patch) / patch[0] = 4 > 3
PATCH_3D, CONTEXT_3D = [12, 12, 12], [18, 18, 18]      # isotropic: rotation +-30 degrees about every axis


# -- the reference: nnU-Net v2.1.2's transforms ----------------------------------------------------------------------
def nnunet_pipeline(patch: List[int]):
    """(transforms by class name, do_dummy_2d, rotation ranges) exactly as nnUNetTrainer sets them up for `patch`."""
    from types import SimpleNamespace

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    fake = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=patch),
                           print_to_log_file=lambda *a, **k: None)
    rotation, dummy_2d, _, mirror_axes = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(fake)
    compose = nnUNetTrainer.get_training_transforms(patch, rotation, None, mirror_axes, dummy_2d, 3, 1, -1, None,
                                                    False, None, None, None)
    by_name: Dict[str, list] = {}
    for t in compose.transforms:
        by_name.setdefault(type(t).__name__, []).append(t)
    return by_name, dummy_2d, rotation


def seed_reference(seed: int) -> None:
    np.random.seed(seed)
    random.seed(seed)


def theirs(transforms, data: np.ndarray, seg: Optional[np.ndarray] = None, chunk: int = 500):
    """Run batchgenerators transforms (a list, in order) over a batch, in chunks (copies: they work in place)."""
    outs, segs = [], []
    for start in range(0, len(data), chunk):
        d = {"data": data[start:start + chunk].copy()}
        if seg is not None:
            d["seg"] = seg[start:start + chunk].copy()
        for t in transforms:
            d = t(**d)
        outs.append(d["data"])
        if seg is not None:
            segs.append(d["seg"])
    return np.concatenate(outs), (np.concatenate(segs) if seg is not None else None)


def ours(config: AugmentConfig, patch: List[int], seed: int, fn: Callable, *arrays: np.ndarray, chunk: int = 2000):
    """Our Augmenter (one generator over all chunks) applying fn(augmenter, *tensors) chunk by chunk."""
    aug = Augmenter(patch, config, torch.Generator().manual_seed(seed))
    results = []
    for start in range(0, len(arrays[0]), chunk):
        out = fn(aug, *[torch.from_numpy(a[start:start + chunk].copy()) for a in arrays])
        results.append(out if isinstance(out, tuple) else (out,))
    return [torch.cat([r[i] for r in results]).numpy() for i in range(len(results[0]))]


def only(config: AugmentConfig, **on) -> AugmentConfig:
    """`config` with every transform off but those given."""
    off = {k: 0.0 for k in config.__dataclass_fields__ if k.startswith("p_")
           and k not in ("p_blur_per_channel", "p_low_res_per_channel")}
    return replace(config, **{**off, **on})


# -- statistics ----------------------------------------------------------------------------------------------------
class Report:
    def __init__(self):
        self.tests: List[dict] = []
        self.firing: List[dict] = []
        self.checks: List[dict] = []

    def ks(self, transform: str, name: str, a, b) -> None:
        """Two-sample KS on values rounded to 4 significant digits: many statistics take a few discrete values
        (e.g. one per down-sampled shape), computed in float32 on each side in a different order; unrounded, that
        noise would break their ties one-sidedly and inflate D."""
        from scipy.stats import ks_2samp
        a, b = _significant(np.asarray(a, float)), _significant(np.asarray(b, float))
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if len(a) < 5 or len(b) < 5:
            return self._add(transform, name, "ks", len(a), len(b), float("nan"), 1.0)
        r = ks_2samp(a, b)
        self._add(transform, name, "ks", len(a), len(b), float(r.statistic), float(r.pvalue),
                  ours_mean=float(a.mean()), theirs_mean=float(b.mean()))

    def categories(self, transform: str, name: str, a, b, expected: Optional[Dict] = None) -> None:
        """Chi-square on the 2 x k table of category counts (a, b: category labels per sample)."""
        from scipy.stats import chi2_contingency
        a, b = np.asarray(a), np.asarray(b)
        cats = sorted(set(a.tolist()) | set(b.tolist()))
        table = np.array([[np.sum(a == c) for c in cats], [np.sum(b == c) for c in cats]])
        if len(cats) < 2:
            stat, p = 0.0, 1.0
        else:
            stat, p = chi2_contingency(table, correction=False)[:2]
        self._add(transform, name, "chi2", len(a), len(b), float(stat), float(p),
                  ours=dict(zip(map(str, cats), (table[0] / len(a)).round(4).tolist())),
                  theirs=dict(zip(map(str, cats), (table[1] / len(b)).round(4).tolist())))
        if expected is not None:
            self.firing.append({"transform": transform, "event": name, "expected": expected,
                                "ours": float(np.mean(a == 1)) if set(cats) <= {0, 1} else None,
                                "theirs": float(np.mean(b == 1)) if set(cats) <= {0, 1} else None, "p": float(p)})

    def fired(self, transform: str, name: str, a, b, expected: float) -> None:
        self.categories(transform, name, np.asarray(a).astype(int), np.asarray(b).astype(int), expected=expected)

    def check(self, name: str, value: float, tolerance: float) -> None:
        self.checks.append({"check": name, "max_abs_difference": float(value), "tolerance": tolerance,
                            "ok": bool(value <= tolerance)})

    def _add(self, transform, name, kind, n_ours, n_theirs, statistic, p, **extra) -> None:
        self.tests.append({"transform": transform, "test": name, "kind": kind, "n_ours": int(n_ours),
                           "n_theirs": int(n_theirs), "statistic": statistic, "p": p, **extra})

    def summary(self) -> dict:
        ps = sorted((t["p"] for t in self.tests))
        m = len(ps)
        holm = 0
        for i, p in enumerate(ps):                    # Holm step-down at ALPHA
            if p < ALPHA / (m - i):
                holm += 1
            else:
                break
        return {"tests": len(self.tests), "failed": sum(t["p"] < ALPHA for t in self.tests), "failed_holm": holm,
                "checks_failed": sum(not c["ok"] for c in self.checks)}


def _significant(x: np.ndarray, digits: int = 4) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(x))))
        return np.where(np.isfinite(scale) & (x != 0), np.round(x * scale) / scale, x)


# -- per-transform experiments: (probe, our call, their transforms, statistics) ---------------------------------------
def _ramp(n: int, lo: float, hi: float) -> np.ndarray:
    return np.linspace(lo, hi, n, dtype=np.float32)


def spatial_probe(context: List[int], dummy_2d: bool) -> Tuple[np.ndarray, np.ndarray]:
    """image [C, Z, Y, X], label [1, Z, Y, X]: a class-1 box off the axes' symmetry, a class-2 marker above it; the
    image a ramp plus the labels; in dummy 2D a second channel holding each slice's number + 1 (and the marker on the
    even slices only), so any mixing of slices shows."""
    z, y, x = context
    label = np.zeros((z, y, x), np.int16)
    cy, cx = y // 2, x // 2
    if dummy_2d:
        label[:, cy - 3:cy + 3, cx - 6:cx + 5] = 1
        label[0::2, cy - 7:cy - 5, cx - 1:cx + 1] = 2
    else:
        cz = z // 2
        label[cz - 4:cz + 4, cy - 3:cy + 3, cx - 5:cx + 4] = 1
        label[cz - 1:cz + 1, cy - 7:cy - 5, cx - 1:cx + 1] = 2
    zz, yy, xx = np.indices((z, y, x), dtype=np.float32)
    image = (yy + 2 * xx) / (y + 2 * x) + 3 * (label == 1) + 5 * (label == 2)
    channels = [image, zz + 1] if dummy_2d else [image]
    return np.stack(channels).astype(np.float32), label[None]


def spatial_stats(image: np.ndarray, label: np.ndarray, base_image, base_label,
                  dummy_2d: bool) -> Dict[str, np.ndarray]:
    """Per sample: changed (not the centre crop), class-1 size (per axis extents), marker angle / radius / z offset
    (from the patch centre), image mean and SD; dummy 2D: marker on an odd slice, slices mixed (channel 1 holding
    another value than its own slice's number or 0 outside)."""
    n = len(image)
    lab, img = label.reshape(n, *label.shape[-3:]), image[:, 0]
    changed = ~(np.all(np.isclose(img, base_image[None], atol=1e-4), axis=(1, 2, 3))
                & np.all(lab == base_label[None], axis=(1, 2, 3)))
    centre = (np.array(lab.shape[1:]) - 1) / 2
    out = {"changed": changed, "class1_voxels": (lab == 1).sum((1, 2, 3)).astype(float),
           "image_mean": img.mean((1, 2, 3)), "image_sd": img.std((1, 2, 3))}
    marker = lab == 2
    count = marker.sum((1, 2, 3))
    grid = np.indices(lab.shape[1:]).reshape(3, -1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        cz, cy, cx = [(marker.reshape(n, -1) * g).sum(1) / count - c for g, c in zip(grid, centre)]
    out["marker_angle"] = np.where(count > 0, np.arctan2(cy, cx), np.nan)
    out["marker_radius"] = np.where(count > 0, np.hypot(cy, cx), np.nan)
    if dummy_2d:
        out["marker_on_odd_slice"] = marker[:, 1::2].any((1, 2, 3))
        own = np.arange(1, lab.shape[1] + 1, dtype=np.float32)[None, :, None, None]
        code = image[:, 1]
        out["slices_mixed"] = ~((np.abs(code) < 1e-3) | (np.abs(code - own) < 1e-3)).all((1, 2, 3))
    else:
        out["marker_z_offset"] = np.where(count > 0, cz, np.nan)
        one = lab == 1
        for axis, name in enumerate("zyx"):
            other = tuple(a for a in (1, 2, 3) if a != axis + 1)
            out[f"class1_extent_{name}"] = one.any(other).sum(1).astype(float)
    return out


def run_spatial(report: Report, our_config: AugmentConfig, n: int, seed: int, dummy_2d: bool, tag: str) -> None:
    patch, context = (PATCH_2D, CONTEXT_2D) if dummy_2d else (PATCH_3D, CONTEXT_3D)
    transforms, their_dummy, _ = nnunet_pipeline(patch)
    assert their_dummy == dummy_2d
    image, label = spatial_probe(context, dummy_2d)
    data, seg = np.repeat(image[None], n, 0), np.repeat(label[None], n, 0)
    chain = transforms.get("Convert3DTo2DTransform", []) + transforms["SpatialTransform"] + \
        transforms.get("Convert2DTo3DTransform", []) + transforms["RemoveLabelTransform"]
    seed_reference(seed)
    t_img, t_lab = theirs(chain, data, seg)
    cfg = only(replace(our_config, dummy_2d=dummy_2d), p_rotation=our_config.p_rotation, p_scale=our_config.p_scale)
    o_img, o_lab = ours(cfg, patch, seed, lambda a, x, y: a.spatial(x, y[:, 0]), data, seg)
    start = [(c - p) // 2 for c, p in zip(context, patch)]
    crop = tuple(slice(s, s + p) for s, p in zip(start, patch))
    base_image, base_label = image[0][crop], label[0][crop]            # channel 0
    so = spatial_stats(o_img, o_lab, base_image, base_label, dummy_2d)
    st = spatial_stats(t_img, t_lab, base_image, base_label, dummy_2d)
    name = f"spatial {tag}"
    report.fired(name, "fired (rotation or scaling)", so["changed"], st["changed"],
                 expected=1 - (1 - our_config.p_rotation) * (1 - our_config.p_scale))
    if dummy_2d:
        report.fired(name, "a slice's label moved to another slice", so["marker_on_odd_slice"],
                     st["marker_on_odd_slice"], expected=0.0)
        report.fired(name, "slices mixed (image)", so["slices_mixed"], st["slices_mixed"], expected=0.0)
    for key in so:
        if key in ("changed", "marker_on_odd_slice", "slices_mixed"):
            continue
        report.ks(name, f"{key} (fired)", so[key][so["changed"]], st[key][st["changed"]])


def run_noise(report: Report, our_config: AugmentConfig, n: int, seed: int, transforms) -> None:
    x = np.zeros((n, 1, 4, 16, 16), np.float32)
    seed_reference(seed)
    t, _ = theirs(transforms["GaussianNoiseTransform"], x)
    (o,) = ours(only(our_config, p_noise=our_config.p_noise), PATCH_2D, seed, lambda a, v: a.noise(v), x)
    fo, ft = (o != 0).reshape(n, -1).any(1), (t != 0).reshape(n, -1).any(1)
    report.fired("noise", "fired", fo, ft, expected=our_config.p_noise)
    report.ks("noise", "noise SD (fired)", o[fo].reshape(fo.sum(), -1).std(1), t[ft].reshape(ft.sum(), -1).std(1))


def run_blur(report: Report, our_config: AugmentConfig, n: int, seed: int, transforms) -> None:
    x = np.zeros((n, 2, 9, 9, 9), np.float32)
    x[:, :, 4, 4, 4] = 1.0
    seed_reference(seed)
    t, _ = theirs(transforms["GaussianBlurTransform"], x)
    (o,) = ours(only(our_config, p_blur=our_config.p_blur), PATCH_2D, seed, lambda a, v: a.blur(v), x)
    r2 = (np.arange(9) - 4.0) ** 2

    def stats(out):
        fired = (out != x[:len(out)]).reshape(n, 2, -1).any(2)
        variance = {axis: (out.sum(tuple(a for a in (2, 3, 4) if a != axis)) * r2).sum(-1)
                    for axis in (2, 3, 4)}
        return fired, variance, out[:, :, 4, 4, 4]
    fo, vo, co = stats(o)
    ft, vt, ct = stats(t)
    report.fired("blur", "fired (sample and channel 0)", fo[:, 0], ft[:, 0],
                 expected=our_config.p_blur * our_config.p_blur_per_channel)
    report.categories("blur", "channels blurred (none / 0 / 1 / both)", fo[:, 0] + 2 * fo[:, 1],
                      ft[:, 0] + 2 * ft[:, 1])
    report.ks("blur", "variance along y = sigma^2 (blurred channels)", vo[3][fo], vt[3][ft])
    report.ks("blur", "variance along z minus along y (blurred channels; 0: every axis)", (vo[2] - vo[3])[fo],
              (vt[2] - vt[3])[ft])
    report.ks("blur", "centre value (blurred channels)", co[fo], ct[ft])


def run_brightness(report: Report, our_config: AugmentConfig, n: int, seed: int, transforms) -> None:
    x = np.ones((n, 2, 2, 4, 4), np.float32)
    seed_reference(seed)
    t, _ = theirs(transforms["BrightnessMultiplicativeTransform"], x)
    (o,) = ours(only(our_config, p_brightness=our_config.p_brightness), PATCH_2D, seed,
                lambda a, v: a.brightness(v), x)
    fo, ft = (o != 1).reshape(n, -1).any(1), (t != 1).reshape(n, -1).any(1)
    report.fired("brightness", "fired", fo, ft, expected=our_config.p_brightness)
    for c in (0, 1):
        report.ks("brightness", f"factor channel {c} (fired)", o[fo, c].mean((1, 2, 3)), t[ft, c].mean((1, 2, 3)))
    report.ks("brightness", "factor ratio channel 1 / 0 (fired)", o[fo, 1, 0, 0, 0] / o[fo, 0, 0, 0, 0],
              t[ft, 1, 0, 0, 0] / t[ft, 0, 0, 0, 0])


def run_contrast(report: Report, our_config: AugmentConfig, n: int, seed: int, transforms) -> None:
    probe = np.stack([_ramp(64, -1, 1), _ramp(64, 0, 3) ** 2]).reshape(2, 2, 4, 8)
    x = np.repeat(probe[None], n, 0).astype(np.float32)
    seed_reference(seed)
    t, _ = theirs(transforms["ContrastAugmentationTransform"], x)
    (o,) = ours(only(our_config, p_contrast=our_config.p_contrast), PATCH_2D, seed,
                lambda a, v: a.contrast(v), x)
    flat = probe.reshape(2, -1)
    mean = flat.mean(1)
    i = [int(np.argmin(np.abs(flat[0] - 0.5))), int(np.argmin(np.abs(flat[1] - mean[1])) + 3)]

    def factors(out):
        f = out.reshape(n, 2, -1)
        return np.stack([(f[:, c, i[c]] - mean[c]) / (flat[c, i[c]] - mean[c]) for c in (0, 1)], 1)
    fo, ft = (np.abs(o - x) > 1e-6).reshape(n, -1).any(1), (np.abs(t - x) > 1e-6).reshape(n, -1).any(1)
    report.fired("contrast", "fired", fo, ft, expected=our_config.p_contrast)
    ko, kt = factors(o), factors(t)
    for c in (0, 1):
        report.ks("contrast", f"factor channel {c} (fired)", ko[fo, c], kt[ft, c])
    report.ks("contrast", "output SD channel 1 (fired)", o[fo, 1].std((1, 2, 3)), t[ft, 1].std((1, 2, 3)))


def run_low_res(report: Report, our_config: AugmentConfig, n: int, seed: int, dummy_2d: bool, tag: str) -> None:
    patch = PATCH_2D if dummy_2d else PATCH_3D
    transforms, _, _ = nnunet_pipeline(patch)
    shape = [8, 16, 16] if dummy_2d else [12, 12, 12]
    probe = np.random.default_rng(7).normal(size=(2, *shape)).astype(np.float32)
    x = np.repeat(probe[None], n, 0)
    seed_reference(seed)
    t, _ = theirs(transforms["SimulateLowResolutionTransform"], x)
    cfg = only(replace(our_config, dummy_2d=dummy_2d), p_low_res=our_config.p_low_res)
    (o,) = ours(cfg, patch, seed, lambda a, v: a.low_res(v), x)

    def stats(out):
        changed = (out != x).reshape(n, 2, -1).any(2)
        tv = {name: np.abs(np.diff(out, axis=axis)).mean((2, 3, 4)) for axis, name in zip((2, 3, 4), "zyx")}
        return changed, tv, out.std((2, 3, 4))
    co, tvo, so = stats(o)
    ct, tvt, st = stats(t)
    name = f"low resolution {tag}"
    report.categories(name, "channels changed (none / 0 / 1 / both)", co[:, 0] + 2 * co[:, 1],
                      ct[:, 0] + 2 * ct[:, 1])
    report.fired(name, "fired (channel 0 changed)", co[:, 0], ct[:, 0], expected=float("nan"))
    for axis in "zyx":
        report.ks(name, f"mean |step| along {axis} (changed channels)", tvo[axis][co], tvt[axis][ct])
    report.ks(name, "output SD (changed channels)", so[co], st[ct])


def run_gamma(report: Report, our_config: AugmentConfig, n: int, seed: int, transforms, invert: bool) -> None:
    probe = np.stack([_ramp(65, 0, 1), _ramp(65, -2, 3)]).reshape(2, 1, 1, 65)
    x = np.repeat(probe[None], n, 0).astype(np.float32)
    gamma_transforms = transforms["GammaTransform"]
    chosen = [t for t in gamma_transforms if t.invert_image == invert]
    seed_reference(seed)
    t, _ = theirs(chosen, x)
    p = our_config.p_gamma_inverted if invert else our_config.p_gamma
    key = "p_gamma_inverted" if invert else "p_gamma"
    (o,) = ours(only(our_config, **{key: p}), PATCH_2D, seed, lambda a, v: a.gamma(v, invert), x)

    def gammas(out):
        f = out.reshape(n, 2, 65)
        if invert:
            r = (f[:, :, 32] - f[:, :, 64]) / (f[:, :, 0] - f[:, :, 64])
        else:
            r = (f[:, :, 32] - f[:, :, 0]) / (f[:, :, 64] - f[:, :, 0])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(r) / np.log(0.5)
    fo, ft = (o != x).reshape(n, -1).any(1), (t != x).reshape(n, -1).any(1)
    name = "gamma (inverted)" if invert else "gamma"
    report.fired(name, "fired", fo, ft, expected=p)
    go, gt = gammas(o), gammas(t)
    for c in (0, 1):
        report.ks(name, f"gamma channel {c} (fired)", go[fo, c], gt[ft, c])
        report.fired(name, f"gamma channel {c} below 1 (fired)", go[fo, c] < 1, gt[ft, c] < 1, expected=0.5)
    kept = max(np.abs(o[fo].reshape(-1, 2, 65).mean(2) - probe.reshape(2, 65).mean(1)).max(initial=0),
               np.abs(o[fo].reshape(-1, 2, 65).std(2) - probe.reshape(2, 65).std(1)).max(initial=0))
    report.check(f"{name}: our output keeps each channel's mean and SD", kept, 1e-4)


def run_mirror(report: Report, our_config: AugmentConfig, n: int, seed: int, transforms) -> None:
    probe = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    x = np.repeat(probe[None], n, 0)
    seg = x.astype(np.int16)
    seed_reference(seed)
    t, ts = theirs(transforms["MirrorTransform"], x, seg)
    o, os_ = ours(only(our_config, p_mirror=our_config.p_mirror), PATCH_2D, seed,
                  lambda a, v, s: a.mirror(v, s[:, 0]), x, seg)
    variants = {code: np.flip(probe[0], tuple(a for a in range(3) if code >> a & 1)) for code in range(8)}

    def codes(out):
        c = np.full(n, -1)
        for code, v in variants.items():
            c[np.all(out.reshape(n, 2, 3, 4) == v, axis=(1, 2, 3))] = code
        return c
    co, ct = codes(o), codes(t)
    report.categories("mirror", "flipped axes (8 combinations)", co, ct)
    for a in range(3):
        report.fired("mirror", f"axis {a} flipped", (co >> a) & 1, (ct >> a) & 1, expected=our_config.p_mirror)
    report.check("mirror: our label flipped with its image", float(np.abs(os_.reshape(n, -1)
                                                                          - o.reshape(n, -1)).max()), 0.0)


# -- configuration, dummy-2D switch, fixed parameters ------------------------------------------------------------------
def configuration(report: Report, config: AugmentConfig) -> List[dict]:
    """Probabilities and ranges of nnU-Net's transform objects vs our AugmentConfig (exact)."""
    t, _, rotation = nnunet_pipeline([16, 320, 320])
    sp, noise, blur = t["SpatialTransform"][0], t["GaussianNoiseTransform"][0], t["GaussianBlurTransform"][0]
    bright, contrast = t["BrightnessMultiplicativeTransform"][0], t["ContrastAugmentationTransform"][0]
    low, (g_inv, g) = t["SimulateLowResolutionTransform"][0], t["GammaTransform"]
    mirror = t["MirrorTransform"][0]
    pairs = [
        ("rotation p", sp.p_rot_per_sample, config.p_rotation),
        ("rotation range (dummy 2D, degrees)", math.degrees(rotation["x"][1]), config.rotation_degrees),
        ("scale p", sp.p_scale_per_sample, config.p_scale), ("scale range", list(sp.scale), list(config.scale_range)),
        ("elastic p", sp.p_el_per_sample, 0.0), ("image order", sp.order_data, 3), ("label order", sp.order_seg, 1),
        ("noise p", noise.p_per_sample, config.p_noise),
        ("noise range (SD)", list(noise.noise_variance), list(config.noise_range)),
        ("blur p", blur.p_per_sample, config.p_blur), ("blur p per channel", blur.p_per_channel,
                                                       config.p_blur_per_channel),
        ("blur sigma", list(blur.blur_sigma), list(config.blur_sigma)),
        ("brightness p", bright.p_per_sample, config.p_brightness),
        ("brightness range", list(bright.multiplier_range), list(config.brightness_range)),
        ("contrast p", contrast.p_per_sample, config.p_contrast),
        ("contrast range", list(contrast.contrast_range), list(config.contrast_range)),
        ("low resolution p", low.p_per_sample, config.p_low_res),
        ("low resolution p per channel", low.p_per_channel, config.p_low_res_per_channel),
        ("low resolution zoom", list(low.zoom_range), list(config.low_res_zoom)),
        ("low resolution orders", [low.order_downsample, low.order_upsample], [0, 3]),
        ("gamma inverted p", g_inv.p_per_sample, config.p_gamma_inverted), ("gamma p", g.p_per_sample, config.p_gamma),
        ("gamma range", list(g.gamma_range), list(config.gamma_range)),
        ("mirror axes", list(mirror.axes), list(config.mirror_axes)),
    ]
    rows = []
    for name, theirs_value, ours_value in pairs:
        ok = bool(np.allclose(theirs_value, ours_value))
        rows.append({"parameter": name, "nnunet": theirs_value, "ours": ours_value, "equal": ok})
        report.check(f"configuration: {name}", 0.0 if ok else 1.0, 0.0)
    return rows


def dummy_2d_switch(report: Report) -> List[dict]:
    rows = []
    for patch in ([16, 320, 320], [16, 64, 64], [16, 48, 48], [20, 80, 64], [32, 96, 96], [64, 128, 128],
                  [128, 128, 128], [12, 192, 160]):
        _, theirs_value, rotation = nnunet_pipeline(patch)
        mine = use_dummy_2d(patch, [4.0, 0.875, 0.875])
        rows.append({"patch": patch, "nnunet": bool(theirs_value), "ours": mine})
        report.check(f"dummy 2D for patch {patch}", 0.0 if mine == bool(theirs_value) else 1.0, 0.0)
    return rows


def fixed_parameters(report: Report) -> None:
    """Ours vs batchgenerators' own functions at given parameters: maximum absolute differences."""
    from batchgenerators.augmentations.color_augmentations import augment_contrast, augment_gamma
    from batchgenerators.augmentations.noise_augmentations import augment_gaussian_blur
    from batchgenerators.augmentations.resample_augmentations import augment_linear_downsampling_scipy
    from batchgenerators.augmentations.utils import (create_zero_centered_coordinate_mesh, interpolate_img,
                                                     rotate_coords_2d, rotate_coords_3d, scale_coords)
    rng = np.random.default_rng(3)
    for dummy_2d, patch, context, angles, s in ((True, PATCH_2D, CONTEXT_2D, [0.7], 0.83),
                                                (True, PATCH_2D, CONTEXT_2D, [-2.5], 1.31),
                                                (False, PATCH_3D, CONTEXT_3D, [0.3, -0.2, 0.45], 0.91),
                                                (False, PATCH_3D, CONTEXT_3D, [-0.5, 0.1, 0.2], 1.22)):
        image = rng.normal(size=(1, *context)).astype(np.float32)
        label = np.zeros(context, np.int16)
        label[tuple(slice(c // 4, 3 * c // 4) for c in context)] = 1
        label[tuple(slice(c // 3, c // 2) for c in context)] = 2
        label[rng.random(context) < 0.05] = 3
        if dummy_2d:
            coords = scale_coords(rotate_coords_2d(create_zero_centered_coordinate_mesh(patch[1:]), angles[0]), s)
            coords += np.array([(c - 1) / 2 for c in context[1:]])[:, None, None]
            t_img = np.stack([interpolate_img(image[0, z], coords, 3, "constant", 0.0) for z in range(context[0])])
            t_lab = np.stack([interpolate_img(label[z].astype(np.float32), coords, 1, "constant", -1.0, is_seg=True)
                              for z in range(context[0])])
            m = ours_spatial.spatial_matrices(torch.tensor([angles]), torch.tensor([True]), torch.tensor([s]),
                                              torch.tensor([True]), in_plane_scale=True)
        else:
            coords = scale_coords(rotate_coords_3d(create_zero_centered_coordinate_mesh(patch), *angles), s)
            coords += np.array([(c - 1) / 2 for c in context])[:, None, None, None]
            t_img = interpolate_img(image[0], coords, 3, "constant", 0.0)
            t_lab = interpolate_img(label.astype(np.float32), coords, 1, "constant", -1.0, is_seg=True)
            m = ours_spatial.spatial_matrices(torch.tensor([angles]), torch.tensor([True]), torch.tensor([s]),
                                              torch.tensor([True]), in_plane_scale=False)
        t_lab = np.where(t_lab < 0, 0, t_lab)
        aug = Augmenter(patch)
        o_img, o_lab = aug.resample(torch.from_numpy(image[None]), torch.from_numpy(label[None]), m,
                                    torch.tensor([True]))
        what = f"spatial {'dummy 2D' if dummy_2d else '3D'} angles {angles} scale {s}"
        report.check(f"{what}: image (cubic)", float(np.abs(o_img[0, 0].numpy() - t_img).max()), 1e-3)
        report.check(f"{what}: label voxels differing (one-hot linear)",
                     float((o_lab[0].numpy() != t_lab).sum()), 0.0)
    x = rng.normal(size=(2, 8, 16, 16)).astype(np.float32)
    for sigma in (0.5, 0.8, 1.0):
        ref = augment_gaussian_blur(x.copy(), (sigma, sigma), True, 1.0)
        mine = ours_intensity.blur(torch.from_numpy(x[None]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                                   [sigma, sigma])[0].numpy()
        report.check(f"blur sigma {sigma}", float(np.abs(mine - ref).max()), 1e-5)
    for zoom, ignore in ((0.5, (0,)), (0.71, (0,)), (0.93, None), (0.6, None)):
        ref = augment_linear_downsampling_scipy(x.copy(), (zoom, zoom), True, 1.0, None, 0, 3, ignore)
        mine = ours_intensity.low_res(torch.from_numpy(x[None]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                                      [zoom, zoom], ignore_axis0=ignore is not None)[0].numpy()
        report.check(f"low resolution zoom {zoom} ignore axes {ignore}", float(np.abs(mine - ref).max()), 1e-4)
    for g in (1.0, 1.3, 1.5):
        for invert in (False, True):
            ref = augment_gamma(x.copy(), (g, g), invert, per_channel=True, retain_stats=True)
            mine = ours_intensity.gamma(torch.from_numpy(x[None]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                                        torch.tensor([g, g]), invert)[0].numpy()
            report.check(f"gamma {g} inverted {invert}", float(np.abs(mine - ref).max()), 1e-4)
    for f in (0.8, 1.2):
        ref = augment_contrast(x.copy(), lambda: f, True, True, 1.0)
        mine = ours_intensity.contrast(torch.from_numpy(x[None]), torch.full((1, 2), f), torch.tensor([True]))
        report.check(f"contrast factor {f}", float(np.abs(mine[0].numpy() - ref).max()), 1e-5)


# -- driver -----------------------------------------------------------------------------------------------------------
def steps(config: AugmentConfig) -> Dict[str, Callable[[Report, int, int], None]]:
    """transform name (as in the tests) -> run(report, draws, seed)."""
    transforms, _, _ = nnunet_pipeline(PATCH_2D)
    return {
        "spatial dummy 2D": lambda r, n, seed: run_spatial(r, config, n, seed + 1, True, "dummy 2D"),
        "spatial 3D": lambda r, n, seed: run_spatial(r, config, n, seed + 2, False, "3D"),
        "noise": lambda r, n, seed: run_noise(r, config, n, seed + 3, transforms),
        "blur": lambda r, n, seed: run_blur(r, config, n, seed + 4, transforms),
        "brightness": lambda r, n, seed: run_brightness(r, config, n, seed + 5, transforms),
        "contrast": lambda r, n, seed: run_contrast(r, config, n, seed + 6, transforms),
        "low resolution dummy 2D": lambda r, n, seed: run_low_res(r, config, n, seed + 7, True, "dummy 2D"),
        "low resolution 3D": lambda r, n, seed: run_low_res(r, config, n, seed + 8, False, "3D"),
        "gamma (inverted)": lambda r, n, seed: run_gamma(r, config, n, seed + 9, transforms, True),
        "gamma": lambda r, n, seed: run_gamma(r, config, n, seed + 10, transforms, False),
        "mirror": lambda r, n, seed: run_mirror(r, config, n, seed + 11, transforms),
    }


def run_all(config: AugmentConfig, n: int, seed: int) -> Report:
    report = Report()
    for name, step in steps(config).items():
        start = time.perf_counter()
        step(report, n, seed)
        print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return report


def confirm(report: Report, config: AugmentConfig, n: int, seed: int, factor: int = 3) -> List[dict]:
    """Every test failing at p < ALPHA re-run with an independent seed and `factor` x the draws: it counts as a
    difference only when the re-run fails too (with ~60 tests at p < 0.01 about one false alarm in two runs is
    expected by chance alone; a real difference fails the larger re-run with even more power)."""
    failing = [t for t in report.tests if t["p"] < ALPHA]
    rows = []
    for transform in sorted({t["transform"] for t in failing}):
        rerun = Report()
        steps(config)[transform](rerun, factor * n, seed + 1000)
        for t in failing:
            if t["transform"] == transform:
                again = next(r for r in rerun.tests if r["test"] == t["test"])
                rows.append({"transform": transform, "test": t["test"], "p": t["p"], "rerun_p": again["p"],
                             "rerun_statistic": again["statistic"], "rerun_draws": factor * n,
                             "confirmed": again["p"] < ALPHA})
    return rows


def speed(batch: int, patch: List[int], repeats: int, threads: int, device: str = "cpu") -> dict:
    """Seconds per batch of our Augmenter, official vs RCSegNeXt 0.1 variants, interleaved in one process (a noisy
    machine slows both alike): with nnU-Net's probabilities, and with every transform firing (its cost when it
    fires). Sampling is not included."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    dummy_2d = use_dummy_2d(patch, [4.0, 0.875, 0.875])
    from RCSegNeXtCore.training.augment import context_size
    context = context_size(patch, AugmentConfig(dummy_2d=dummy_2d))
    rng = torch.Generator().manual_seed(0)
    image = torch.randn((batch, 1, *context), generator=rng).to(dev)
    label = (torch.rand((batch, *context), generator=rng) * 3).to(torch.int16).to(dev)
    always = {k: 1.0 for k in AugmentConfig.__dataclass_fields__ if k.startswith("p_") and k != "p_mirror"}
    configs = {(variant, mode): AugmentConfig(dummy_2d=dummy_2d, **(OLD_VARIANTS if variant == "0.1" else {}),
                                              **(always if mode == "every transform" else {}))
               for variant in ("nnunet_v1", "0.1") for mode in ("nnU-Net probabilities", "every transform")}
    gen_device = dev if dev.type == "cuda" else torch.device("cpu")
    augmenters = {k: Augmenter(patch, c, torch.Generator(device=gen_device).manual_seed(1)) for k, c in configs.items()}
    times: Dict[tuple, List[float]] = {k: [] for k in configs}
    for r in range(repeats + 1):
        for key, aug in augmenters.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            aug(image, label)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if r:                                              # the first round warms up
                times[key].append(time.perf_counter() - start)
    rows = [{"variant": v, "mode": m, "median_s": float(np.median(times[(v, m)])),
             "ratio_to_0.1": float(np.median(times[(v, m)]) / np.median(times[("0.1", m)]))} for v, m in configs]
    print(f"\n## augmentation speed: batch {batch} x context {context} -> patch {patch}, {device}, "
          f"{threads} thread(s), median of {repeats}\n")
    print("| variant | probabilities | s / batch | vs 0.1 |")
    print("|---|---|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['mode']} | {row['median_s']:.3f} | {row['ratio_to_0.1']:.2f} |")
    return {"batch": batch, "patch": patch, "context": context, "device": device, "threads": threads, "rows": rows}


def print_table(report: Report, title: str) -> None:
    print(f"\n## {title}\n")
    print("| transform | test | test statistic | p | n ours / theirs | |")
    print("|---|---|---:|---:|---:|---|")
    for t in report.tests:
        kind = "KS D" if t["kind"] == "ks" else "chi2"
        flag = "**differs**" if t["p"] < ALPHA else ""
        print(f"| {t['transform']} | {t['test']} | {kind} {t['statistic']:.4f} | {t['p']:.3g} | "
              f"{t['n_ours']} / {t['n_theirs']} | {flag} |")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10000, help="samples per transform and side (default 10000)")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--sensitivity", action="store_true",
                        help="also test RCSegNeXt 0.1's variants (expected to differ where the rows were fixed)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--speed", action="store_true", help="only time our augmentation (official vs 0.1 "
                        "variants; any environment with the core): --speed-batch, --speed-patch, --speed-repeats")
    parser.add_argument("--speed-batch", type=int, default=2)
    parser.add_argument("--speed-patch", type=int, nargs=3, default=[16, 320, 320])
    parser.add_argument("--speed-repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="--speed only")
    args = parser.parse_args(argv)
    if args.speed:
        result = speed(args.speed_batch, args.speed_patch, args.speed_repeats, args.threads, args.device)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = AugmentConfig()
    fixed = Report()
    config_rows = configuration(fixed, config)
    switch_rows = dummy_2d_switch(fixed)
    fixed_parameters(fixed)
    print("official configuration:", file=sys.stderr)
    report = run_all(config, args.draws, args.seed)
    confirmation = confirm(report, config, args.draws, args.seed)
    result = {"draws": args.draws, "seed": args.seed, "alpha": ALPHA, **report.summary(),
              "confirmed": sum(c["confirmed"] for c in confirmation), "confirmation": confirmation,
              "tests_detail": report.tests, "firing": report.firing, "configuration": config_rows,
              "dummy_2d_switch": switch_rows, "checks": fixed.checks + report.checks,
              "checks_failed": sum(not c["ok"] for c in fixed.checks + report.checks)}
    print_table(report, f"official pipeline vs ours, {args.draws} draws per side")
    print("\n## deterministic checks\n")
    for c in result["checks"]:
        print(f"- {'ok' if c['ok'] else 'FAILED'}: {c['check']}: {c['max_abs_difference']:.3g} "
              f"(tolerance {c['tolerance']:g})")
    if args.sensitivity:
        print("RCSegNeXt 0.1 variants:", file=sys.stderr)
        old = run_all(AugmentConfig(**OLD_VARIANTS), args.draws, args.seed)
        print_table(old, "sensitivity: RCSegNeXt 0.1's variants vs the official pipeline")
        result["sensitivity"] = {**old.summary(), "failed_tests": [
            f"{t['transform']}: {t['test']}" for t in old.tests if t["p"] < ALPHA], "tests_detail": old.tests}
    result["seconds"] = round(time.perf_counter() - start, 1)
    if confirmation:
        print("\n## re-run of the tests failing at p < 0.01 (independent seed, 3x the draws)\n")
        for c in confirmation:
            print(f"- {c['transform']}: {c['test']}: p {c['p']:.3g}, re-run p {c['rerun_p']:.3g} "
                  f"({'confirmed' if c['confirmed'] else 'not confirmed'})")
    print(f"\n{result['failed']} of {result['tests']} tests differ at p < {ALPHA} (Holm: {result['failed_holm']}; "
          f"confirmed by a re-run: {result['confirmed']}); {result['checks_failed']} deterministic checks failed; "
          f"{result['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
