"""Image augmentation views made on the device: 'medical' (radiograph-safe) or 'natural' policy.

Medical: no colour jitter or greyscale conversion (radiographs are grey), mild crops (lesions are
small), small rotations, brightness/contrast/gamma, and no horizontal flip by default because
reports speak of left and right. Natural: SimSiam's ImageNet-style strong augmentation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlp.core.views import ImageView, ViewOutput
from vlp.maskers.base import Masker
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.step import Step

POLICIES: dict[str, dict[str, object]] = {
    "medical": dict(crop_scale=(0.7, 1.0), max_rotation=10.0, hflip_prob=0.0, brightness=0.2,
                    contrast=0.2, gamma=(0.8, 1.25), color_jitter=0.0, grayscale_prob=0.0),
    "natural": dict(crop_scale=(0.2, 1.0), max_rotation=0.0, hflip_prob=0.5, brightness=0.4,
                    contrast=0.4, gamma=(1.0, 1.0), color_jitter=0.4, grayscale_prob=0.2),
}


def augment_images(x: torch.Tensor, generator: torch.Generator, *, crop_scale: tuple[float, float],
                   max_rotation: float, hflip_prob: float, brightness: float, contrast: float,
                   gamma: tuple[float, float], color_jitter: float, grayscale_prob: float,
                   aspect: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop + rotation + flip in one affine resampling, then intensity changes.

    x: (B, C, H, W) in [0, 1]; every random value comes from `generator`, per sample, vectorised.
    """
    b, c = x.shape[:2]
    dev = x.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape or (b,), generator=generator, device=dev)

    area = u(*crop_scale)
    # aspect ratio limited to [area, 1/area] so both sides fit and the area is exactly `area`
    log_ratio = u(math.log(aspect[0]), math.log(aspect[1]))
    ratio = torch.minimum(torch.maximum(log_ratio, area.log()), -area.log()).exp()
    sx, sy = (area * ratio).sqrt(), (area / ratio).sqrt()
    tx, ty = u(-1, 1) * (1 - sx), u(-1, 1) * (1 - sy)
    angle = u(-max_rotation, max_rotation) * math.pi / 180
    flip = torch.where(u(0, 1) < hflip_prob, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([sx * cos * flip, -sy * sin, tx], -1),
                         torch.stack([sx * sin * flip, sy * cos, ty], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    x = x * u(1 - brightness, 1 + brightness)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(1 - contrast, 1 + contrast)[:, None, None, None] + mean
    if color_jitter > 0 and c > 1:
        x = x * u(1 - color_jitter, 1 + color_jitter, b, c)[:, :, None, None]
    if grayscale_prob > 0 and c > 1:
        grey = (u(0, 1) < grayscale_prob)[:, None, None, None]
        x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    x = x.clamp(0, 1)
    g = torch.exp(u(math.log(gamma[0]), math.log(gamma[1])))[:, None, None, None]
    return x.clamp_min(1e-6).pow(g)


class Augment(Masker):
    """Augmented image view: 'medical' (radiograph-safe) or 'natural' policy, overridable."""

    produces = frozenset({"image"})

    class Params(Params):
        policy: Literal["medical", "natural"] = "medical"
        """Default augmentations: 'medical' (mild, no colour) or 'natural' (SimSiam's)."""
        crop_scale: tuple[Annotated[float, Field(gt=0, le=1)],
                          Annotated[float, Field(gt=0, le=1)]] | None = None  # None: policy's
        """Range of the random crop's area fraction (None: the policy's)."""
        max_rotation: float | None = Field(None, ge=0, le=180)
        """Largest rotation in degrees (None: the policy's)."""
        hflip_prob: float | None = Field(None, ge=0, le=1)
        """Probability of a horizontal flip (None: the policy's)."""
        brightness: float | None = Field(None, ge=0, lt=1)
        """Brightness jitter strength (None: the policy's)."""
        contrast: float | None = Field(None, ge=0, lt=1)
        """Contrast jitter strength (None: the policy's)."""
        gamma: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
        """Range of the random gamma correction (None: the policy's)."""
        color_jitter: float | None = Field(None, ge=0, lt=1)
        """Colour jitter strength: a random per-channel scale (None: the policy's)."""
        grayscale_prob: float | None = Field(None, ge=0, le=1)
        """Probability of converting to greyscale (None: the policy's)."""

    def settings(self) -> dict[str, object]:
        """The policy's values with the recipe's explicit overrides applied."""
        chosen = {k: v for k, v in self.params.model_dump().items()
                  if k != "policy" and v is not None}
        return {**POLICIES[self.params.policy], **chosen}

    def __call__(self, step: Step, generator: torch.Generator) -> ViewOutput:
        return ViewOutput(image=ImageView(augment_images(step.batch.image, generator,
                                                         **self.settings())))
