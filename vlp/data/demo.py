"""A built-in demo data set: synthetic chest radiographs with matching radiology reports.

Nothing is downloaded or read: item i is a pure function of (seed, offset + i). Images follow
the radiological convention: the patient's right is on the image's left (columns < W/2) and
the patient's left on the image's right. "Left" and "right" in a report always mean the
patient's side. Every finding named in a report is drawn in the image.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from vlp.data.sample import Pair

T = TypeVar("T")

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
NORMAL_FRACTION = 0.18
_TEXT_STREAM, _IMAGE_STREAM = 0, 1
_SIGN = {"right": -1.0, "left": 1.0}  # patient side -> direction along the image x axis
_ZONE_Y = {"upper": -0.40, "middle": -0.05, "lower": 0.25}  # zone centre, relative to cy
_HEART_HALF_WIDTH = {"normal": 0.30, "mild": 0.39, "marked": 0.48}


@dataclass(frozen=True)
class Opacity:
    """Focal airspace opacity: side (patient), zone (upper/middle/lower), size (small/large)."""

    side: str
    zone: str
    size: str


@dataclass(frozen=True)
class Effusion:
    """Pleural effusion: side (right/left/bilateral), size (small/moderate)."""

    side: str
    size: str


@dataclass(frozen=True)
class Nodule:
    """A pulmonary nodule of ``mm`` millimetres in one zone of one lung."""

    side: str
    zone: str
    mm: int


@dataclass(frozen=True)
class Device:
    """A support device: kind "catheter" (central line, from the ``side`` neck) or "tube" (ETT)."""

    kind: str
    side: str | None = None


@dataclass(frozen=True)
class Findings:
    """What one demo study shows; the default is the normal study."""

    opacity: Opacity | None = None
    heart: str = "normal"  # cardiac silhouette width: normal / mild / marked
    effusion: Effusion | None = None
    pneumothorax: str | None = None  # side
    nodule: Nodule | None = None
    device: Device | None = None

    @property
    def is_normal(self) -> bool:
        """No acute finding and no device."""
        return self == Findings()


# ----------------------------------------------------------------------------- findings


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _sample_device(rng: np.random.Generator) -> Device:
    return Device("catheter", _pick(rng, SIDES)) if rng.random() < 0.7 else Device("tube")


def _abnormal_draw(rng: np.random.Generator) -> Findings:
    """Each finding independently; the result may still be normal (the caller redraws)."""
    u = rng.random(6)
    opacity = Opacity(_pick(rng, SIDES), _pick(rng, ZONES), _pick(rng, ("small", "large")))
    effusion = Effusion(_pick(rng, ("right", "left", "bilateral")),
                        _pick(rng, ("small", "moderate")))
    nodule = Nodule(_pick(rng, SIDES), _pick(rng, ZONES), int(rng.integers(6, 15)))
    return Findings(
        opacity=opacity if u[0] < 0.4 else None,
        heart="mild" if u[1] < 0.14 else "marked" if u[1] < 0.26 else "normal",
        effusion=effusion if u[2] < 0.3 else None,
        pneumothorax=_pick(rng, SIDES) if u[3] < 0.15 else None,
        nodule=nodule if u[4] < 0.2 else None,
        device=_sample_device(rng) if u[5] < 0.25 else None,
    )


def sample_findings(rng: np.random.Generator) -> Findings:
    """Random findings: normal with probability NORMAL_FRACTION, else at least one finding."""
    if rng.random() < NORMAL_FRACTION:
        return Findings()
    while True:
        findings = _abnormal_draw(rng)
        if not findings.is_normal:
            return findings


# ----------------------------------------------------------------------------- reports

_OPACITY = (
    "{Size} airspace opacity in the {side} {zone} zone.",
    "There is {a_size} opacity projecting over the {side} {zone} lung.",
    "{Size} consolidation in the {side} {zone} lung zone.",
    "The {side} {zone} zone demonstrates {a_size} area of consolidation.",
    "{A_size} focus of airspace opacity is seen in the {side} {zone} zone.",
)
_OPACITY_IMPRESSION = (
    "{Side} {zone} zone opacity, likely pneumonia.",
    "{Size} {side} {zone} consolidation concerning for pneumonia.",
    "Findings suggest {side} {zone} zone pneumonia.",
    "{Side} {zone} airspace disease; follow-up to resolution is recommended.",
)
_OPACITY_SIZE = {"small": ("small", "subtle", "patchy", "faint"),
                 "large": ("large", "extensive", "dense", "confluent")}
_ZONE_WORD = {"upper": ("upper",), "middle": ("mid", "middle"), "lower": ("lower", "basal")}
_HEART = {
    "mild": ("The cardiac silhouette is mildly enlarged.", "Mild cardiomegaly.",
             "Heart size is mildly enlarged.",
             "There is mild enlargement of the cardiac silhouette."),
    "marked": ("The cardiac silhouette is markedly enlarged.", "Marked cardiomegaly.",
               "Severe cardiomegaly.", "Heart size is severely enlarged."),
    "normal": ("Heart size is normal.", "The cardiac silhouette is normal in size.",
               "Normal cardiomediastinal silhouette.",
               "The cardiomediastinal silhouette is within normal limits."),
}
_HEART_IMPRESSION = {
    "mild": ("Mild cardiomegaly.", "Mildly enlarged heart."),
    "marked": ("Marked cardiomegaly.", "Severe cardiomegaly.",
               "Markedly enlarged cardiac silhouette."),
}
_EFFUSION = (
    "{Size} {side} pleural effusion.",
    "There is {a_size} {side}-sided pleural effusion.",
    "{Size} {side} effusion with blunting of the costophrenic angle.",
    "Blunting of the {side} costophrenic angle, consistent with {a_size} effusion.",
)
_EFFUSION_BILATERAL = (
    "{Size} bilateral pleural effusions.",
    "There are {size} bilateral effusions.",
    "Blunting of both costophrenic angles, consistent with {size} bilateral effusions.",
)
_EFFUSION_IMPRESSION = ("{Size} {side} pleural effusion.", "{Side} pleural effusion.")
_EFFUSION_SIZE = {"small": ("small",), "moderate": ("moderate", "moderate-sized")}
_PNEUMOTHORAX = (
    "There is a {side} apical pneumothorax.",
    "{Side} pneumothorax with a visible visceral pleural line.",
    "A {side}-sided pneumothorax is present.",
    "A {side} pneumothorax is seen along the apex and lateral chest wall.",
)
_PNEUMOTHORAX_IMPRESSION = ("{Side} pneumothorax.", "{Side}-sided pneumothorax.",
                            "{Side} pneumothorax, recommend clinical correlation.")
_NODULE = (
    "{mm} mm nodule in the {side} {zone} zone.",
    "There is a {mm}-mm rounded nodular density in the {side} {zone} lung.",
    "A well-circumscribed {side} {zone} zone pulmonary nodule measures {mm} mm.",
)
_NODULE_IMPRESSION = (
    "{Side} pulmonary nodule; CT chest recommended for further characterization.",
    "{mm} mm {side} {zone} zone nodule.",
    "{Side} {zone} lung nodule, nonemergent CT follow-up advised.",
)
_CATHETER = (
    "{Side} internal jugular central venous catheter with tip in the SVC.",
    "{Side}-sided central line terminates in the superior vena cava.",
    "A {side} IJ catheter is present, tip projecting over the SVC.",
)
_CATHETER_IMPRESSION = ("{Side} central venous catheter in satisfactory position.",
                        "{Side} IJ catheter tip in the SVC.")
_TUBE = ("Endotracheal tube in place, tip approximately 4 cm above the carina.",
         "Endotracheal tube terminates above the carina.",
         "The ET tube is in satisfactory position above the carina.")
_TUBE_IMPRESSION = ("Endotracheal tube in appropriate position.", "ET tube in good position.")
_NO_OPACITY = ("No focal consolidation.", "There is no focal airspace opacity.",
               "No consolidation.")
_NO_EFFUSION = ("No pleural effusion.", "There is no pleural effusion.")
_NO_PNEUMOTHORAX = ("No pneumothorax.", "There is no pneumothorax.")
_NO_EFFUSION_OR_PNEUMOTHORAX = ("No pleural effusion or pneumothorax.",
                                "There is no pleural effusion or pneumothorax.")
_CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear bilaterally.", "Clear lungs.")
_NO_ACUTE = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
             "No acute findings.", "No radiographic evidence of acute disease.")
_NORMAL_STUDY = ("Normal chest radiograph.", "Normal chest x-ray.")
_FILLER = (
    "The osseous structures are intact.", "Comparison: none.", "No prior studies available.",
    "The visualized upper abdomen is unremarkable.",
    "Mild degenerative changes of the thoracic spine.", "No acute osseous abnormality.",
    "The soft tissues are unremarkable.", "Thoracic spine alignment is normal.",
    "The trachea is midline.", "Mediastinal contours are unremarkable.",
)
_TECHNIQUE = ("Single frontal view of the chest.", "PA and lateral views of the chest.",
              "Portable AP view performed at the bedside.", "Portable technique.")
_INDICATION = ("Cough", "Shortness of breath", "Fever", "Chest pain", "Preoperative evaluation",
               "Follow-up", "Dyspnea", "Hypoxia", "Weakness", "Trauma")


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _fill(rng: np.random.Generator, templates: Sequence[str], **fields: str | int) -> str:
    """One template filled in; ``Name`` fields are capitalised, ``a_name`` get an article."""
    values: dict[str, str] = {}
    for key, value in fields.items():
        text = str(value)
        values[key] = text
        values[key.capitalize()] = text[:1].upper() + text[1:]
        values[f"a_{key}"] = _article(text)
        values[f"A_{key}"] = _article(text).capitalize()
    return _pick(rng, templates).format(**values)


def _opacity_sentences(o: Opacity, rng: np.random.Generator) -> tuple[str, str]:
    zone = _pick(rng, _ZONE_WORD[o.zone])
    size = _pick(rng, _OPACITY_SIZE[o.size])
    return (_fill(rng, _OPACITY, side=o.side, zone=zone, size=size),
            _fill(rng, _OPACITY_IMPRESSION, side=o.side, zone=zone, size=size))


def _effusion_sentences(e: Effusion, rng: np.random.Generator) -> tuple[str, str]:
    size = _pick(rng, _EFFUSION_SIZE[e.size])
    templates = _EFFUSION_BILATERAL if e.side == "bilateral" else _EFFUSION
    impression = _fill(rng, _EFFUSION_IMPRESSION, side=e.side, size=size)
    if e.side == "bilateral":
        impression = impression.replace("effusion.", "effusions.")
    return _fill(rng, templates, side=e.side, size=size), impression


def _nodule_sentences(n: Nodule, rng: np.random.Generator) -> tuple[str, str]:
    zone = _pick(rng, _ZONE_WORD[n.zone])
    return (_fill(rng, _NODULE, side=n.side, zone=zone, mm=n.mm),
            _fill(rng, _NODULE_IMPRESSION, side=n.side, zone=zone, mm=n.mm))


def _device_sentences(d: Device, rng: np.random.Generator) -> tuple[str, str]:
    if d.kind == "tube":
        return _pick(rng, _TUBE), _pick(rng, _TUBE_IMPRESSION)
    side = d.side or "right"
    return (_fill(rng, _CATHETER, side=side),
            _fill(rng, _CATHETER_IMPRESSION, side=side))


def _positive_sentences(f: Findings, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(findings sentence, impression sentence) for every finding present."""
    pairs = []
    if f.opacity:
        pairs.append(_opacity_sentences(f.opacity, rng))
    if f.heart != "normal":
        pairs.append((_pick(rng, _HEART[f.heart]), _pick(rng, _HEART_IMPRESSION[f.heart])))
    if f.effusion:
        pairs.append(_effusion_sentences(f.effusion, rng))
    if f.pneumothorax:
        pairs.append((_fill(rng, _PNEUMOTHORAX, side=f.pneumothorax),
                      _fill(rng, _PNEUMOTHORAX_IMPRESSION, side=f.pneumothorax)))
    if f.nodule:
        pairs.append(_nodule_sentences(f.nodule, rng))
    if f.device:
        pairs.append(_device_sentences(f.device, rng))
    return pairs


