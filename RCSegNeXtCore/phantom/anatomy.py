"""Random anatomy of the sagittal pelvis phantom: tissue signals and the curves of spine, rectum and neighbours.

Patient coordinates in millimetres: u runs anterior -> posterior, v superior -> inferior, w left -> right; the
coccyx tip is at (u, v) = (0, 0). Tubular organs (spine band, rectum, vagina) are curves given as functions of v,
sampled on `V_GRID`. T2 signal order (brightest to darkest), as in sagittal T2 pelvic MRI:
fluid > fat > marrow ~ mucosa > tumour ~ nodes ~ bowel wall > muscle ~ muscularis > cortical bone > air.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

V_GRID = np.arange(-560.0, 400.0, 0.5)  # fine v-grid (mm) on which every curve is tabulated

# typical T2 signal (arbitrary units) before per-case jitter and scanner gain
BASE_SIGNAL = {
    "air": 6, "fat": 720, "visceral_fat": 670, "meso_fat": 745, "skin": 320, "muscle": 235, "cortex": 70,
    "marrow": 560, "csf": 1000, "urine": 1060, "gel": 960, "mucus": 430, "mucosa": 530, "muscularis": 185,
    "int_sphincter": 330, "ext_sphincter": 165, "fascia": 190, "node": 420, "bowel_wall": 430, "fluid": 900,
    "feces": 470, "pz": 690, "cg": 385, "sv": 830, "myometrium": 490, "endometrium": 880, "jz": 230,
    "vagina": 280, "vessel": 70, "perineum": 300,
}


def _smooth(values: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing of a curve tabulated on V_GRID (edges padded)."""
    steps = sigma_mm / (V_GRID[1] - V_GRID[0])
    radius = int(3 * steps) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / steps) ** 2)
    return np.convolve(np.pad(values, radius, mode="edge"), kernel / kernel.sum(), mode="valid")


def curve(points_v, points_value, sigma_mm: float = 6.0) -> np.ndarray:
    """Smooth curve through control points (v, value), tabulated on V_GRID."""
    order = np.argsort(points_v)
    return _smooth(np.interp(V_GRID, np.asarray(points_v)[order], np.asarray(points_value)[order]), sigma_mm)


@dataclass
class Tube:
    """A tube along v: centre u(v), w(v), outer radius(v); the perpendicular in-plane offset is (u - u_c) cos(a)."""

    u: np.ndarray
    w: np.ndarray
    radius: np.ndarray
    v_top: float
    v_bottom: float
    cos_a: np.ndarray = field(init=False)
    tan_a: np.ndarray = field(init=False)
    arc: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        slope = np.gradient(self.u, V_GRID)
        self.cos_a = 1.0 / np.sqrt(1.0 + slope ** 2)
        self.tan_a = slope
        step = np.sqrt(1.0 + slope ** 2 + np.gradient(self.w, V_GRID) ** 2) * (V_GRID[1] - V_GRID[0])
        self.arc = np.cumsum(step) - step[0]

    def at(self, v: float, name: str) -> float:
        return float(np.interp(v, V_GRID, getattr(self, name)))


@dataclass
class Ellipsoid:
    centre: tuple  # (u, v, w)
    axes: tuple  # semi-axes (u, v, w) before the in-plane tilt
    tilt: float = 0.0  # radians, rotation in the u-v plane


@dataclass
class Anatomy:
    signal: Dict[str, float]
    spine: Tube  # anterior surface of lumbar spine / sacrum / coccyx; radius = body depth
    rectum: Tube  # from the sigmoid (above v_top) to the anus; labelled between v_rs and v_arj
    v_promontory: float
    v_rs: float  # rectosigmoid junction: top of the rectum label
    v_arj: float  # anorectal junction: bottom of the rectum label
    v_anus: float
    wall: float  # rectal wall thickness (mm)
    lumen: str  # gel | air | level | collapsed
    fluid_fraction: float
    meso_post: float  # posterior mesorectal fat thickness (mm)
    meso_ant: float
    skin_ant: np.ndarray  # u of the anterior skin as a function of v
    skin_post: np.ndarray  # u of the posterior skin in the midline
    buttock: np.ndarray  # extra posterior reach of the skin in lateral slices
    fat_ant: float
    fat_post: float
    bladder: Ellipsoid
    pubis: Ellipsoid
    male: bool
    gland: Ellipsoid  # prostate (male) or uterus (female)
    seminal: Ellipsoid
    bowel: List[Ellipsoid]
    bowel_content: List[str]
    nodes: List[tuple]  # (v, theta, radial offset from the outer wall, radius)
    tumour: dict | None


