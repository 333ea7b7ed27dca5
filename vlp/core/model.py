"""Assembles encoders, shared projections, maskers and objectives from a validated recipe.

One nn.Module holds everything with parameters, so the optimiser, checkpoints and DDP see it.
Its forward runs one training step: objectives read features through a `Step` and the total
loss is the recipe-weighted sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

from vlp.core.context import BuildContext
from vlp.core.errors import ParamError, Problem, RecipeError, one_line
from vlp.core.recipe import Recipe
from vlp.core.step import Step
from vlp.data.batch import Batch
from vlp.data.tokenize import TokenIds
from vlp.encoders.layers import bert_init_

if TYPE_CHECKING:
    from vlp.objectives.base import ObjectiveOutput

T = TypeVar("T")


def _build(recipe: Recipe, key: str, make: Callable[[], T]) -> T:
    """Build one part; sizes that do not fit together become a RecipeError naming the part
    (or the param a ParamError names). Plugins say so with ValueError (ParamError), libraries
    they wrap often by assert; anything else (a TypeError, say) is the plugin's own bug and
    keeps its traceback."""
    try:
        return make()
    except (ValueError, AssertionError) as exc:
        if isinstance(exc, ParamError):
            key = exc.param if exc.absolute else f"{key}.{exc.param}"
        raise RecipeError([Problem(recipe.where(key), key,
                                   f"cannot be built: {one_line(exc)}")]) from None


class VLPModel(nn.Module):
    def __init__(self, recipe: Recipe, tokens: TokenIds):
        super().__init__()
        spec = recipe.spec
        image_spec, text_spec = recipe.image_encoder, recipe.text_encoder
        self.image_encoder = _build(recipe, "model.image_encoder", lambda: image_spec.cls(
            image_spec.params, image_size=spec.data.image_size, in_chans=spec.data.channels))
        self.text_encoder = _build(recipe, "model.text_encoder", lambda: text_spec.cls(
            text_spec.params, vocab_size=tokens.vocab_size, pad_id=tokens.pad,
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
        for name, objective in self.objectives.items():
            _build(recipe, recipe.objectives[name].key,
                   lambda objective=objective: objective.bind(self))
        self._freeze_what_nothing_trains(recipe)
        if spec.model.init != "pytorch":
            self._initialise(recipe)

    def _initialise(self, recipe: Recipe) -> None:
        """The recipe's initialisation for what vlp trains from scratch: a pretrained text
        encoder (one with its own tokenizer) keeps its weights; objectives init their heads."""
        text = recipe.text_encoder
        if text.cls.pretrained_tokenizer(text.params) is None:
            bert_init_(self.text_encoder)
        for part in (self.fusion, self.image_proj, self.text_proj):
            if part is not None:
                bert_init_(part)
        for objective in self.objectives.values():
            objective.init_weights(recipe.spec.model.init)

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
        return self.losses(Step(self, batch, generator))

    def objective_outputs(self, step: Step) -> dict[str, ObjectiveOutput]:
        """Every objective run once on `step`, in recipe order (losses unweighted)."""
        return {name: objective(step) for name, objective in self.objectives.items()}

    def weighted(self, outputs: dict[str, ObjectiveOutput]) -> dict[str, torch.Tensor]:
        """Each objective's loss times its recipe weight (float32), with its graph."""
        return {name: self.weights[name] * out.loss.float() for name, out in outputs.items()}

    def objective_losses(self, step: Step) -> dict[str, torch.Tensor]:
        """Each objective's weighted loss on `step`, not summed (gradient diagnostics)."""
        return self.weighted(self.objective_outputs(step))

    def losses(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
        """Every objective on `step` (a plain or an accumulated step): the same as `forward`."""
        outputs = self.objective_outputs(step)
        total = sum(self.weighted(outputs).values(),
                    start=step.batch.image.new_zeros((), dtype=torch.float32))
        metrics: dict[str, torch.Tensor] = {}
        for name, out in outputs.items():
            metrics[f"loss/{name}"] = out.loss.detach().float()
            for key, value in out.metrics.items():
                metrics[f"{name}/{key}"] = value.detach().float()
        return total, metrics, step.pass_counts()
