"""Assembles encoders, shared projections, maskers and objectives from a validated recipe.

One nn.Module holds everything with parameters, so the optimiser, checkpoints and DDP see it.
Its forward runs one training step: objectives read features through a `Step` and the total
loss is the recipe-weighted sum.
"""

from __future__ import annotations

import torch
from torch import nn

from vlp.core.batch import Batch
from vlp.core.context import BuildContext
from vlp.core.features import ImageFeatures, TextFeatures
from vlp.core.recipe import Recipe
from vlp.core.step import Step
from vlp.core.views import ImageView, TextView
from vlp.data.tokenize import TokenIds


class VLPModel(nn.Module):
    def __init__(self, recipe: Recipe, tokens: TokenIds):
        super().__init__()
        spec = recipe.spec
        ie, te = recipe.image_encoder, recipe.text_encoder
        self.image_encoder = ie.cls(ie.params, image_size=spec.data.image_size,
                                    in_chans=spec.data.channels)
        self.text_encoder = te.cls(te.params, vocab_size=tokens.vocab_size, pad_id=tokens.pad,
                                   max_len=spec.data.max_text_len)
        needs_fusion = any(r.cls.needs(r.params).fusion for r in recipe.objectives.values())
        self.fusion = None
        if recipe.fusion is not None and needs_fusion:  # built only if some objective reads it
            self.fusion = recipe.fusion.cls(recipe.fusion.params, self.image_encoder.width,
                                            self.text_encoder.width)
        self.image_proj = nn.Linear(self.image_encoder.width, spec.model.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text_encoder.width, spec.model.embed_dim, bias=False)
        self.ctx = BuildContext(
            image_width=self.image_encoder.width, text_width=self.text_encoder.width,
            fusion_width=None if self.fusion is None else self.fusion.width,
            embed_dim=spec.model.embed_dim, patch_size=self.image_encoder.patch_size,
            grid_size=self.image_encoder.grid_size,
            num_prefix_tokens=self.image_encoder.num_prefix_tokens,
            channels=spec.data.channels, image_size=spec.data.image_size,
            max_text_len=spec.data.max_text_len, tokens=tokens)
        self.maskers = {name: r.cls(r.params, self.ctx) for name, r in recipe.views.items()}
        self.objectives = nn.ModuleDict(
            {name: r.cls(r.params, self.ctx) for name, r in recipe.objectives.items()})
        self.weights = {name: r.weight for name, r in recipe.objectives.items()}

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            fn = getattr(module, "no_weight_decay", None)
            if module is not self and callable(fn):
                names |= {f"{prefix}.{n}" for n in fn()}
        return names

    def forward(self, batch: Batch, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
        """One step: (weighted total loss, detached per-objective metrics, encoder pass counts)."""
        step = Step(self, batch, generator)
        total = batch.image.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for name, objective in self.objectives.items():
            out = objective(step)
            total = total + self.weights[name] * out.loss.float()
            metrics[f"loss/{name}"] = out.loss.detach().float()
            for key, value in out.metrics.items():
                metrics[f"{name}/{key}"] = value.detach().float()
        return total, metrics, step.pass_counts()

    @torch.no_grad()
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings for retrieval (full images)."""
        enc = self.image_encoder
        features = ImageFeatures(enc(pixels), enc.num_prefix_tokens, ImageView(pixels), enc.pool)
        pooled = features.pooled
        return nn.functional.normalize(self.image_proj(pooled), dim=-1)

    @torch.no_grad()
    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings for retrieval (full reports)."""
        enc = self.text_encoder
        pooled = TextFeatures(enc(input_ids, attention_mask), TextView(input_ids, attention_mask),
                              enc.pool).pooled
        return nn.functional.normalize(self.text_proj(pooled), dim=-1)