def sample_signal(rng: np.random.Generator) -> Dict[str, float]:
    """Per-case tissue signals: each base value jittered by +-10 %, the tumour drawn in the intermediate range."""
    signal = {name: value * rng.uniform(0.9, 1.1) for name, value in BASE_SIGNAL.items()}
    signal["tumour"] = rng.uniform(340.0, 480.0)
    signal["air"] = BASE_SIGNAL["air"]
    return signal


def sample_tumour(rng: np.random.Generator, rectum: Tube, v_rs: float, v_arj: float) -> dict:
    """Eccentric wall thickening: position and length along the rectum, sector, growth into lumen and fat."""
    arc_top, arc_bottom = rectum.at(v_rs, "arc"), rectum.at(v_arj, "arc")
    small = rng.random() < 0.25
    length = rng.uniform(12.0, 22.0) if small else rng.uniform(22.0, 60.0)
    length = min(length, 0.8 * (arc_bottom - arc_top))
    centre = rng.uniform(arc_top + 0.5 * length, arc_bottom - 0.4 * length)
    annular = (not small) and rng.random() < 0.2
    return {
        "arc": centre, "length": length,
        "theta": rng.uniform(-np.pi, np.pi),
        "half_width": np.pi if annular else rng.uniform(0.35, 0.8) * np.pi * (0.6 if small else 1.0),
        "inward": rng.uniform(2.0, 5.0) if small else rng.uniform(4.0, 14.0),
        "outward": rng.uniform(0.0, 2.0) if small else rng.uniform(0.0, 8.0),
        "roughness": rng.uniform(0.05, 0.2), "phase": rng.uniform(0, 2 * np.pi, size=2),
    }


def _sample_spine(rng: np.random.Generator) -> Tuple[Tube, float]:
    """Anterior surface of lumbar spine, sacrum and coccyx (concave forward); returns (spine, v of promontory)."""
    v_p = -rng.uniform(105.0, 130.0)
    du, bulge = rng.uniform(0.0, 20.0), rng.uniform(22.0, 38.0)
    t = np.clip((V_GRID - v_p) / (0.0 - v_p), 0.0, 1.0)
    u_spine = -du * (1 - t) + bulge * np.sin(np.pi * t) ** 0.9
    lordosis = rng.uniform(5.0, 20.0) * np.sin(np.pi * np.clip((v_p - V_GRID) / 220.0, 0, 1))  # L3 most anterior
    u_spine = np.where(V_GRID < v_p, -du - lordosis, u_spine)
    depth = np.interp(V_GRID, [v_p - 200, v_p, v_p + 40, 0.0, 0.1], [34.0, rng.uniform(28, 34), 22.0, 7.0, 0.0])
    return Tube(_smooth(u_spine, 4.0), np.zeros_like(V_GRID), depth, v_p - 300, 0.0), v_p


