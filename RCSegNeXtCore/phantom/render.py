"""Paint a phantom `Anatomy` onto a (z, y, x) voxel grid: tissue signal (noise-free) and the rectum/tumour label.

Each structure is evaluated only inside its bounding box, with anti-aliased (soft) edges one pixel wide, painted back
to front: body and fat, bowel loops, spine, pelvic organs, mesorectum, then the rectum with its tumour on top.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from RCSegNeXtCore.phantom.anatomy import V_GRID, Anatomy, Ellipsoid, Tube


class Frame:
    """Voxel grid in patient coordinates: u(y, x), v(y, x) maps for every slice and w(z) per slice.

    `x_mm`, `y_mm`: in-plane pixel centres (mm, before the in-plane tilt) on the grid's own axes.
    """

    def __init__(self, nz: int, sz: float, y_mm: np.ndarray, x_mm: np.ndarray, centre_uvw, tilt: float):
        c, s = np.cos(tilt), np.sin(tilt)
        self.shape = (int(nz), len(y_mm), len(x_mm))
        self.step = (float(sz), float(y_mm[1] - y_mm[0]), float(x_mm[1] - x_mm[0]))
        self.first = (-(nz - 1) / 2 * sz, float(y_mm[0]), float(x_mm[0]))
        self.px = float(min(self.step[1:]))
        self.centre, self.rot = centre_uvw, (c, s)
        self.U = (centre_uvw[0] + c * x_mm[None, :] - s * y_mm[:, None]).astype(np.float32)
        self.V = (centre_uvw[1] + s * x_mm[None, :] + c * y_mm[:, None]).astype(np.float32)
        self.W = (centre_uvw[2] + self.first[0] + np.arange(nz) * sz).astype(np.float32)

    def box(self, u0, u1, v0, v1, w0=-1e9, w1=1e9) -> Tuple[slice, slice, slice]:
        """Index slices (z, y, x) covering the patient box [u0,u1] x [v0,v1] x [w0,w1] (may be empty)."""
        c, s = self.rot
        du = np.array([u0, u1, u0, u1]) - self.centre[0]
        dv = np.array([v0, v0, v1, v1]) - self.centre[1]
        x, y = c * du + s * dv, -s * du + c * dv
        z = np.array([w0, w1]) - self.centre[2]
        out = []
        for axis, values in enumerate((z, y, x)):
            index = (values - self.first[axis]) / self.step[axis]
            lo = int(np.clip(np.floor(index.min()), 0, self.shape[axis]))
            out.append(slice(lo, int(np.clip(np.ceil(index.max()) + 1, lo, self.shape[axis]))))
        return tuple(out)

    def coords(self, box):
        """(u, v) as (1, y, x) and w as (z, 1, 1) arrays inside `box`."""
        bz, by, bx = box
        return self.U[None, by, bx], self.V[None, by, bx], self.W[bz, None, None]


def upsample2(coarse: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Linear x2 in-plane upsampling from a grid whose pixel j sits at fine position 2j + 0.5."""
    def along(a, axis, n):
        a = np.moveaxis(a, axis, -1)
        prev = np.concatenate([a[..., :1], a[..., :-1]], axis=-1)
        nxt = np.concatenate([a[..., 1:], a[..., -1:]], axis=-1)
        out = np.empty(a.shape[:-1] + (2 * a.shape[-1],), np.float32)
        out[..., 0::2] = 0.75 * a + 0.25 * prev
        out[..., 1::2] = 0.75 * a + 0.25 * nxt
        return np.moveaxis(out[..., :n], -1, axis)
    return np.ascontiguousarray(along(along(coarse, 1, ny), 2, nx))


def soft(signed_mm, px: float):
    """Anti-aliased inside-fraction from a signed distance (mm, positive inside)."""
    return np.clip(signed_mm / px + 0.5, 0.0, 1.0)


def paint(canvas, box, weight, value) -> None:
    """Blend `value` into `canvas[box]` with `weight` (0..1, anti-aliased edges), in place."""
    region = canvas[box]
    region += weight * (value - region)


def ellipsoid_rho(frame: Frame, e: Ellipsoid, margin: float = 2.0):
    """Bounding box and normalised radius rho (< 1 inside) of an ellipsoid; None when it misses the grid."""
    reach = max(e.axes[0], e.axes[1]) + margin
    box = frame.box(e.centre[0] - reach, e.centre[0] + reach, e.centre[1] - reach, e.centre[1] + reach,
                    e.centre[2] - e.axes[2] - margin, e.centre[2] + e.axes[2] + margin)
    if any(b.start >= b.stop for b in box):
        return None, None, None
    u, v, w = frame.coords(box)
    c, s = np.cos(e.tilt), np.sin(e.tilt)
    du, dv = u - e.centre[0], v - e.centre[1]
    a, b = (c * du + s * dv) / e.axes[0], (-s * du + c * dv) / e.axes[1]
    rho = np.sqrt(a * a + b * b + ((w - e.centre[2]) / e.axes[2]) ** 2)
    return box, rho, (a, b)


