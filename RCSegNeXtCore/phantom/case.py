"""One phantom case in memory: the sagittal grid, anatomy painted on it (anatomy, render, rectum) and the scanner's
artefacts (partial volume, bias field, slice gains, ghosting, Rician noise)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from RCSegNeXtCore.data.io import Geometry, Image
from RCSegNeXtCore.errors import RCSegNeXtError
from RCSegNeXtCore.phantom.anatomy import V_GRID, sample_anatomy
from RCSegNeXtCore.phantom.render import Frame, paint_body, paint_pelvic_organs, paint_spine, upsample2
from RCSegNeXtCore.phantom.rectum import paint_rectum

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
