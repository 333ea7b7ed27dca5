"""Small tensor helpers shared by features and objectives."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of `x` over `dim` where `mask` (broadcastable to x) is True; 0 where none is."""
    weights = mask.to(x.dtype)
    return (x * weights).sum(dim) / weights.sum(dim).clamp(min=1)


def fp32(tensor: torch.Tensor) -> torch.autocast:
    """A context with autocast off on `tensor`'s device, for similarity logits: in bf16 a
    cosine near 1 keeps only 2-3 significant digits, which a temperature of 0.01 amplifies.
    Inputs must be cast with `.float()`; inside, matmuls and einsums then run in fp32."""
    return torch.autocast(tensor.device.type, enabled=False)
