"""Both towers as an open_clip checkpoint folder: `open_clip.create_model("local-dir:OUT")`.

The image tower is open_clip's own VisionTransformer holding the timm ViT's weights (no
LayerNorm before the blocks, timm's eps, the patch bias folded into the position embedding;
1-channel weights spread over RGB, which open_clip feeds a grey image as). The text tower is
open_clip's Hugging Face adapter over the RoBERTa-PreLayerNorm model of vlp.export.hf_format.
open_clip 3.3 adapts only the Hugging Face types listed in `open_clip.hf_configs.arch_dict`, and
lists no pre-norm one, so loading needs one registration line first (see `register`), written
to OUT/README.md as well.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

from vlp.core.model import VLPModel
from vlp.data.tokenize import TokenIds
from vlp.export.errors import ExportError
from vlp.export.hf_format import hf_text_model, hf_tokenizer
from vlp.export.timm_format import timm_image_tower
from vlp.objectives.temperature import LearnableTemperature

HF_TYPE = "roberta-prelayernorm"
REGISTER = ("from open_clip.hf_configs import arch_dict; "
            f"arch_dict.setdefault({HF_TYPE!r}, arch_dict['roberta'])")
POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}


def register() -> None:
    """Teach open_clip's Hugging Face adapter the pre-norm text type (what REGISTER says)."""
    from open_clip.hf_configs import arch_dict

    arch_dict.setdefault(HF_TYPE, arch_dict["roberta"])


def _vision(model: VLPModel) -> tuple[dict, dict[str, torch.Tensor]]:
    """open_clip vision_cfg and the `visual.*` weights of vlp's timm ViT and projection."""
    vit, args = timm_image_tower(model)
    plain = (vit.cls_token is not None and vit.num_prefix_tokens == 1 and not vit.no_embed_class
             and isinstance(vit.norm_pre, nn.Identity)
             and all(isinstance(b.ls1, nn.Identity) and isinstance(b.attn.q_norm, nn.Identity)
                     for b in vit.blocks))
    if not plain:
        raise ExportError("the open_clip export supports plain ViTs (one [CLS] token, no "
                          "registers, layer scale or q/k norm)")
    blocks, width = vit.blocks, vit.embed_dim
    cfg = {"image_size": args["img_size"], "patch_size": vit.patch_embed.patch_size[0],
           "width": width, "layers": len(blocks), "head_width": width // blocks[0].attn.num_heads,
           "mlp_ratio": blocks[0].mlp.fc1.out_features / width, "no_ln_pre": True,
           "pool_type": "avg" if args["global_pool"] == "avg" else "tok",
           "final_ln_after_pool": False, "norm_kwargs": {"eps": vit.norm.eps}}
    conv = vit.patch_embed.proj
    weight = conv.weight.detach()
    if weight.shape[1] == 1:  # grey: open_clip feeds three equal channels
        weight = weight.repeat(1, 3, 1, 1) / 3
    positions = vit.pos_embed[0].detach().clone()
    positions[1:] += conv.bias.detach()  # the patch bias, on the patch positions only
    state = {"conv1.weight": weight, "class_embedding": vit.cls_token[0, 0].detach(),
             "positional_embedding": positions, "ln_post.weight": vit.norm.weight,
             "ln_post.bias": vit.norm.bias, "proj": model.image_proj.weight.detach().T}
    for i, block in enumerate(blocks):
        prefix = f"transformer.resblocks.{i}."
        state.update({
            prefix + "ln_1.weight": block.norm1.weight, prefix + "ln_1.bias": block.norm1.bias,
            prefix + "attn.in_proj_weight": block.attn.qkv.weight,
            prefix + "attn.in_proj_bias": block.attn.qkv.bias,
            prefix + "attn.out_proj.weight": block.attn.proj.weight,
            prefix + "attn.out_proj.bias": block.attn.proj.bias,
            prefix + "ln_2.weight": block.norm2.weight, prefix + "ln_2.bias": block.norm2.bias,
            prefix + "mlp.c_fc.weight": block.mlp.fc1.weight,
            prefix + "mlp.c_fc.bias": block.mlp.fc1.bias,
            prefix + "mlp.c_proj.weight": block.mlp.fc2.weight,
            prefix + "mlp.c_proj.bias": block.mlp.fc2.bias})
    return cfg, {f"visual.{k}": v.detach().contiguous() for k, v in state.items()}


def _logit_scale(model: VLPModel) -> torch.Tensor:
    """The first contrastive objective's learnt scale, else CLIP's initial log(1/0.07)."""
    for objective in model.objectives.values():
        for module in objective.modules():
            if isinstance(module, LearnableTemperature):
                return module.log_scale.detach().reshape(())
    return torch.tensor(math.log(1 / 0.07))


def export_open_clip(model: VLPModel, tokenizer: Tokenizer, out: Path) -> Path:
    tokens = TokenIds.of(tokenizer)
    vision_cfg, state = _vision(model)
    hf = hf_text_model(model, tokens)
    hf.config.save_pretrained(str(out))  # AutoConfig.from_pretrained(OUT) for the text tower
    max_len = model.text_encoder.pos_embed.shape[1]
    hf_tokenizer(tokenizer, max_len).save_pretrained(str(out))
    state.update({f"text.transformer.{k}": v.detach().contiguous()
                  for k, v in hf.state_dict().items()})
    state["text.proj.weight"] = model.text_proj.weight.detach().contiguous()
    state["logit_scale"] = _logit_scale(model)
    channels = model.ctx.channels
    config = {
        "model_cfg": {
            "embed_dim": model.image_proj.out_features, "custom_text": True,
            "vision_cfg": vision_cfg,
            "text_cfg": {"hf_model_name": str(out.resolve()), "hf_tokenizer_name":
                         str(out.resolve()), "hf_model_pretrained": False,
                         "hf_proj_type": "linear",
                         "hf_pooler_type": POOLERS[model.text_encoder.pool],
                         "context_length": max_len}},
        "preprocess_cfg": {"mean": [0.0] * 3, "std": [1.0] * 3, "interpolation": "bilinear",
                           "resize_mode": "squash"},
        "vlp": {"image_channels": channels, "note": "grey images as three equal channels"
                if channels == 1 else ""}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / "README.md").write_text(
        "# open_clip export of a vlp run\n\nopen_clip adapts only the Hugging Face text types "
        "in `open_clip.hf_configs.arch_dict`; register this pre-norm one first:\n\n```python\n"
        f"{REGISTER}\nimport open_clip\nmodel, _, preprocess = "
        f"open_clip.create_model_and_transforms('local-dir:{out.resolve()}')\ntokenizer = "
        f"open_clip.get_tokenizer('local-dir:{out.resolve()}')\n```\n\n`hf_model_name` in "
        "open_clip_config.json is this folder's absolute path: edit it if you move the folder.\n")
    return out
