"""What plugins may know about the model they are built into: sizes, token ids, patch layout."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vlp.data.tokenize import TokenIds


@dataclass(frozen=True)
class BuildContext:
    image_width: int
    text_width: int
    fusion_width: int | None
    fusion_image_layers: int  # per-layer image outputs the fusion exposes (FusedFeatures)
    embed_dim: int
    patch_size: int
    grid_size: tuple[int, int]
    num_prefix_tokens: int
    channels: int
    image_size: int
    max_text_len: int
    tokens: TokenIds
    text_mlm_head: nn.Module | None = None  # the pretrained text encoder's MLM head, if any

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]
