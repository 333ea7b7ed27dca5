"""Any timm Vision Transformer by arch name, able to encode only the visible patches."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import timm
import torch
from pydantic import Field, field_validator, model_validator
from timm.models.vision_transformer import VisionTransformer

from vlp.core.errors import ParamError, one_line
from vlp.encoders.base import ImageEncoder
from vlp.plugins.base import Params


class TimmViT(ImageEncoder):
    """timm Vision Transformer (any ViT arch); no download: random init or a local weights file."""

    class Params(Params):
        arch: str = "vit_base_patch16_224"
        patch_size: int | None = Field(None, gt=0)  # overrides of the arch's defaults
        embed_dim: int | None = Field(None, gt=0)
        depth: int | None = Field(None, gt=0)
        num_heads: int | None = Field(None, gt=0)
        mlp_ratio: float | None = Field(None, gt=0)
        drop_path_rate: float = Field(0.0, ge=0, lt=1)
        pool: Literal["token", "avg"] = "token"  # summary: [CLS] token or mean of patch tokens
        pretrained: bool = False
        weights: str | None = None  # local file (safetensors or .pth) loaded with timm's adapter

        @field_validator("arch")
        @classmethod
        def _known_arch(cls, arch: str) -> str:
            if not timm.is_model(arch):
                raise ValueError(f"timm has no model '{arch}' (see timm.list_models('vit_*'))")
            return arch

        @model_validator(mode="after")
        def _weights_are_local(self):
            if self.pretrained and not self.weights:
                raise ValueError("pretrained: true needs 'weights:' pointing at a local file "
                                 "(nothing is downloaded)")
            if self.weights and not Path(self.weights).is_file():
                raise ValueError(f"weights file not found: {self.weights}")
            return self

    def __init__(self, params: Params, image_size: int, in_chans: int):
        super().__init__(params, image_size, in_chans)
        overrides = {k: v for k, v in params.model_dump().items()
                     if k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
                     and v is not None}
        kwargs = dict(img_size=image_size, in_chans=in_chans, num_classes=0,
                      drop_path_rate=params.drop_path_rate, **overrides)
        if params.weights:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": params.weights})
        try:
            vit = timm.create_model(params.arch, **kwargs)
        except TypeError as exc:  # other families do not take a ViT's arguments (img_size)
            raise ParamError("arch", f"{params.arch} is not a timm Vision Transformer "
                             f"({one_line(exc)})") from None
        except RuntimeError as exc:
            if not params.weights:
                raise
            raise ParamError("weights", f"{params.weights} does not fit this model: "
                             f"{one_line(exc)}") from None
        if not isinstance(vit, VisionTransformer):
            raise ParamError("arch", f"{params.arch} is a {type(vit).__name__}, not a timm "
                             "VisionTransformer")
        self.vit = vit
        self.width = vit.embed_dim
        self.patch_size = vit.patch_embed.patch_size[0]
        if image_size % self.patch_size:  # timm would silently drop the border pixels
            raise ParamError("data.image_size", f"{image_size} is not a multiple of the image "
                             f"encoder's patch size {self.patch_size}", absolute=True)
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.pool = params.pool

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}

    def forward(self, pixels: torch.Tensor, ids_keep: torch.Tensor | None = None
                ) -> torch.Tensor:
        vit = self.vit
        if ids_keep is None:
            return vit.forward_features(pixels)
        # timm has no token-mask input: embed, add positions, keep the visible patches, then
        # run the blocks. `_pos_embed` is private; tests pin that this path equals
        # forward_features when every patch is kept.
        x = vit._pos_embed(vit.patch_embed(pixels))
        p = self.num_prefix_tokens
        index = ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        x = torch.cat([x[:, :p], x[:, p:].gather(1, index)], dim=1)
        x = vit.norm_pre(vit.patch_drop(x))
        return vit.norm(vit.blocks(x))
