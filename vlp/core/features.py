"""Encoder outputs as the step hands them to objectives."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vlp.core.ops import masked_mean
from vlp.core.views import ImageView, TextView


@dataclass
class ImageFeatures:
    """Image encoder output for one view: prefix tokens ([CLS], registers) then kept patches."""

    tokens: torch.Tensor  # (B, P + K, D)
    num_prefix: int
    view: ImageView
    pool: str = "token"  # "token": the first prefix token; "avg": mean of the patch tokens

    @property
    def patches(self) -> torch.Tensor:
        return self.tokens[:, self.num_prefix:]

    @property
    def pooled(self) -> torch.Tensor:
        if self.pool == "token" and self.num_prefix:
            return self.tokens[:, 0]
        return self.patches.mean(1)


@dataclass
class TextFeatures:
    """Text encoder output for one view; position 0 is [CLS]."""

    tokens: torch.Tensor  # (B, T, D)
    view: TextView
    pool: str = "cls"  # "cls": the [CLS] token; "mean": mean over real tokens

    @property
    def mask(self) -> torch.Tensor:
        return self.view.attention_mask

    @property
    def pooled(self) -> torch.Tensor:
        if self.pool == "cls":  # the first real token: position 0 unless padded on the left
            first = self.mask.int().argmax(1)
            return self.tokens[torch.arange(self.tokens.shape[0], device=first.device), first]
        return masked_mean(self.tokens, self.mask.unsqueeze(-1), dim=1)


@dataclass
class FusedFeatures:
    """A fusion module's output for one (image view, text view) pair."""

    text: torch.Tensor  # (B, T, W): image-conditioned report tokens; [CLS] at 0
    image: torch.Tensor  # (B, L, W): the image stream as the fusion saw it (prefix + patches)
    text_mask: torch.Tensor  # (B, T) bool
    image_layers: list[torch.Tensor] = field(default_factory=list)  # image stream per layer
