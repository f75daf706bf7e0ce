"""The labelled part of the phantom: mesorectum, pelvic floor, rectum (wall, lumen), anal canal and the tumour.

The rectum label (1) is the whole organ (wall + lumen) between the rectosigmoid and the anorectal junction; the
tumour label (2) is an eccentric thickening of the wall (intermediate T2 signal) growing into the lumen and
sometimes through the wall into the mesorectal fat, as described for rectal cancer on sagittal T2 MRI.
"""
from __future__ import annotations

import numpy as np

from RCSegNeXtCore.phantom.anatomy import V_GRID, Anatomy
from RCSegNeXtCore.phantom.render import Frame, paint, soft, tube_box, tube_coords


def _window(x, half):
    """Smooth bump: 1 at 0, 0 beyond +-half."""
    return np.clip(1.0 - (x / half) ** 2, 0.0, 1.0) ** 0.5


def paint_rectum(canvas: np.ndarray, label: np.ndarray | None, frame: Frame, a: Anatomy,
                 v_range: tuple | None = None) -> None:
    """Paint mesorectum, pelvic floor sling, rectum and anal canal (and the tumour) between v_range (mm).

    With `label`, also mark the rectum (1, wall + lumen between v_rs and v_arj) and the tumour (2).
    """
    s, px, rect = a.signal, frame.px, a.rectum
    v0, v1 = v_range or (rect.v_top, rect.v_bottom)
    box = tube_box(frame, rect, v0, v1, a.meso_post + 14.0, 0.0 if v_range else None)
    if any(b.start >= b.stop for b in box):
        return
    n, dw, d, arc, radius, v = tube_coords(frame, rect, box)
    theta = np.arctan2(dw, n)  # 0 = posterior, +-pi = anterior
    anal = soft(v - a.v_arj, px)  # 1 in the anal canal, 0 in the rectum
    meso_taper = np.clip((a.v_arj - 4 - v) / 25.0, 0, 1) * np.clip((v - a.v_rs + 15) / 45.0, 0, 1)

    # mesorectal fat inside its fascia (thicker behind the rectum), lymph nodes, pelvic floor sling
    meso = radius + (a.meso_ant + (a.meso_post - a.meso_ant) * (1 + np.cos(theta)) / 2) * meso_taper
    paint(canvas, box, soft(meso + 0.8 - d, px) * (meso_taper > 0), s["fascia"])
    paint(canvas, box, soft(meso - 0.6 - d, px) * (meso_taper > 0), s["meso_fat"])
    for v_n, th, offset, r in a.nodes:
        reach = rect.at(v_n, "radius") + offset  # node centre, in the tube's cross-section at level v_n
        dist = np.sqrt((n - reach * np.cos(th)) ** 2 + (dw - reach * np.sin(th)) ** 2 + (v - v_n) ** 2)
        paint(canvas, box, soft(r - dist, px), s["node"])
    sling = np.minimum(np.minimum(d - radius - 0.5, radius + 11 - d), np.minimum(v - a.v_arj + 14, a.v_arj + 12 - v))
    paint(canvas, box, soft(sling, px) * (np.cos(theta) > -0.3), s["ext_sphincter"])

    # wall layers and lumen; the anal canal is sphincter muscle around a closed lumen
    outer = soft(radius - d, px)
    lumen_r = _lumen_radius(a, v, theta, arc, radius)
    mucosa_r = lumen_r + np.where(v > a.v_arj, 5.0, 0.4 * a.wall)
    paint(canvas, box, outer, s["muscularis"] * (1 - anal) + s["ext_sphincter"] * anal)
    paint(canvas, box, soft(mucosa_r - d, px), s["mucosa"] * (1 - anal) + s["int_sphincter"] * anal)
    content = {"gel": s["gel"], "air": s["air"], "collapsed": s["mucus"], "level": s["gel"]}[a.lumen]
    content = content * (1 - anal) + s["mucus"] * anal
    if a.lumen == "level":  # supine: air rises to the front (anterior = smaller u)
        content = np.where(n > -np.cos(np.pi * a.fluid_fraction) * lumen_r, content, s["air"])
    paint(canvas, box, soft(lumen_r - d, px), content)
    if label is not None:
        organ = soft(np.minimum(v - a.v_rs, a.v_arj - v), px) * outer
        label[box][organ >= 0.5] = 1
    if a.tumour is not None:
        _paint_tumour(canvas, label, frame, a)


def _lumen_radius(a: Anatomy, v, theta, arc, radius):
    lumen_r = np.where(v > a.v_arj, 1.5, radius - a.wall).astype(np.float32)
    if a.lumen == "collapsed":
        lumen_r = np.minimum(lumen_r, 3.0 + 1.5 * np.cos(4 * theta))
    return lumen_r * (1.0 + 0.12 * np.sin(6 * theta + arc / 9.0) * (v < a.v_arj))  # mucosal folds


def _paint_tumour(canvas, label, frame: Frame, a: Anatomy) -> None:
    """Eccentric wall thickening: window along the rectum x window around it, from lumen into the fat."""
    t, s, rect = a.tumour, a.signal, a.rectum
    reach = (rect.arc >= t["arc"] - t["length"] / 2 - 4) & (rect.arc <= t["arc"] + t["length"] / 2 + 4)
    v_lo, v_hi = float(V_GRID[reach].min()), float(V_GRID[reach].max())
    box = tube_box(frame, rect, v_lo, v_hi, t["outward"] + 4.0, 4.0)
    if any(b.start >= b.stop for b in box):
        return
    n, dw, d, arc, radius, v = tube_coords(frame, rect, box)
    theta = np.arctan2(dw, n)
    along = _window(arc - t["arc"], t["length"] / 2)
    angle = np.mod(theta - t["theta"] + np.pi, 2 * np.pi) - np.pi
    across = _window(angle, t["half_width"]) if t["half_width"] < np.pi else np.ones_like(angle)
    rough = 1.0 + t["roughness"] * np.sin(5 * theta + t["phase"][0]) * np.sin(arc / 6.0 + t["phase"][1])
    p = along * across * rough
    inner = _lumen_radius(a, v, theta, arc, radius) - t["inward"] * p
    inside = np.minimum(np.minimum(d - inner, radius + t["outward"] * p - d), (p - 0.2) * 12.0)
    inside = np.minimum(inside, (a.v_arj + 3.0) - v)
    weight = soft(inside, frame.px)
    paint(canvas, box, weight, s["tumour"] * (1.0 + 0.08 * np.sin(arc / 3.0 + 3 * theta)))
    if label is not None:
        label[box][weight >= 0.5] = 2