def _negative_sentences(f: Findings, rng: np.random.Generator) -> list[str]:
    """Some pertinent negatives; any naming a finding starts with "No" or "There is no"."""
    out = []
    if f.heart == "normal" and rng.random() < 0.6:
        out.append(_pick(rng, _HEART["normal"]))
    clear = f.opacity is None and f.nodule is None and f.effusion is None and not f.pneumothorax
    if clear and rng.random() < 0.7:
        out.append(_pick(rng, _CLEAR_LUNGS))
    if f.opacity is None and rng.random() < 0.5:
        out.append(_pick(rng, _NO_OPACITY))
    if f.effusion is None and f.pneumothorax is None and rng.random() < 0.5:
        out.append(_pick(rng, _NO_EFFUSION_OR_PNEUMOTHORAX))
    else:
        if f.effusion is None and rng.random() < 0.5:
            out.append(_pick(rng, _NO_EFFUSION))
        if f.pneumothorax is None and rng.random() < 0.5:
            out.append(_pick(rng, _NO_PNEUMOTHORAX))
    return out


def _filler_sentences(rng: np.random.Generator) -> list[str]:
    """Zero to four image-irrelevant sentences, so that reports vary beyond the findings."""
    count = int(rng.integers(4))
    filler = [_FILLER[i] for i in rng.choice(len(_FILLER), size=count, replace=False)]
    return [*filler, _pick(rng, _TECHNIQUE)] if rng.random() < 0.4 else filler


