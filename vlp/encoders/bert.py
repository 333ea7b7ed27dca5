"""A BERT-style text encoder (pre-norm transformer on PyTorch SDPA), sized by the recipe."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from vlp.encoders.base import TextEncoder
from vlp.encoders.layers import Block
from vlp.plugins.base import Params


class BertEncoder(TextEncoder):
    """BERT-style bidirectional transformer text encoder with learned positions."""

    class Params(Params):
        layers: int = Field(12, gt=0)
        """Transformer layers."""
        width: int = Field(768, gt=0)
        """Hidden width."""
        heads: int = Field(12, gt=0)
        """Attention heads (must divide width)."""
        mlp_ratio: float = Field(4.0, gt=0)
        """MLP hidden width as a multiple of width."""
        dropout: float = Field(0.0, ge=0, lt=1)
        """Dropout in attention and MLP."""
        pool: Literal["cls", "mean"] = "cls"  # summary: [CLS] token or mean of real tokens
        """Summary of a report: the [CLS] token or the mean of its real tokens."""

        @model_validator(mode="after")
        def _heads_divide_width(self):
            if self.width % self.heads:
                raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
            return self

    def __init__(self, params: Params, vocab_size: int, pad_id: int, max_len: int):
        super().__init__(params, vocab_size, pad_id, max_len)
        self.width = params.width
        self.pool = params.pool
        self.token_embed = nn.Embedding(vocab_size, params.width, padding_idx=pad_id)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, params.width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.embed_norm = nn.LayerNorm(params.width)
        self.drop = nn.Dropout(params.dropout)
        self.blocks = nn.ModuleList(Block(params.width, params.heads, params.mlp_ratio,
                                          params.dropout) for _ in range(params.layers))
        self.norm = nn.LayerNorm(params.width)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.token_embed(input_ids) + self.pos_embed[:, :t]
        x = self.drop(self.embed_norm(x))
        for block in self.blocks:
            x = block(x, mask=attention_mask)
        return self.norm(x)
