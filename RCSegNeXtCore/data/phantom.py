"""Synthetic sagittal T2 pelvis phantom: the embedded default dataset for the demo and the tests.

Each case imitates a sagittal T2 rectal MRI at the paper's Dataset A geometry (MIDL 2025: spacing ~[4.0, 0.875,
0.875] mm, 18-24 slices of 320-512 px): sacrum and coccyx, a curved rectum with wall and lumen along them, an
eccentric tumour (absent in ~10 % of cases), mesorectum, bladder, pubis, prostate or uterus, bowel loops, fat and
muscle; then tissue texture, partial-volume blur across the thick left-right axis, a smooth coil bias field,
slice-to-slice gain changes, occasional motion ghosts and Rician noise. Labels: 0 background, 1 rectum, 2 tumour.

Sizes: `size="full"` (the paper's geometry, ~0.5 s per case) or `size="small"` (16 x 96 x 96 voxels at
~[5.0, 2.5, 2.5] mm, ~30 ms per case, for fast tests and the CPU demo). `shape`/`spacing` override either.
The surroundings are painted at half the in-plane resolution and upsampled; the rectum region at full resolution.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from RCSegNeXtCore.data.io import Geometry, Image, write_image
from RCSegNeXtCore.data.phantom_anatomy import V_GRID, sample_anatomy
from RCSegNeXtCore.data.phantom_render import Frame, paint_body, paint_pelvic_organs, paint_spine, upsample2
from RCSegNeXtCore.data.phantom_rectum import paint_rectum
from RCSegNeXtCore.errors import RCSegNeXtError
from RCSegNeXtCore.plans import DEFAULT_CHANNELS, DEFAULT_LABELS

CASE_PREFIX = "PHANTOM"
TUMOUR_ABSENT_FRACTION = 0.1
SIZES = ("full", "small")
# sagittal base orientation: i (columns) -> posterior, j (rows) -> inferior, k (slices) -> right ("PIR" in LPS)
_SAGITTAL = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _grid(rng: np.random.Generator, size: str, shape, spacing) -> Tuple[tuple, tuple]:
    """Random shape (z, y, x) and spacing (mm) for `size`, unless given."""
    if size == "full":
        n = int(rng.choice(np.arange(320, 513, 16)))
        drawn_shape = (int(rng.integers(18, 25)), n, n if rng.random() < 0.7 else int(rng.choice([320, 384, n])))
        drawn_spacing = (4.0 * rng.uniform(0.92, 1.08), *([0.875 * rng.uniform(0.9, 1.1)] * 2))
    else:
        drawn_shape = (16, 96, 96)
        drawn_spacing = (5.0 * rng.uniform(0.95, 1.05), *([2.5 * rng.uniform(0.95, 1.05)] * 2))
    shape = drawn_shape if shape is None else tuple(int(s) for s in shape)
    spacing = drawn_spacing if spacing is None else tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 3 or min(shape[1:]) < 16:
        raise RCSegNeXtError(f"phantom shape {shape}: give 3 sizes (z, y, x), at least 3 slices of 16 x 16 px")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise RCSegNeXtError(f"phantom spacing {spacing}: give 3 positive spacings (z, y, x) in mm")
    return shape, spacing


def _geometry(rng: np.random.Generator, shape, spacing) -> Geometry:
    """Sagittal direction tilted by a random small rotation (<= 10 deg); random origin near the scanner centre."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0.0, 10.0))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    direction = rotation @ _SAGITTAL
    half_extent = np.asarray(spacing[::-1]) * (np.asarray(shape[::-1]) - 1) / 2  # (x, y, z) = (i, j, k)
    centre = rng.normal([0.0, 20.0, -60.0], [10.0, 15.0, 30.0])
    origin = centre - direction @ half_extent
    return Geometry(tuple(shape), tuple(spacing), tuple(float(o) for o in origin),
                    tuple(float(d) for d in direction.ravel()))


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights mapping a coarse 1D grid onto a fine one."""
    pos = np.linspace(0, n_in - 1, n_out)
    low = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - low
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), low] = 1 - frac
    m[np.arange(n_out), low + 1] = frac
    return m


def _smooth_field(rng, shape, cell_px: float) -> np.ndarray:
    """Smooth random field (z, y, x) of unit-ish amplitude, correlation ~cell_px pixels in-plane, varying over z.

    Two 2D fields mixed with a slowly turning angle per slice: cheap, and neighbouring slices stay correlated.
    """
    nz, ny, nx = shape
    ly, lx = max(2, int(ny / cell_px) + 2), max(2, int(nx / cell_px) + 2)
    fields = [_interp_matrix(ny, ly) @ rng.standard_normal((ly, lx), dtype=np.float32) @ _interp_matrix(nx, lx).T
              for _ in range(2)]
    angle = np.cumsum(rng.uniform(0.3, 0.8, nz)).astype(np.float32)
    return np.cos(angle)[:, None, None] * fields[0] + np.sin(angle)[:, None, None] * fields[1]


def _apply_artefacts(rng, canvas: np.ndarray, fat: float) -> np.ndarray:
    """Partial volume across slices, bias field, slice gains, ghosting, Rician noise."""
    nz, ny, nx = canvas.shape
    a = rng.uniform(0.08, 0.18)  # partial volume: each 4 mm slice also sees its neighbours
    blurred = (1 - 2 * a) * canvas
    blurred[1:] += a * canvas[:-1]
    blurred[:-1] += a * canvas[1:]
    blurred[0] += a * canvas[0]
    blurred[-1] += a * canvas[-1]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    c = rng.normal(0, 0.15, size=5)
    log_bias = c[0] * x + c[1] * y + c[2] * x * y + c[3] * y * y + rng.uniform(0.1, 0.4) * x * x
    z = np.linspace(-1, 1, nz)
    slice_gain = rng.normal(0, 0.1) * z + rng.normal(0, rng.uniform(0.02, 0.06), nz)
    if rng.random() < 0.3:  # interleaved acquisition: odd and even slices differ
        slice_gain[1::2] += rng.uniform(0.02, 0.06)
    gain = rng.uniform(0.5, 2.0)
    blurred *= (gain * np.exp(log_bias - log_bias.mean())).astype(np.float32)[None]
    blurred *= np.exp(slice_gain).astype(np.float32)[:, None, None]
    if rng.random() < 0.25:  # motion ghost along the phase-encode (anterior-posterior) direction
        blurred += rng.uniform(0.02, 0.06) * np.roll(blurred, int(rng.integers(nx // 8, nx // 3)), axis=2)
    sigma = np.float32(fat * gain / rng.uniform(12.0, 30.0))
    real = blurred + sigma * rng.standard_normal(blurred.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(blurred.shape, dtype=np.float32)
    return np.rint(np.sqrt(real * real + imag * imag)).clip(0, 32767)


def make_phantom_case(rng: np.random.Generator, *, size: str = "full", shape: Optional[Sequence[int]] = None,
                      spacing: Optional[Sequence[float]] = None,
                      tumour: Optional[bool] = None) -> Tuple[Image, np.ndarray]:
    """One phantom case in memory: (Image with float32 (z, y, x) integer-valued T2 signal, uint8 label).

    `size`: "full" (18-24 x 320-512 x 320-512 at ~[4.0, 0.875, 0.875] mm) or "small" (16 x 96 x 96 at ~[5.0, 2.5,
    2.5] mm); `shape`/`spacing` (z, y, x) override the drawn ones. `tumour`: True/False forces presence, None
    draws it (absent with probability 0.1). Deterministic for the state of `rng`.
    """
    if size not in SIZES:
        raise RCSegNeXtError(f"phantom size {size!r}: use one of {', '.join(SIZES)}")
    shape, spacing = _grid(rng, size, shape, spacing)
    if tumour is None:
        tumour = bool(rng.random() >= TUMOUR_ABSENT_FRACTION)
    geometry = _geometry(rng, shape, spacing)
    nz, ny, nx = shape
    y_mm = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    x_mm = (np.arange(nx) - (nx - 1) / 2) * spacing[2]
    for _ in range(8):  # redraw the rare anatomy whose rectum or tumour misses the voxel grid
        anatomy = sample_anatomy(rng, tumour)
        v_mid = 0.5 * (anatomy.v_rs + anatomy.v_arj)
        # field of view: around the rectum, shifted towards the body's centre; its bottom edge not far below
        # the perineum, so a large field of view shows more abdomen rather than air between the thighs
        body_mid = 0.5 * float(np.interp(v_mid, V_GRID, anatomy.skin_ant + anatomy.skin_post))
        half_height = 0.5 * ny * spacing[1]
        centre = (0.5 * (anatomy.rectum.at(v_mid, "u") + body_mid) + rng.uniform(-10, 10),
                  min(v_mid + rng.uniform(-15, 15), anatomy.v_anus + rng.uniform(30, 70) - half_height),
                  rng.uniform(-6, 6))
        tilt = np.deg2rad(rng.uniform(-8, 8))
        # surroundings are painted on a half-resolution grid (pixel j at fine position 2j + 0.5), the
        # labelled rectum region at full resolution
        coarse = Frame(nz, spacing[0], y_mm[0] + spacing[1] * (2 * np.arange(ny // 2 + 1) + 0.5),
                       x_mm[0] + spacing[2] * (2 * np.arange(nx // 2 + 1) + 0.5), centre, tilt)
        canvas = np.zeros(coarse.shape, np.float32)
        body = paint_body(canvas, coarse, anatomy)
        paint_spine(canvas, coarse, anatomy)
        paint_pelvic_organs(canvas, coarse, anatomy)
        paint_rectum(canvas, None, coarse, anatomy)
        canvas = anatomy.signal["air"] + (canvas - anatomy.signal["air"]) * body
        canvas = upsample2(canvas, ny, nx)
        label = np.zeros(shape, np.uint8)
        paint_rectum(canvas, label, Frame(nz, spacing[0], y_mm, x_mm, centre, tilt), anatomy,
                     (anatomy.v_rs - 8.0, anatomy.v_arj + 8.0))
        if (label == 1).any() and (not tumour or (label == 2).any()):
            break
    # the same slight in-plane blur and tissue texture everywhere, so the sharper full-resolution region around
    # the rectum does not stand out
    canvas[:, 1:-1] = 0.6 * canvas[:, 1:-1] + 0.2 * (canvas[:, :-2] + canvas[:, 2:])
    canvas[:, :, 1:-1] = 0.6 * canvas[:, :, 1:-1] + 0.2 * (canvas[:, :, :-2] + canvas[:, :, 2:])
    canvas *= 1.0 + rng.uniform(0.03, 0.07) * _smooth_field(rng, canvas.shape, 10.0)
    image = _apply_artefacts(rng, canvas, anatomy.signal["fat"])
    return Image(image, geometry), label


def case_ids(num_cases: int) -> list[str]:
    return [f"{CASE_PREFIX}_{i:03d}" for i in range(num_cases)]


def _tumour_plan(seed: int, num_cases: int) -> list[bool]:
    """Which cases have a tumour: ~10 % without (at least one from 5 cases on), chosen reproducibly."""
    absent = int(round(TUMOUR_ABSENT_FRACTION * num_cases)) or (1 if num_cases >= 5 else 0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2 ** 31 - 1]))
    chosen = set(rng.choice(num_cases, size=absent, replace=False).tolist()) if absent else set()
    return [i not in chosen for i in range(num_cases)]


def _write_case(job) -> str:
    out, index, seed, size, shape, spacing, tumour = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    image, label = make_phantom_case(rng, size=size, shape=shape, spacing=spacing, tumour=tumour)
    case_id = case_ids(index + 1)[index]
    write_image(image.array.astype(np.int16), image.geometry, Path(out) / "imagesTr" / f"{case_id}_0000.nii.gz")
    write_image(label, image.geometry, Path(out) / "labelsTr" / f"{case_id}.nii.gz")
    return case_id


def make_phantom_dataset(out_dir: str | os.PathLike, num_cases: int = 20, seed: int = 0, *, size: str = "full",
                         shape: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
                         workers: int = 1, overwrite: bool = False, progress: bool = True) -> Path:
    """Write `num_cases` phantom cases in nnU-Net v2 raw layout (imagesTr/, labelsTr/, dataset.json) to `out_dir`.

    Case i depends only on (seed, i, size, shape, spacing) and on whether it has a tumour (~10 % of the cases,
    chosen from the seed, have none). Calling again with the same arguments on a complete folder does nothing;
    a non-empty folder holding anything else is refused unless `overwrite`. Returns the dataset folder.
    """
    from RCSegNeXtCore.data.dataset import write_dataset_json
    from RCSegNeXtCore.progress import ProgressBar

    if int(num_cases) < 1:
        raise RCSegNeXtError(f"phantom: {num_cases} cases requested; ask for at least 1")
    if size not in SIZES:
        raise RCSegNeXtError(f"phantom size {size!r}: use one of {', '.join(SIZES)}")
    out = Path(out_dir)
    ids = case_ids(int(num_cases))
    record = {"seed": int(seed), "num_cases": int(num_cases), "size": size,
              "shape": None if shape is None else [int(s) for s in shape],
              "spacing": None if spacing is None else [float(s) for s in spacing]}
    files = [out / "imagesTr" / f"{c}_0000.nii.gz" for c in ids] + [out / "labelsTr" / f"{c}.nii.gz" for c in ids]
    if (out / "dataset.json").is_file():
        try:
            existing = json.loads((out / "dataset.json").read_text(encoding="utf-8")).get("phantom")
        except (ValueError, AttributeError):
            existing = None
        if existing == record and all(f.is_file() for f in files):
            return out
    if out.exists() and not out.is_dir():
        raise RCSegNeXtError(f"phantom: output {out} is a file; give a folder to write the dataset into")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RCSegNeXtError(f"phantom: output folder {out} is not empty and does not hold this phantom "
                             f"({num_cases} cases, seed {seed}, size {size}); choose an empty folder or overwrite")
    tumours = _tumour_plan(int(seed), int(num_cases))
    jobs = [(str(out), i, int(seed), size, shape, spacing, tumours[i]) for i in range(int(num_cases))]
    out.mkdir(parents=True, exist_ok=True)
    with ProgressBar(len(jobs), "phantom", enabled=progress, unit="case") as bar:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                for _ in pool.map(_write_case, jobs):
                    bar.update(1)
        else:
            for job in jobs:
                _write_case(job)
                bar.update(1)
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):  # stale cases of a larger run
        for stale in (out / folder).glob(f"{CASE_PREFIX}_[0-9][0-9][0-9]{suffix}"):
            if stale.name[: len(CASE_PREFIX) + 4] not in ids:
                stale.unlink()
    write_dataset_json(out, labels=DEFAULT_LABELS, channel_names=DEFAULT_CHANNELS, file_ending=".nii.gz",
                       num_training=int(num_cases), name="RCSegNeXtPhantom",
                       description="Synthetic sagittal T2 pelvis (rectum 1, tumour 2) made by rcsegnext phantom",
                       phantom=record)
    return out