def _impression(f: Findings, positives: list[str], rng: np.random.Generator) -> list[str]:
    if f.is_normal:
        return [_pick(rng, _NO_ACUTE + _NORMAL_STUDY)]
    if f == Findings(device=f.device):
        return [*positives, _pick(rng, _NO_ACUTE)]
    return positives


def write_report(findings: Findings, rng: np.random.Generator) -> str:
    """A FINDINGS + IMPRESSION report for ``findings``; phrasing and sentence order vary."""
    pairs = _positive_sentences(findings, rng)
    body = [p[0] for p in pairs] + _negative_sentences(findings, rng) + _filler_sentences(rng)
    rng.shuffle(body)
    impression = [p[1] for p in pairs]
    rng.shuffle(impression)
    impression = _impression(findings, impression, rng)
    indication = f"INDICATION: {_pick(rng, _INDICATION)}. " if rng.random() < 0.5 else ""
    return f"{indication}FINDINGS: {' '.join(body)} IMPRESSION: {' '.join(impression)}"


# ----------------------------------------------------------------------------- images


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


# ----------------------------------------------------------------------------- data set


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, index, stream]))


def _findings_and_report(seed: int, index: int) -> tuple[Findings, str]:
    rng = _rng(seed, index, _TEXT_STREAM)
    findings = sample_findings(rng)
    return findings, write_report(findings, rng)