def _sample_rectum(rng: np.random.Generator, spine: Tube, v_p: float, collapsed: bool) -> Tuple[Tube, tuple]:
    """Rectum behind the mesorectal fat along the sacrum, forward at the coccyx, anal canal running backward
    (anorectal angle 90-115 deg); the sigmoid above leaves the slab sideways. Returns (tube, (v_rs, v_arj, v_anus))."""
    v_rs = v_p + rng.uniform(0.4, 0.6) * (0.0 - v_p)  # rectosigmoid junction near S3
    v_arj = rng.uniform(12.0, 28.0)
    v_anus = v_arj + rng.uniform(30.0, 40.0)
    r_up, r_amp = rng.uniform(10.0, 15.0), rng.uniform(13.0, 19.0)
    if collapsed:
        r_up, r_amp = 0.75 * r_up, 0.7 * r_amp
    r_arj, r_anal = rng.uniform(9.0, 12.0), rng.uniform(10.0, 13.0)
    v_amp = rng.uniform(-25.0, -5.0)  # widest part: the ampulla
    radius = curve([v_rs - 60, v_rs, v_amp, v_arj - 4, v_arj + 6, v_anus, v_anus + 40],
                   [r_up * 0.9, r_up, r_amp, r_arj + 2, r_arj, r_anal, r_anal], 6.0)
    behind = spine.u - radius - rng.uniform(6.0, 16.0)  # centre when the wall keeps a fat gap to the sacrum
    phi_r = np.deg2rad(rng.uniform(25.0, 45.0))  # lower rectum axis: forward from vertical
    phi_a = np.deg2rad(180.0 - rng.uniform(90.0, 115.0)) - phi_r  # anal canal: backward from vertical
    phi_a = float(np.clip(phi_a, np.deg2rad(15), np.deg2rad(55)))
    u_ct = float(np.interp(0.0, V_GRID, behind)) - rng.uniform(4.0, 10.0)
    u_arj = u_ct - np.tan(phi_r) * v_arj
    u_anus = u_arj + np.tan(phi_a) * (v_anus - v_arj)
    along = lambda v: float(np.interp(v, V_GRID, behind))  # noqa: E731
    vs = [v_rs - 70, v_rs - 35, v_rs, 0.5 * (v_rs + v_amp), v_amp, 0.0, v_arj, v_anus, v_anus + 30]
    us = [along(vs[0]) - rng.uniform(20, 45), along(vs[1]) - rng.uniform(8, 20), along(vs[2]), along(vs[3]),
          along(vs[4]), u_ct, u_arj, u_anus, u_anus + 15 * np.tan(phi_a)]
    amp, phase = rng.uniform(2.0, 5.0), rng.uniform(0, 2 * np.pi)  # gentle lateral flexures
    lateral = rng.uniform(25.0, 40.0) * rng.choice([-1, 1])  # the sigmoid turns out of the slab
    w_rect = amp * np.sin(2 * np.pi * (V_GRID - v_rs) / 70.0 + phase) * (V_GRID > v_rs - 20) * (V_GRID < v_arj)
    w_rect = w_rect + lateral * np.clip((v_rs - 10 - V_GRID) / 40.0, 0, 1)
    return Tube(curve(vs, us, 7.0), _smooth(w_rect, 6.0), radius, v_rs - 70, v_anus), (v_rs, v_arj, v_anus)


