"""Memory-augmented cross-modal fusion: image tokens read a learnable memory with top-k sparse
attention, the response is added to them, and the report attends to the augmented image."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from pydantic import Field, model_validator
from torch import nn

from vlp.core.features import FusedFeatures
from vlp.encoders.fusion import CrossAttentionFusion


def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int) -> torch.Tensor:
    """Attention of queries (B, H, L, d) over shared memory keys/values (H, S, d) where each
    query keeps only its `topk` highest-scoring slots; with topk = S it is dense attention."""
    scores = torch.einsum("bhld,hsd->bhls", q, k) / math.sqrt(q.shape[-1])
    if topk < scores.shape[-1]:
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter(
            -1, scores.topk(topk, dim=-1).indices, True)
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhls,hsd->bhld", scores.softmax(-1), v)


class MemoryFusion(CrossAttentionFusion):
    """Cross-attention fusion whose image tokens are first augmented from a learnable memory."""

    class Params(CrossAttentionFusion.Params):
        slots: int = Field(2048, gt=0)
        """Slots of the learnable memory."""
        topk: int = Field(32, gt=0)
        """Memory slots each image token reads (top-k sparse attention)."""
        memory_heads: int = Field(1, gt=0)
        """Attention heads of the memory read."""

        @model_validator(mode="after")
        def _topk_within_slots(self):
            if self.topk > self.slots:
                raise ValueError(f"topk {self.topk} exceeds slots {self.slots}")
            return self

    def __init__(self, params: Params, image_width: int, text_width: int):
        super().__init__(params, image_width, text_width)
        w = self.width
        if w % params.memory_heads:
            raise ValueError(f"fusion width {w} must be divisible by memory_heads")
        self.memory = nn.Parameter(torch.randn(params.slots, w) * 0.02)
        self.memory_norm = nn.LayerNorm(w)
        self.query = nn.Linear(w, w)
        self.key = nn.Linear(w, w)
        self.value = nn.Linear(w, w)
        self.response = nn.Linear(w, w)

    def read_memory(self, image: torch.Tensor) -> torch.Tensor:
        """Memory response for each image token, (B, L, width)."""
        h = self.params.memory_heads
        q = rearrange(self.query(self.memory_norm(image)), "b l (h d) -> b h l d", h=h)
        k = rearrange(self.key(self.memory), "s (h d) -> h s d", h=h)
        v = rearrange(self.value(self.memory), "s (h d) -> h s d", h=h)
        out = topk_attention(q, k, v, self.params.topk)
        return self.response(rearrange(out, "b h l d -> b l (h d)"))

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor) -> FusedFeatures:
        img = self.image_in(image_tokens)
        augmented = img + self.read_memory(img)
        return self.fuse(augmented, self.text_in(text_tokens), text_mask)