def paint_layers(canvas, frame: Frame, e: Ellipsoid, layers) -> None:
    """Paint nested shells: layers = [(rho_outer, value), ...] from outside in."""
    box, rho, _ = ellipsoid_rho(frame, e)
    if box is None:
        return
    scale = 3.0 / sum(1.0 / a for a in e.axes)
    for rho_out, value in layers:
        paint(canvas, box, soft((rho_out - rho) * scale, frame.px), value)


def tube_coords(frame: Frame, tube: Tube, box):
    """Perpendicular offsets of voxels from a tube's centre: n (posterior +), dw, d and arc position."""
    u, v, w = frame.coords(box)
    vi = np.clip(v, V_GRID[0], V_GRID[-1])
    cos_a = np.interp(vi, V_GRID, tube.cos_a).astype(np.float32)
    n = (u - np.interp(vi, V_GRID, tube.u).astype(np.float32)) * cos_a
    arc = np.interp(vi, V_GRID, tube.arc).astype(np.float32) + n * np.interp(vi, V_GRID, tube.tan_a)
    dw = w - np.interp(vi, V_GRID, tube.w).astype(np.float32)
    radius = np.interp(vi, V_GRID, tube.radius).astype(np.float32)
    return n, dw, np.sqrt(n * n + dw * dw), arc, radius, v


def tube_box(frame: Frame, tube: Tube, v0: float, v1: float, margin: float, v_margin: float | None = None):
    """Index box around the part of `tube` between v0 and v1, `margin` mm around its wall (v: `v_margin`)."""
    sel = (V_GRID >= v0) & (V_GRID <= v1)
    reach = tube.radius[sel].max() + margin
    v_margin = margin if v_margin is None else v_margin
    return frame.box(tube.u[sel].min() - reach, tube.u[sel].max() + reach, v0 - v_margin, v1 + v_margin,
                     tube.w[sel].min() - reach, tube.w[sel].max() + reach)


def paint_body(canvas, frame: Frame, a: Anatomy) -> np.ndarray:
    """Skin outline, subcutaneous fat, visceral fat, abdominal and gluteal muscles; returns the body's weight."""
    s, px, full = a.signal, frame.px, (slice(None),) * 3
    u, v, w = frame.coords(full)
    lateral = np.clip((np.abs(w) - 10.0) / 30.0, 0, 1)  # 0 in the midline, 1 beside the natal cleft
    vi = np.clip(v, V_GRID[0], V_GRID[-1])
    u_ant = np.interp(vi, V_GRID, a.skin_ant).astype(np.float32)
    u_post = np.interp(vi, V_GRID, a.skin_post).astype(np.float32)
    u_post = u_post + lateral * np.interp(vi, V_GRID, a.buttock).astype(np.float32)
    u_anus = a.rectum.at(a.v_anus, "u")
    bottom = a.v_anus + 3 + 0.25 * np.abs(u - u_anus) + lateral * 150
    inside = np.minimum(np.minimum(u - u_ant, u_post - u), bottom - v)
    canvas[:] = s["air"]
    paint(canvas, full, soft(inside, px), s["skin"])  # then everything is cut back to `inside` at the end
    paint(canvas, full, soft(inside - 2.0, px), s["fat"])
    front = u - u_ant - 2.0 - a.fat_ant
    pubis_top = a.pubis.centre[1] - 0.6 * a.pubis.axes[1]
    paint(canvas, full, soft(np.minimum(front - 11.0, inside - 2.0 - a.fat_post), px), s["visceral_fat"])
    wall = np.where(v < pubis_top, np.minimum(front, 11.0 - front), -10.0)
    paint(canvas, full, soft(wall, px), s["muscle"])
    weight = soft(inside, px)
    spine_back = np.interp(vi, V_GRID, a.spine.u).astype(np.float32) - 5.0
    gluteus = np.minimum(np.minimum(u_post - a.fat_post - u, u - spine_back), v - 0.5 * a.v_promontory)
    gluteus = np.minimum(gluteus, bottom - 25 - v)
    paint(canvas, full, soft(gluteus, px) * lateral, s["muscle"])
    return weight