def _sample_organs(rng: np.random.Generator, rectum: Tube, v_rs: float):
    """Bladder behind the pubis; prostate below it with seminal vesicles (male) or uterus above it (female)."""
    u_front = lambda v: rectum.at(v, "u") - rectum.at(v, "radius")  # noqa: E731
    b_axes = (rng.uniform(18, 42), rng.uniform(18, 38), rng.uniform(25, 50))
    v_b = v_rs + rng.uniform(15, 40)
    bladder = Ellipsoid((u_front(v_b) - rng.uniform(8, 20) - b_axes[0], v_b, rng.uniform(-5, 5)), b_axes,
                        np.deg2rad(rng.uniform(-20, 20)))
    pubis = Ellipsoid((bladder.centre[0] - 0.5 * b_axes[0] - rng.uniform(12, 22),
                       v_b + b_axes[1] + rng.uniform(-5, 12), 0.0),
                      (rng.uniform(9, 13), rng.uniform(18, 24), 70.0), np.deg2rad(rng.uniform(15, 40)))
    male = bool(rng.random() < 0.6)
    if male:
        g_axes = (rng.uniform(13, 21), rng.uniform(15, 23), rng.uniform(18, 25))
        v_g = v_b + b_axes[1] + 0.7 * g_axes[1]
        gland = Ellipsoid((u_front(v_g) - rng.uniform(3, 7) - g_axes[0], v_g, 0.0), g_axes,
                          np.deg2rad(rng.uniform(-25, 0)))
        seminal = Ellipsoid((u_front(v_g - g_axes[1] - 6) - 5, v_g - g_axes[1] - 6, 0.0),
                            (rng.uniform(4, 7), rng.uniform(10, 15), rng.uniform(20, 30)),
                            np.deg2rad(rng.uniform(30, 60)))
    else:
        g_axes = (rng.uniform(17, 25), rng.uniform(28, 42), rng.uniform(22, 30))
        gland = Ellipsoid((bladder.centre[0] + 0.6 * b_axes[0], v_b - b_axes[1] - rng.uniform(0, 15), 0.0), g_axes,
                          np.deg2rad(rng.uniform(30, 70)))
        seminal = Ellipsoid((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    return bladder, pubis, male, gland, seminal


def sample_anatomy(rng: np.random.Generator, tumour: bool) -> Anatomy:
    """Draw one patient: sacral curve, rectum along it, bladder, pubis, prostate or uterus, bowel loops, tumour."""
    sig = sample_signal(rng)
    spine, v_p = _sample_spine(rng)
    collapsed = rng.random() < 0.2
    rectum, (v_rs, v_arj, v_anus) = _sample_rectum(rng, spine, v_p, collapsed)
    bladder, pubis, male, gland, seminal = _sample_organs(rng, rectum, v_rs)
    v_b, b_axes = bladder.centre[1], bladder.axes
    # body outline: belly and mons pubis in front, skin over spine and sacrum behind, buttocks in lateral slices
    fat_ant, fat_post = rng.uniform(10, 40), rng.uniform(8, 30)
    u_pubis_front = pubis.centre[0] - pubis.axes[0] - 6 - fat_ant
    belly = rng.uniform(0, 40)
    u_anus = rectum.at(v_anus, "u")
    skin_ant = curve([v_p - 300, v_b - 80, pubis.centre[1], v_anus - 12, v_anus + 100],
                     [u_pubis_front - belly, u_pubis_front - 0.7 * belly, u_pubis_front, u_anus - 25, u_anus - 25],
                     15.0)
    back = lambda v, extra: float(np.interp(v, V_GRID, spine.u + spine.radius)) + extra + fat_post  # noqa: E731
    skin_post = curve([v_p - 300, v_p - 40, 0.5 * v_p, 0.0, v_anus, v_anus + 100],
                      [back(v_p - 300, 75), back(v_p - 40, 70), back(0.5 * v_p, 22), back(0.0, 18),
                       u_anus + 10, u_anus + 10], 12.0)
    buttock = curve([0.6 * v_p, 0.0, v_anus + 100], [0.0, rng.uniform(30, 60), rng.uniform(50, 80)], 15.0)
    # small bowel and sigmoid loops fill the abdomen above the bladder, in front of the spine
    bowel, content = [], []
    for _ in range(int(rng.integers(25, 40))):
        v = rng.uniform(v_b - 380, v_b - b_axes[1] - 5)
        u_lo = float(np.interp(v, V_GRID, skin_ant)) + fat_ant + 25
        u_hi = float(np.interp(v, V_GRID, spine.u)) - 18
        if v > v_rs - 15:  # beside the upper rectum only at the front
            u_hi = min(u_hi, rectum.at(v, "u") - rectum.at(v, "radius") - 25)
        if u_hi <= u_lo:
            continue
        bowel.append(Ellipsoid((rng.uniform(u_lo, u_hi), v, rng.uniform(-55, 55)), tuple(rng.uniform(9, 20, size=3)),
                               rng.uniform(0, np.pi)))
        content.append(str(rng.choice(["fluid", "air", "feces", "feces", "fluid"])))
    # mesorectal lymph nodes: (v, angle, distance outside the wall, radius), same signal as tumour
    nodes = [(rng.uniform(v_rs, v_arj - 10), rng.uniform(-np.pi, np.pi), rng.uniform(2, 10), rng.uniform(1.5, 4.5))
             for _ in range(int(rng.integers(0, 6)))]
    lumen = "collapsed" if collapsed else str(rng.choice(["gel", "air", "level"], p=[0.5, 0.2, 0.3]))
    anatomy = Anatomy(
        signal=sig, spine=spine, rectum=rectum, v_promontory=v_p, v_rs=v_rs, v_arj=v_arj, v_anus=v_anus,
        wall=rng.uniform(3.0, 5.0), lumen=lumen, fluid_fraction=rng.uniform(0.3, 0.8),
        meso_post=rng.uniform(8.0, 25.0), meso_ant=rng.uniform(2.0, 6.0), skin_ant=skin_ant, skin_post=skin_post,
        buttock=buttock, fat_ant=fat_ant, fat_post=fat_post, bladder=bladder, pubis=pubis, male=male, gland=gland,
        seminal=seminal, bowel=bowel, bowel_content=content, nodes=nodes, tumour=None)
    if tumour:
        anatomy.tumour = sample_tumour(rng, rectum, v_rs, v_arj)
    return anatomy
