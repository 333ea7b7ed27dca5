"""Assembles encoders, shared projections, maskers and objectives from a validated recipe.

One nn.Module holds everything with parameters, so the optimiser, checkpoints and DDP see it.
Its forward runs one training step: objectives read features through a `Step` and the total
loss is the recipe-weighted sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from vlp.core.context import BuildContext
from vlp.core.errors import ParamError, Problem, RecipeError, one_line
from vlp.core.recipe import Recipe
from vlp.core.step import Step
from vlp.data.batch import Batch
from vlp.data.tokenize import TokenIds

T = TypeVar("T")


def _build(recipe: Recipe, key: str, make: Callable[[], T]) -> T:
    """Build one part; sizes that do not fit together become a RecipeError naming the part
    (or the param a ParamError names)."""
    try:
        return make()
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        if isinstance(exc, ParamError):
            key = exc.param if exc.absolute else f"{key}.{exc.param}"
        raise RecipeError([Problem(recipe.where(key), key,
                                   f"cannot be built: {one_line(exc)}")]) from None


class VLPModel(nn.Module):
    def __init__(self, recipe: Recipe, tokens: TokenIds):
        super().__init__()
        spec = recipe.spec
        ie, te = recipe.image_encoder, recipe.text_encoder
        self.image_encoder = _build(recipe, "model.image_encoder", lambda: ie.cls(
            ie.params, image_size=spec.data.image_size, in_chans=spec.data.channels))
        self.text_encoder = _build(recipe, "model.text_encoder", lambda: te.cls(
            te.params, vocab_size=tokens.vocab_size, pad_id=tokens.pad,
            max_len=spec.data.max_text_len))
        needs_fusion = any(r.cls.needs(r.params).fusion for r in recipe.objectives.values())
        self.fusion = None
        fusion = recipe.fusion
        if fusion is not None and needs_fusion:  # built only if some objective reads it
            self.fusion = _build(recipe, "model.fusion", lambda: fusion.cls(
                fusion.params, self.image_encoder.width, self.text_encoder.width))
        self.image_proj = nn.Linear(self.image_encoder.width, spec.model.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text_encoder.width, spec.model.embed_dim, bias=False)
        self.ctx = BuildContext(
            image_width=self.image_encoder.width, text_width=self.text_encoder.width,
            fusion_width=None if self.fusion is None else self.fusion.width,
            fusion_image_layers=0 if self.fusion is None else self.fusion.image_layers,
            embed_dim=spec.model.embed_dim, patch_size=self.image_encoder.patch_size,
            grid_size=self.image_encoder.grid_size,
            num_prefix_tokens=self.image_encoder.num_prefix_tokens,
            channels=spec.data.channels, image_size=spec.data.image_size,
            max_text_len=spec.data.max_text_len, tokens=tokens,
            text_mlm_head=self.text_encoder.pretrained_mlm_head())
        self.maskers = {name: _build(recipe, r.key, lambda r=r: r.cls(r.params, self.ctx))
                        for name, r in recipe.views.items()}
        self.objectives = nn.ModuleDict(
            {name: _build(recipe, r.key, lambda r=r: r.cls(r.params, self.ctx))
             for name, r in recipe.objectives.items()})
        self.weights = {name: r.weight for name, r in recipe.objectives.items()}
        self._freeze_what_nothing_trains(recipe)

    def _freeze_what_nothing_trains(self, recipe: Recipe) -> None:
        """Shared parts no objective reads (the text encoder of an image-only recipe, the
        projections of a recipe without a contrastive part) stay fixed, out of the optimiser
        and of DDP, rather than being reported as untrained; evaluation still reads them."""
        needs = [r.cls.needs(r.params) for r in recipe.objectives.values()]
        if not any(n.image_views or n.fusion for n in needs):
            self.image_encoder.requires_grad_(False)
        if not any(n.text_views or n.fusion for n in needs):
            self.text_encoder.requires_grad_(False)
        if all(n.embeddings != "train" for n in needs):
            self.image_proj.requires_grad_(False)
            self.text_proj.requires_grad_(False)

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