def demo_reports(size: int, seed: int = 0, offset: int = 0) -> list[str]:
    """The reports of ``DemoDataset(size, seed=seed, offset=offset)`` without drawing images."""
    return [_findings_and_report(seed, offset + i)[1] for i in range(size)]


class DemoDataset(Dataset[Pair]):
    """``size`` synthetic radiograph-report pairs; item i depends only on (seed, offset + i).

    Disjoint splits: ``DemoDataset(n_train)`` and ``DemoDataset(n_val, offset=n_train)``.
    Images are in radiological orientation (the patient's right on the image's left).
    """

    def __init__(self, size: int, image_size: int = 64, seed: int = 0, in_chans: int = 1,
                 offset: int = 0):
        if size < 0 or seed < 0 or offset < 0:
            raise ValueError(f"size, seed and offset must be >= 0, got {size}, {seed}, {offset}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.size, self.image_size, self.seed = size, image_size, seed
        self.in_chans, self.offset = in_chans, offset

    def __len__(self) -> int:
        return self.size

    def _global_index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} demo pairs")
        return self.offset + index % self.size

    def findings(self, index: int) -> Findings:
        """The ground-truth findings of item ``index`` (no image is drawn)."""
        return _findings_and_report(self.seed, self._global_index(index))[0]

    def __getitem__(self, index: int) -> Pair:
        sample_id = self._global_index(index)
        findings, text = _findings_and_report(self.seed, sample_id)
        image = render_chest(findings, _rng(self.seed, sample_id, _IMAGE_STREAM), self.image_size)
        tensor = torch.from_numpy(image).unsqueeze(0)
        if self.in_chans == 3:
            tensor = tensor.repeat(3, 1, 1)
        return Pair(image=tensor, text=text, sample_id=sample_id)
