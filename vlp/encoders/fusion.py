"""Cross-attention fusion: report tokens attend to image tokens (ALBEF/BLIP style).

With `bidirectional: true` the image stream also attends to the report in every layer
(co-attention, as in M3AE), so intermediate fusion layers carry text-aware image features.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from vlp.core.features import FusedFeatures
from vlp.encoders.base import Fusion
from vlp.encoders.layers import Block
from vlp.plugins.base import Params


class CrossAttentionFusion(Fusion):
    """Transformer whose report tokens cross-attend to image tokens; optional co-attention."""

    class Params(Params):
        layers: int = Field(2, gt=0)
        """Fusion layers."""
        width: int | None = Field(None, gt=0)  # default: the text encoder's width
        """Fusion width (default: the text encoder's width)."""
        heads: int = Field(4, gt=0)
        """Attention heads (must divide width)."""
        mlp_ratio: float = Field(4.0, gt=0)
        """MLP hidden width as a multiple of width."""
        dropout: float = Field(0.0, ge=0, lt=1)
        """Dropout in attention and MLP."""
        bidirectional: bool = False
        """The image stream also attends to the report in every layer (co-attention)."""

        @model_validator(mode="after")
        def _heads_divide_width(self):
            if self.width is not None and self.width % self.heads:
                raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
            return self

    def __init__(self, params: Params, image_width: int, text_width: int):
        super().__init__(params, image_width, text_width)
        w = self.width = params.width or text_width
        if w % params.heads:
            raise ValueError(f"fusion width {w} must be divisible by heads {params.heads}")
        self.text_in = nn.Identity() if text_width == w else nn.Linear(text_width, w)
        self.image_in = nn.Identity() if image_width == w else nn.Linear(image_width, w)
        self.text_blocks = nn.ModuleList(
            Block(w, params.heads, params.mlp_ratio, params.dropout, cross_width=w)
            for _ in range(params.layers))
        self.image_blocks = nn.ModuleList(
            Block(w, params.heads, params.mlp_ratio, params.dropout, cross_width=w)
            for _ in range(params.layers if params.bidirectional else 0))
        self.image_layers = len(self.image_blocks)
        self.text_norm = nn.LayerNorm(w)
        self.image_norm = nn.LayerNorm(w) if params.bidirectional else nn.Identity()

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor) -> FusedFeatures:
        return self.fuse(self.image_in(image_tokens), self.text_in(text_tokens), text_mask)

    def fuse(self, img: torch.Tensor, txt: torch.Tensor, text_mask: torch.Tensor
             ) -> FusedFeatures:
        """The layers, on image and text tokens already at the fusion width."""
        layers = []
        for i, block in enumerate(self.text_blocks):
            new_txt = block(txt, mask=text_mask, context=img)
            if self.image_blocks:
                img = self.image_blocks[i](img, context=txt, context_mask=text_mask)
                layers.append(img)
            txt = new_txt
        return FusedFeatures(self.text_norm(txt), self.image_norm(img), text_mask, layers)
