"""Uniform encoder contracts, so objectives and the step never depend on one encoder family."""

from __future__ import annotations

import torch
from einops import rearrange
from tokenizers import Tokenizer
from torch import nn

from vlp.data.tokenize import SpecialTokens
from vlp.plugins.base import Params, Plugin


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) in row-major patch order, as ViT patch embedding sees them."""
    return rearrange(pixels, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


class ImageEncoder(nn.Module, Plugin):
    """Image tokens from pixels; with `ids_keep`, only those patches are encoded (MAE/FLIP)."""

    width: int
    patch_size: int
    grid_size: tuple[int, int]
    num_prefix_tokens: int
    pool: str = "token"  # how ImageFeatures.pooled summarises: "token" or "avg"

    def __init__(self, params: Params, image_size: int, in_chans: int):
        super().__init__()
        self.params = params

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def forward(self, pixels: torch.Tensor, ids_keep: torch.Tensor | None = None
                ) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, C, H, W) -> (B, num_prefix_tokens + K, width)."""
        raise NotImplementedError


class TextEncoder(nn.Module, Plugin):
    """Contextual token features from token ids and a padding mask."""

    width: int
    pool: str = "cls"  # how TextFeatures.pooled summarises: "cls" or "mean"

    def __init__(self, params: Params, vocab_size: int, pad_id: int, max_len: int):
        super().__init__()
        self.params = params

    @classmethod
    def pretrained_tokenizer(cls, params: Params) -> tuple[Tokenizer, SpecialTokens] | None:
        """The tokenizer this encoder was pretrained with, replacing the trained one; None if
        the encoder is trained from scratch on vlp's own tokenizer."""
        return None

    def pretrained_mlm_head(self) -> nn.Module | None:
        """The checkpoint's masked-language-model head (tokens -> vocabulary logits), if any."""
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, T) ids and bool mask -> (B, T, width); the first real token is the summary."""
        raise NotImplementedError


class Fusion(nn.Module, Plugin):
    """Fuses image tokens and text tokens of one pair of views into joint features."""

    width: int
    image_layers: int = 0  # how many per-layer image outputs FusedFeatures.image_layers holds

    def __init__(self, params: Params, image_width: int, text_width: int):
        super().__init__()
        self.params = params

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor):  # pragma: no cover - abstract
        """Returns a `vlp.core.features.FusedFeatures`."""
        raise NotImplementedError