def paint_spine(canvas, frame: Frame, a: Anatomy) -> None:
    """Vertebral bodies / sacrum / coccyx (marrow, cortex, discs), spinal canal, arches, posterior muscles."""
    s, px, sp = a.signal, frame.px, a.spine
    v_min = max(V_GRID[0] + 5, float(frame.V.min()) - 40)
    box = tube_box(frame, sp, v_min, 2.0, 100.0)
    if any(b.start >= b.stop for b in box):
        return
    n, _, _, arc, depth, v = tube_coords(frame, sp, box)
    _, _, w = frame.coords(box)
    end = soft(-v, px)  # nothing below the coccyx tip
    vp = a.v_promontory
    # half-width: lumbar bodies ~24 mm, sacral alae ~50 mm at S1, narrowing to the coccyx
    width = np.interp(v, [vp - 30, vp - 5, vp + 10, 0.3 * vp, 0.0], [24.0, 24.0, 50.0, 25.0, 10.0]).astype(np.float32)
    lateral = width - np.abs(w)
    psoas = np.minimum(np.minimum(n + 25.0, depth + 5.0 - n), np.minimum(np.abs(w) - 16.0, vp + 30.0 - v))
    paint(canvas, box, soft(psoas, px), s["muscle"])  # beside the lumbar bodies, down to the pelvic brim
    lumbar = np.clip((0.5 * vp - v) / (-0.5 * vp), 0, 1).astype(np.float32)  # 1 above the promontory -> 0 at S3
    canal = 12.0 * lumbar
    arch = 4.0 + 18.0 * lumbar
    behind = n - depth
    muscle = np.minimum(np.minimum(n, 14.0 + canal + arch + 30.0 * lumbar - behind), 0.0 - v + 25.0)
    paint(canvas, box, soft(muscle, px), s["muscle"])
    bone = np.minimum(np.minimum(n, canal + arch + 2.0 - behind), np.minimum(lateral, -v))
    paint(canvas, box, soft(bone, px), s["cortex"])
    inner_arch = np.minimum(np.minimum(behind - canal - 3.5, canal + arch - 0.5 - behind), 30.0 - np.abs(w))
    paint(canvas, box, soft(inner_arch, px) * (lumbar > 0.1), s["marrow"] * 0.9)
    in_canal = np.minimum(np.minimum(behind - 2.0, canal + 2.0 - behind), 12.0 - np.abs(w))
    paint(canvas, box, soft(in_canal, px), s["csf"])
    inner = np.minimum(np.minimum(n - 1.6, depth - 1.6 - n), lateral - 1.6)
    # segments along the arc: lumbar vertebral bodies with discs, fused sacral segments with thin remnants
    arc_p = np.interp(vp, V_GRID, sp.arc)
    seg = np.where(arc < arc_p, 38.0, 24.0)
    phase = np.mod(arc - arc_p, seg) / seg
    endplate = np.minimum(phase, 1 - phase) * seg
    disc_half = np.where(arc < arc_p, 5.5, 0.8)
    paint(canvas, box, soft(np.minimum(inner, endplate - 1.2), px) * end, s["marrow"])
    paint(canvas, box, soft(np.minimum(inner + 1.6, disc_half - endplate), px) * end,
          np.where(arc < arc_p, s["mucus"], s["muscle"]))


def paint_pelvic_organs(canvas, frame: Frame, a: Anatomy) -> None:
    """Bowel loops, pubis, perineal body, bladder, then prostate (zones) and seminal vesicles or uterus and vagina."""
    s = a.signal
    for e, content in zip(a.bowel, a.bowel_content):
        paint_layers(canvas, frame, e, [(1.0, s["bowel_wall"]), (0.8, s[content])])
    paint_layers(canvas, frame, a.pubis, [(1.0, s["cortex"]), (0.82, s["marrow"])])
    v_pb = a.v_arj + 0.4 * (a.v_anus - a.v_arj)  # perineal body in front of the anal canal
    u_pb = a.rectum.at(v_pb, "u") - a.rectum.at(v_pb, "radius") - 8.0
    paint_layers(canvas, frame, Ellipsoid((u_pb, v_pb, 0.0), (9.0, 13.0, 14.0), 0.4), [(1.0, s["perineum"])])
    paint_layers(canvas, frame, a.bladder, [(1.0, s["muscularis"]), (0.92, s["urine"])])
    if a.male:
        paint_layers(canvas, frame, a.seminal, [(1.0, s["fascia"]), (0.8, s["sv"])])
        box, rho, (ca, cb) = ellipsoid_rho(frame, a.gland)
        if box is not None:
            scale = 3.0 / sum(1.0 / x for x in a.gland.axes)
            paint(canvas, box, soft((1.0 - rho) * scale, frame.px), s["pz"])
            central = np.sqrt(((ca + 0.25) / 0.7) ** 2 + (cb / 0.85) ** 2 + (rho ** 2 - ca ** 2 - cb ** 2) / 0.6)
            paint(canvas, box, soft((1.0 - central) * scale, frame.px), s["cg"])
    else:
        paint_layers(canvas, frame, a.gland, [(1.0, s["myometrium"]), (0.5, s["jz"]), (0.35, s["endometrium"])])
        vagina = Tube(a.rectum.u - a.rectum.radius - 14.0, a.rectum.w * 0, np.full_like(V_GRID, 6.0),
                      a.gland.centre[1], a.v_anus - 3)
        box = tube_box(frame, vagina, vagina.v_top, vagina.v_bottom, 20.0)
        n, dw, _, _, _, v = tube_coords(frame, vagina, box)
        rho = np.sqrt((n / 5.0) ** 2 + (dw / 16.0) ** 2)
        keep = soft(np.minimum(v - vagina.v_top, vagina.v_bottom - v), frame.px)
        paint(canvas, box, soft((1 - rho) * 5.0, frame.px) * keep, s["vagina"])
        paint(canvas, box, soft((0.2 - rho) * 5.0, frame.px) * keep, s["mucus"] * 1.6)
