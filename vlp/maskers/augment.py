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
                    contrast=0.2, gamma=(0.8, 1.25), color_jitter=0.0, grayscale_prob=0.0,
                    saturation=0.0, jitter_prob=1.0, blur_prob=0.0, blur_sigma=(0.1, 2.0)),
    # SimSiam's: colour jitter (brightness, contrast, saturation 0.4) with p = 0.8, greyscale
    # p = 0.2, Gaussian blur sigma in [0.1, 2] with p = 0.5, flip p = 0.5 (no hue shift here)
    "natural": dict(crop_scale=(0.2, 1.0), max_rotation=0.0, hflip_prob=0.5, brightness=0.4,
                    contrast=0.4, gamma=(1.0, 1.0), color_jitter=0.4, grayscale_prob=0.2,
                    saturation=0.4, jitter_prob=0.8, blur_prob=0.5, blur_sigma=(0.1, 2.0)),
}


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (in pixels) per sample, (B,), reflect padding;
    the kernel spans about a tenth of the image (torchvision's SimSiam uses 23 px at 224)."""
    b, c, h, w = x.shape
    radius = max(1, min(h, w) // 20)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"),
                    kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"),
                    kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def augment_images(x: torch.Tensor, generator: torch.Generator, *, crop_scale: tuple[float, float],
                   max_rotation: float, hflip_prob: float, brightness: float, contrast: float,
                   gamma: tuple[float, float], color_jitter: float, grayscale_prob: float,
                   saturation: float = 0.0, jitter_prob: float = 1.0, blur_prob: float = 0.0,
                   blur_sigma: tuple[float, float] = (0.1, 2.0),
                   aspect: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop + rotation + flip in one affine resampling, then intensity changes:
    brightness, contrast, saturation and per-channel colour, together applied to a sample with
    probability `jitter_prob`; greyscale; Gaussian blur with probability `blur_prob`; gamma.

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

    jittered = x * u(1 - brightness, 1 + brightness)[:, None, None, None]
    mean = jittered.mean(dim=(1, 2, 3), keepdim=True)
    jittered = (jittered - mean) * u(1 - contrast, 1 + contrast)[:, None, None, None] + mean
    if saturation > 0 and c > 1:
        grey = jittered.mean(1, keepdim=True)
        jittered = grey + (jittered - grey) * u(1 - saturation, 1 + saturation)[:, None, None,
                                                                                None]
    if color_jitter > 0 and c > 1:
        jittered = jittered * u(1 - color_jitter, 1 + color_jitter, b, c)[:, :, None, None]
    x = torch.where((u(0, 1) < jitter_prob)[:, None, None, None], jittered, x)
    if grayscale_prob > 0 and c > 1:
        grey = (u(0, 1) < grayscale_prob)[:, None, None, None]
        x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    if blur_prob > 0:
        sigma = u(*blur_sigma)
        x = torch.where((u(0, 1) < blur_prob)[:, None, None, None], gaussian_blur(x, sigma), x)
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
        saturation: float | None = Field(None, ge=0, lt=1)
        """Saturation jitter: grey + (x - grey) * U(1 - s, 1 + s) (None: the policy's)."""
        jitter_prob: float | None = Field(None, ge=0, le=1)
        """Probability that a sample's colour jitter is applied at all (None: the policy's)."""
        blur_prob: float | None = Field(None, ge=0, le=1)
        """Probability of a Gaussian blur (None: the policy's)."""
        blur_sigma: tuple[Annotated[float, Field(gt=0)],
                          Annotated[float, Field(gt=0)]] | None = None
        """Range of the blur's sigma in pixels (None: the policy's)."""

    def settings(self) -> dict[str, object]:
        """The policy's values with the recipe's explicit overrides applied."""
        chosen = {k: v for k, v in self.params.model_dump().items()
                  if k != "policy" and v is not None}
        return {**POLICIES[self.params.policy], **chosen}

    def __call__(self, step: Step, generator: torch.Generator) -> ViewOutput:
        return ViewOutput(image=ImageView(augment_images(step.batch.image, generator,
                                                         **self.settings())))
