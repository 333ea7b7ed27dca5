"""The image encoder and its projection as a timm checkpoint folder.

`timm.create_model("local-dir:OUT", pretrained=True)` builds the same ViT whose head is vlp's
image projection (so its output, L2-normalised, is vlp's image embedding); `reset_classifier(0)`
gives the pooled features. The preprocessing config says: pixels in [0, 1], no normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

from vlp.core.model import VLPModel
from vlp.encoders.timm_vit import ARCH_OVERRIDES, TimmViT
from vlp.export.errors import ExportError


def timm_image_tower(model: VLPModel) -> tuple[VisionTransformer, dict[str, Any]]:
    """A plain timm ViT equal to vlp's image encoder + projection, and its model_args."""
    encoder = model.image_encoder
    if not isinstance(encoder, TimmViT):
        raise ExportError(f"the image encoder is {type(encoder).__name__}; the timm and open_clip "
                          "exports support 'timm_vit'")
    params, vit = encoder.params, encoder.vit
    args: dict[str, Any] = {k: v for k, v in params.model_dump().items()
                            if k in ARCH_OVERRIDES and v is not None}
    args.update(img_size=vit.patch_embed.img_size[0], in_chans=vit.patch_embed.proj.in_channels,
                num_classes=model.image_proj.out_features, global_pool=encoder.pool,
                fc_norm=False)  # vlp averages the final-normed tokens: norm before pooling
    tower = timm.create_model(params.arch, **args)
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("head")}
    state["head.weight"] = model.image_proj.weight.detach().clone()
    state["head.bias"] = torch.zeros(model.image_proj.out_features)
    tower.load_state_dict(state)
    return tower.eval(), args


def export_timm(model: VLPModel, out: Path) -> Path:
    tower, args = timm_image_tower(model)
    channels, size = args["in_chans"], args["img_size"]
    save_for_hf(tower, str(out), model_args=args, safe_serialization=True, data_config={
        "input_size": (channels, size, size), "mean": (0.0,) * channels,
        "std": (1.0,) * channels, "crop_pct": 1.0, "interpolation": "bilinear"})
    return out
