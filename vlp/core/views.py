"""Views: what a masker derives from a batch, once per step, for every objective to share."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageView:
    """Pixels plus, for masked views, which patches are kept (encoded) and which are masked."""

    pixels: torch.Tensor  # (B, C, H, W)
    ids_keep: torch.Tensor | None = None  # (B, K) long: patch indices the encoder sees
    mask: torch.Tensor | None = None  # (B, N) bool: True where a patch is hidden from the encoder


@dataclass
class TextView:
    """Token ids plus, for masked views, labels (-100 where not predicted) and their positions."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) bool
    labels: torch.Tensor | None = None  # (B, T) original ids at masked tokens, -100 elsewhere
    positions: torch.Tensor | None = None  # (B, M) long: masked token positions, padded
    position_labels: torch.Tensor | None = None  # (B, M) labels at `positions`, -100 on padding


@dataclass
class ViewOutput:
    """A masker's product: an image part, a text part, or both (paired masking)."""

    image: ImageView | None = None
    text: TextView | None = None
