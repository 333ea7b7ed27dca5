"""Any timm Vision Transformer by arch name, able to encode only the visible patches.

Pixels arrive in [0, 1]; the encoder normalises them itself with the mean/std of the timm
pretrained config when weights are loaded (or the recipe's own), so maskers and pixel targets
keep working on plain [0, 1] images. Local weights go through timm's own loader, which adapts
the patch embedding to 1-channel input and resamples position embeddings to another size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import timm
import torch
from pydantic import Field, field_validator, model_validator
from timm.models.vision_transformer import VisionTransformer

from vlp.core.errors import ParamError, one_line
from vlp.encoders.base import ImageEncoder
from vlp.plugins.base import Params

ARCH_OVERRIDES = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def channel_values(values: tuple[float, ...], in_chans: int) -> torch.Tensor:
    """(C, 1, 1) per-channel values: 3 averaged for 1-channel input, 1 repeated for 3 channels.

    Averaging fits timm's 1-channel adaptation, which sums the RGB filters of the patch
    embedding: with equal channel statistics the grey image is seen exactly as the RGB one."""
    if len(values) == 3 and in_chans == 1:
        values = (sum(values) / 3,)
    if len(values) == 1:
        values = values * in_chans
    if len(values) != in_chans:
        raise ValueError(f"{len(values)} normalisation values for {in_chans} channels")
    return torch.tensor(values, dtype=torch.float32).view(in_chans, 1, 1)


class TimmViT(ImageEncoder):
    """timm Vision Transformer (any ViT arch); no download: random init or a local weights file."""

    class Params(Params):
        arch: str = "vit_base_patch16_224"
        """timm model name of a Vision Transformer (timm.list_models('vit_*'))."""
        patch_size: int | None = Field(None, gt=0)  # overrides of the arch's defaults
        """Patch size (default: the arch's)."""
        embed_dim: int | None = Field(None, gt=0)
        """Token width (default: the arch's)."""
        depth: int | None = Field(None, gt=0)
        """Transformer blocks (default: the arch's)."""
        num_heads: int | None = Field(None, gt=0)
        """Attention heads (default: the arch's)."""
        mlp_ratio: float | None = Field(None, gt=0)
        """MLP hidden width as a multiple of embed_dim (default: the arch's)."""
        drop_path_rate: float = Field(0.0, ge=0, lt=1)
        """Stochastic depth rate."""
        pool: Literal["token", "avg"] = "token"  # summary: [CLS] token or mean of patch tokens
        """Summary of an image: the [CLS] token or the mean of its patch tokens."""
        pretrained: bool = False
        """Start from pretrained weights (needs weights: a local file)."""
        weights: str | None = None  # local file (safetensors or .pth) loaded with timm's adapter
        """Local weights file (safetensors or .pth), adapted by timm; nothing is downloaded."""
        mean: tuple[float, ...] | None = None
        """Per-channel input mean (1 or 3 values; 3 are averaged for 1-channel input). Default:
        the timm pretrained config's when weights are loaded, else no normalisation."""
        std: tuple[Annotated[float, Field(gt=0)], ...] | None = None
        """Per-channel input std, set together with mean."""

        @field_validator("arch")
        @classmethod
        def _known_arch(cls, arch: str) -> str:
            if not timm.is_model(arch):
                raise ValueError(f"timm has no model '{arch}' (see timm.list_models('vit_*'))")
            return arch

        @model_validator(mode="after")
        def _mean_and_std(self):
            if (self.mean is None) != (self.std is None):
                raise ValueError("set both mean and std, or neither")
            for name in ("mean", "std"):
                value = getattr(self, name)
                if value is not None and len(value) not in (1, 3):
                    raise ValueError(f"{name} needs 1 or 3 values, got {len(value)}")
            return self

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
                     if k in ARCH_OVERRIDES and v is not None}
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
        mean, std = params.mean, params.std
        if mean is None and params.weights:
            mean, std = vit.pretrained_cfg.get("mean"), vit.pretrained_cfg.get("std")
        self.normalised = mean is not None
        for name, values in (("pixel_mean", mean or (0.0,)), ("pixel_std", std or (1.0,))):
            self.register_buffer(name, channel_values(values, in_chans), persistent=False)

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}

    def forward(self, pixels: torch.Tensor, ids_keep: torch.Tensor | None = None
                ) -> torch.Tensor:
        vit = self.vit
        if self.normalised:
            pixels = (pixels - self.pixel_mean) / self.pixel_std
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
