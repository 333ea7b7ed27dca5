"""What a demo study shows: the findings, and how they are drawn at random."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
NORMAL_FRACTION = 0.18


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



def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def _sample_device(rng: np.random.Generator) -> Device:
    return Device("catheter", pick(rng, SIDES)) if rng.random() < 0.7 else Device("tube")


def _abnormal_draw(rng: np.random.Generator) -> Findings:
    """Each finding independently; the result may still be normal (the caller redraws)."""
    u = rng.random(6)
    opacity = Opacity(pick(rng, SIDES), pick(rng, ZONES), pick(rng, ("small", "large")))
    effusion = Effusion(pick(rng, ("right", "left", "bilateral")),
                        pick(rng, ("small", "moderate")))
    nodule = Nodule(pick(rng, SIDES), pick(rng, ZONES), int(rng.integers(6, 15)))
    return Findings(
        opacity=opacity if u[0] < 0.4 else None,
        heart="mild" if u[1] < 0.14 else "marked" if u[1] < 0.26 else "normal",
        effusion=effusion if u[2] < 0.3 else None,
        pneumothorax=pick(rng, SIDES) if u[3] < 0.15 else None,
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
