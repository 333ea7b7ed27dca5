"""Synthetic chest radiographs that show exactly the findings of a study.

Radiological convention: the patient's right is on the image's left (columns < W/2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from vlp.data.demo.findings import SIDES, Device, Effusion, Findings, Nodule, Opacity

_SIGN = {"right": -1.0, "left": 1.0}  # patient side -> direction along the image x axis
_ZONE_Y = {"upper": -0.40, "middle": -0.05, "lower": 0.25}  # zone centre, relative to cy
_HEART_HALF_WIDTH = {"normal": 0.30, "mild": 0.39, "marked": 0.48}


@dataclass(frozen=True)
class _Anatomy:
    """Per-study variation of position, size and exposure, plus jitter of finding positions."""

    cx: float
    cy: float
    width: float
    height: float
    heart: float
    dome: float
    rib_phase: float
    vessel_phase: float
    gain: float
    offset: float
    jitter: tuple[float, ...]


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    u = rng.uniform(-1.0, 1.0, size=14).tolist()
    return _Anatomy(cx=0.04 * u[0], cy=0.04 * u[1], width=1 + 0.05 * u[2],
                    height=1 + 0.05 * u[3], heart=0.02 * u[4], dome=0.04 + 0.02 * u[5],
                    rib_phase=np.pi * u[6], vessel_phase=np.pi * u[7], gain=1 + 0.08 * u[8],
                    offset=0.03 * u[9], jitter=tuple(u[10:]))


@functools.lru_cache(maxsize=16)
def _axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: x as a (1, W) row, y (downwards) as an (H, 1) column."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    c.setflags(write=False)
    return c[None, :], c[:, None]


@dataclass(frozen=True)
class _Scene:
    """Coordinates and anatomy of one image, and the masks the findings are drawn into."""

    a: _Anatomy
    x: np.ndarray  # (1, W)
    y: np.ndarray  # (H, 1)
    px: float  # one pixel in normalised units
    sign: np.ndarray  # (1, W): -1 on the patient's right (image left), +1 on the left
    lx: np.ndarray  # (1, W): centre column of the lung on that side
    la: float  # lung half-width
    re: np.ndarray  # (H, W): normalised radius of the lung ellipse on that side
    ellipse: np.ndarray  # (H, W): soft mask of the lung ellipses
    dome: np.ndarray  # (1, W): hemidiaphragm row
    lungs: np.ndarray  # (H, W): soft mask of the lungs above the diaphragm
    body: np.ndarray  # (H, W): soft mask of the body
    torso: np.ndarray  # (H, W): normalised radius of the torso superellipse


def _inside(distance: np.ndarray | float, width: float) -> np.ndarray:
    """Soft inside-mask from a signed distance (negative inside) with an edge ``width`` wide."""
    return np.clip(0.5 - np.asarray(distance, dtype=np.float32) / width, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float | np.ndarray, cy: float,
             ax: float, ay: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius of an ellipse and an approximate signed distance to its border."""
    u, v = (x - cx) / ax, (y - cy) / ay
    r = np.sqrt(u * u + v * v) + 1e-6
    grad = np.sqrt((u / ax) ** 2 + (v / ay) ** 2) / r + 1e-6
    return r, (r - 1) / grad


def _blend(img: np.ndarray, value: float, alpha: np.ndarray) -> None:
    """Paint ``value`` over ``img`` in place with opacity ``alpha``."""
    img += alpha * (value - img)


def _dome(a: _Anatomy, sign: np.ndarray | float, lateral: np.ndarray | float
          ) -> np.ndarray | float:
    """Row of the hemidiaphragm; ``lateral`` is the offset from the lung centre in half-widths."""
    return a.cy + 0.36 + a.dome * np.minimum(sign, 0) + 0.22 * np.maximum(lateral, -0.5) ** 2


def _build_scene(a: _Anatomy, size: int) -> _Scene:
    x, y = _axes(size)
    px = 2.0 / size
    sign = np.where(x < a.cx, -1.0, 1.0).astype(np.float32)
    lx = a.cx + sign * 0.38 * a.width
    la, lb = 0.32 * a.width, 0.92 * a.height
    re, lung_d = _ellipse(x, y, lx, a.cy + 0.26, la, lb)
    ellipse = _inside(lung_d, 1.5 * px)
    dome = _dome(a, sign, sign * (x - lx) / la)
    lungs = ellipse * _inside(y - dome, 1.5 * px)
    torso = np.cbrt(np.abs((x - a.cx) / (0.88 * a.width)) ** 3
                    + np.abs((y - a.cy - 0.35) / 1.25) ** 3)
    body = np.maximum(_inside((torso - 1) * 0.88, 2 * px),
                      _inside(np.abs(x - a.cx) - 0.2, 2 * px) * (y < 0))
    return _Scene(a, x, y, px, sign, lx, la, re, ellipse, dome, lungs, body, torso)


