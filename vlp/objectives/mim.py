"""Masked image modelling with an MAE-style light decoder.

The decoder re-inserts a mask token at every hidden patch, adds its own position embeddings and
predicts the pixels of each patch; the loss is the MSE on hidden patches only, against per-patch
normalised pixels by default. It reads the image tokens of the encoder or of the fusion module
(its last or a chosen layer), e.g. memory-augmented, report-aware image features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import nn

from vlp.core.errors import ParamError
from vlp.encoders.base import patchify
from vlp.encoders.layers import Block
from vlp.objectives.base import Needs, Objective, ObjectiveOutput
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


def mim_loss(pred: torch.Tensor, target_patches: torch.Tensor, mask: torch.Tensor,
             norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Mean squared error over masked patches only.

    pred, target_patches: (B, N, p*p*C); mask: (B, N) bool, True where the patch was hidden.
    With norm_pix each target patch is standardised by its own mean and variance (MAE).
    """
    target = target_patches.float()
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True, unbiased=True)
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(-1)
    weights = mask.float()
    return (per_patch * weights).sum() / weights.sum().clamp(min=1)


def unshuffle(kept: torch.Tensor, ids_keep: torch.Tensor, num_patches: int,
              mask_token: torch.Tensor) -> torch.Tensor:
    """(B, K, D) tokens of kept patches -> (B, N, D) in patch order, mask_token elsewhere."""
    b, _, d = kept.shape
    full = mask_token.to(kept.dtype).expand(b, num_patches, d)
    return full.scatter(1, ids_keep[..., None].expand(-1, -1, d), kept)


class MIM(Objective):
    """Masked image modelling: MAE-style light decoder, normalised-pixel MSE on masked patches."""

    class Params(Params):
        image_view: str  # a masked image view (random_patches, block_patches or paired)
        """Masked image view to reconstruct (random_patches, block_patches or paired)."""
        source: Literal["encoder", "fusion"] = "encoder"
        """Reconstruct from the image encoder's tokens or the fusion's image stream."""
        text_view: str = "text"  # the report the fusion reads, when source is fusion
        """Report the fusion reads, when source is fusion."""
        fusion_layer: int = -1  # which fusion layer's image stream (-1: the fusion's output;
        """Fusion layer whose image stream is decoded (-1: the fusion's output)."""
        # report-aware only with a bidirectional fusion, which updates the image per layer)
        decoder_width: int = Field(128, gt=0)
        """Width of the light reconstruction decoder."""
        decoder_depth: int = Field(2, gt=0)
        """Transformer layers of the decoder."""
        decoder_heads: int = Field(4, gt=0)
        """Attention heads of the decoder."""
        norm_pix: bool = True
        """Reconstruct per-patch normalised pixels (MAE's norm_pix_loss)."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        width = ctx.image_width if params.source == "encoder" else ctx.fusion_width
        if width is None:
            raise ValueError("MIM from fusion features needs a fusion module")
        layers = ctx.fusion_image_layers
        if params.source == "fusion" and params.fusion_layer != -1 and not (
                -layers <= params.fusion_layer < layers):
            raise ParamError("fusion_layer", f"fusion_layer {params.fusion_layer}: the fusion "
                             f"exposes {layers} image layers (only a bidirectional fusion "
                             "updates the image stream per layer)")
        w = params.decoder_width
        self.num_patches, self.patch_size = ctx.num_patches, ctx.patch_size
        self.embed = nn.Linear(width, w)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.zeros(1, ctx.num_prefix_tokens + ctx.num_patches, w))
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(w, params.decoder_heads) for _ in
                                    range(params.decoder_depth))
        self.norm = nn.LayerNorm(w)
        self.pred = nn.Linear(w, ctx.patch_size ** 2 * ctx.channels)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "pos_embed"}

    @classmethod
    def needs(cls, params: Params) -> Needs:
        fused = params.source == "fusion"
        return Needs(image_views={"image_view": params.image_view},
                     text_views={"text_view": params.text_view} if fused else {}, fusion=fused,
                     masked=frozenset({"image_view"}), embeddings="none")

    def image_tokens(self, step: Step) -> tuple[torch.Tensor, int]:
        """(prefix + kept patch tokens, number of prefix tokens) from the chosen source."""
        p = self.params
        features = step.image(p.image_view)
        if p.source == "encoder":
            return features.tokens, features.num_prefix
        fused = step.fused(p.image_view, p.text_view)
        if p.fusion_layer == -1:
            return fused.image, features.num_prefix
        if not -len(fused.image_layers) <= p.fusion_layer < len(fused.image_layers):
            raise ValueError(f"fusion_layer {p.fusion_layer}: the fusion exposes "
                             f"{len(fused.image_layers)} image layers (only a bidirectional "
                             "fusion updates the image stream per layer)")
        return fused.image_layers[p.fusion_layer], features.num_prefix

    def forward(self, step: Step) -> ObjectiveOutput:
        view = step.image_view(self.params.image_view)
        if view.ids_keep is None or view.mask is None:
            raise ValueError(f"MIM needs a masked image view; '{self.params.image_view}' is not")
        tokens, prefix = self.image_tokens(step)
        x = self.embed(tokens)
        patches = unshuffle(x[:, prefix:], view.ids_keep, self.num_patches, self.mask_token)
        x = torch.cat([x[:, :prefix], patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        pred = self.pred(self.norm(x)[:, prefix:])
        target = patchify(view.pixels, self.patch_size)
        return ObjectiveOutput(mim_loss(pred, target, view.mask, self.params.norm_pix))