def _ribs_and_vessels(s: _Scene) -> np.ndarray:
    """Faint posterior rib arcs over the chest and branching vessel markings in the lungs."""
    a, ax = s.a, np.abs(s.x - s.a.cx)
    u = s.y + 0.5 * (ax - 0.3) ** 2
    ribs = np.clip((np.cos(2 * np.pi * u / 0.17 + a.rib_phase) - 0.5) / 0.5, 0, 1)
    ribs = ribs * s.body * _inside(ax - 0.8 * a.width, 3 * s.px)
    dx, dy = ax - 0.14, s.y - (a.cy - 0.02)
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    vessels = ((0.5 + 0.5 * np.cos(11 * theta + 6 * r + a.vessel_phase))
               * (0.5 + 0.5 * np.cos(17 * theta - 9 * r + 2 * a.vessel_phase))) ** 3
    hilum = 0.12 * np.exp(-(r / 0.09) ** 2)
    return 0.06 * ribs + s.lungs * (0.16 * vessels * np.exp(-r / 0.35) + hilum)


def _draw_chest_wall(s: _Scene) -> np.ndarray:
    """Body, bright lateral outline, abdomen below the diaphragm, lungs, ribs and clavicles."""
    a, x, y, px = s.a, s.x, s.y, s.px
    img = np.full((y.shape[0], x.shape[1]), 0.04, dtype=np.float32)
    _blend(img, 0.48, s.body)
    img += 0.10 * s.body * np.clip((s.torso - 0.86) / 0.14, 0, 1)
    _blend(img, 0.63, s.body * _inside(s.dome - y, 2 * px))
    _blend(img, 0.15, s.lungs)
    img += _ribs_and_vessels(s) * (y < s.dome + 0.05)
    _, bubble = _ellipse(x, y, a.cx + 0.40, a.cy + 0.56, 0.09, 0.05)  # gastric bubble (left)
    _blend(img, 0.32, 0.8 * _inside(bubble, 1.5 * px))
    ax = np.abs(x - a.cx)
    clavicle = _inside(np.abs(y - (a.cy - 0.60 - 0.10 * ax)) - 0.022, px)
    img += 0.10 * clavicle * _inside(0.08 - ax, px) * _inside(ax - 0.62, 2 * px) * s.body
    return img


def _draw_mediastinum(img: np.ndarray, s: _Scene, heart: str) -> np.ndarray:
    """Mediastinum, trachea, aortic knob and heart (its width set by ``heart``); their mask."""
    a, x, y, px = s.a, s.x, s.y, s.px
    mediastinum = _inside(np.abs(x - a.cx - 0.01) - 0.12, 1.5 * px) * _inside(-0.92 - y, px)
    mediastinum = mediastinum * _inside(y - s.dome - 0.02, px)
    _blend(img, 0.66, mediastinum)
    _blend(img, 0.44, 0.8 * _inside(np.abs(x - a.cx) - 0.035, px) * _inside(y - a.cy + 0.30, px))
    _, knob = _ellipse(x, y, a.cx + 0.11, a.cy - 0.32, 0.07, 0.06)
    _blend(img, 0.70, _inside(knob, 1.5 * px))
    hw = _HEART_HALF_WIDTH[heart] + a.heart
    _, heart_d = _ellipse(x, y, a.cx + 0.25 * hw, a.cy + 0.24, hw, 0.25 * a.height)
    heart_mask = _inside(heart_d, 1.5 * px) * _inside(y - s.dome - 0.02, px)
    _blend(img, 0.72, heart_mask)
    return np.maximum(mediastinum, heart_mask)


def _draw_normal(s: _Scene, heart: str) -> tuple[np.ndarray, np.ndarray]:
    """The normal chest (with the given heart size) and the mask of visible aerated lung."""
    img = _draw_chest_wall(s)
    central = _draw_mediastinum(img, s, heart)
    return img, s.lungs * (1 - central)


def _half(s: _Scene, side: str) -> np.ndarray:
    return (s.sign == _SIGN[side]).astype(np.float32)


def _draw_opacity(img: np.ndarray, s: _Scene, air: np.ndarray, o: Opacity) -> None:
    a, sign = s.a, _SIGN[o.side]
    ox = a.cx + sign * (0.42 * a.width + 0.03 * a.jitter[0])
    oy = a.cy + _ZONE_Y[o.zone] + 0.04 * a.jitter[1]
    sigma = 0.13 if o.size == "large" else 0.07
    g = np.exp(-0.5 * (((s.x - ox) / sigma) ** 2 + ((s.y - oy) / (1.2 * sigma)) ** 2))
    _blend(img, 0.62, 0.85 * g * air)


def _draw_effusion(img: np.ndarray, s: _Scene, e: Effusion) -> None:
    """Homogeneous fluid in the costophrenic angle with a meniscus rising laterally."""
    level = 0.32 if e.size == "moderate" else 0.15
    for side in SIDES if e.side == "bilateral" else (e.side,):
        t = np.clip(_SIGN[side] * (s.x - s.lx) / s.la, -1, 1)
        corner = _dome(s.a, _SIGN[side], 0.8)
        top = corner - level * (0.35 + 0.65 * ((t + 1) / 2) ** 2)
        fluid = s.ellipse * _half(s, side) * _inside(top - s.y, 3 * s.px)
        _blend(img, 0.60, 0.95 * fluid * _inside(s.y - corner - 0.06, 2 * s.px))


def _draw_pneumothorax(img: np.ndarray, s: _Scene, side: str) -> None:
    """Air without lung markings along the apex and lateral wall, edged by the pleural line."""
    r_in = 0.72
    lateral = _inside((-0.2 - _SIGN[side] * (s.x - s.lx) / s.la) * s.la, 2 * s.px)
    apex = _inside(s.y - s.a.cy + 0.45, 4 * s.px)
    region = s.lungs * _half(s, side) * _inside(s.y - s.a.cy - 0.15, 4 * s.px)
    region = region * np.maximum(lateral, apex)
    _blend(img, 0.03, region * _inside((r_in - s.re) * s.la, s.px))
    img += 0.18 * region * np.exp(-(((s.re - r_in) * s.la) / (0.7 * s.px)) ** 2)


def _draw_nodule(img: np.ndarray, s: _Scene, n: Nodule) -> None:
    a, sign = s.a, _SIGN[n.side]
    nx = a.cx + sign * (0.40 * a.width + 0.06 * a.jitter[2])
    ny = a.cy + _ZONE_Y[n.zone] + 0.06 * a.jitter[3]
    radius = 0.02 + 0.003 * n.mm
    d = np.sqrt((s.x - nx) ** 2 + (s.y - ny) ** 2) - radius
    _blend(img, 0.85, _inside(d, s.px))


def _segment_distance(x: np.ndarray, y: np.ndarray, p: tuple[float, float],
                      q: tuple[float, float]) -> np.ndarray:
    vx, vy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((x - p[0]) * vx + (y - p[1]) * vy) / (vx * vx + vy * vy), 0, 1)
    return np.sqrt((x - p[0] - t * vx) ** 2 + (y - p[1] - t * vy) ** 2)


def _device_path(a: _Anatomy, d: Device) -> list[tuple[float, float]]:
    """Polyline of a device: a catheter enters at the neck and ends in the SVC (patient right)."""
    if d.kind == "tube":
        return [(a.cx, -1.0), (a.cx, a.cy - 0.42)]
    svc = (a.cx - 0.05, a.cy - 0.15)
    if d.side == "left":
        return [(a.cx + 0.16, -1.0), (a.cx + 0.12, a.cy - 0.55), (a.cx - 0.03, a.cy - 0.42), svc]
    return [(a.cx - 0.16, -1.0), (a.cx - 0.10, a.cy - 0.55), svc]


def _draw_device(img: np.ndarray, s: _Scene, d: Device) -> None:
    path = _device_path(s.a, d)
    dist = np.min([_segment_distance(s.x, s.y, p, q) for p, q in pairwise(path)], axis=0)
    half_width = max(0.6 * s.px, 0.01)
    _blend(img, 0.95, 0.9 * _inside(dist - half_width, s.px))


def render_chest(findings: Findings, rng: np.random.Generator, image_size: int = 64
                 ) -> np.ndarray:
    """A (H, W) float32 radiograph in [0, 1] showing ``findings``.

    ``rng`` fixes anatomy, exposure and noise, and is consumed identically whatever the
    findings, so two calls with equally seeded generators differ only where findings differ.
    """
    anatomy = _sample_anatomy(rng)
    noise = rng.standard_normal((image_size, image_size), dtype=np.float32)
    scene = _build_scene(anatomy, image_size)
    img, air = _draw_normal(scene, findings.heart)
    if findings.effusion:
        _draw_effusion(img, scene, findings.effusion)
    if findings.opacity:
        _draw_opacity(img, scene, air, findings.opacity)
    if findings.pneumothorax:
        _draw_pneumothorax(img, scene, findings.pneumothorax)
    if findings.nodule:
        _draw_nodule(img, scene, findings.nodule)
    if findings.device:
        _draw_device(img, scene, findings.device)
    img += 0.012 * noise
    return np.clip(img * anatomy.gain + anatomy.offset, 0.0, 1.0)
