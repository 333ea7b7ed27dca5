"""Exact gradient accumulation for batch-coupled objectives (GradCache; open_clip's accum_freq).

A step over k micro-batches runs in two passes:

1. `AccumulatedStep` is a step over the whole batch. When an objective asks it for encoder or
   fusion features, it computes them micro-batch by micro-batch without gradients and hands
   out their concatenation as a leaf tensor. Every objective then runs once on the whole batch
   (ITC logits over all samples, ITM negatives drawn from the whole batch, BatchNorm in heads
   over the whole batch), and `loss.backward()` gives the heads, projections and temperatures
   their gradient and each cached feature its gradient.
2. `backward_through_micro_batches` recomputes each micro-batch's features with gradients,
   with the same views (masks), and back-propagates the cached feature gradients into the
   encoders and the fusion.

The gradient equals the full-batch gradient as long as recomputing a feature gives the same
value: encoders and fusion may hold no dropout and no BatchNorm (`accumulation_problems`).
The price is a second encoder forward and the full batch's features held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from vlp.core import distributed as D
from vlp.core.features import FusedFeatures, ImageFeatures, TextFeatures
from vlp.core.step import Step
from vlp.core.views import ViewOutput
from vlp.data.batch import Batch

#: Computes one cached feature of a micro-batch step: its tensors, in a fixed order.
Compute = Callable[[Step], Sequence[torch.Tensor]]


def concat_parts(parts: Sequence):
    """Concatenate micro-batch views (dataclasses of tensors or None) along the batch."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))
    if not is_dataclass(first):
        return first
    return type(first)(**{f.name: concat_parts([getattr(p, f.name) for p in parts])
                          for f in fields(first)})


class WholeBatchStep(Step):
    """The whole batch of a step as one ordinary step (features keep their graph), masked as
    accumulation masks it: each micro-batch with its own stream (`micro`). Its gradient is the
    one the two passes below compute (gradient diagnostics use it)."""

    def __init__(self, model: nn.Module, batch: Batch, micro: list[Step],
                 generator: torch.Generator):
        super().__init__(model, batch, generator)  # `generator`: whole-batch samplers (ITM)
        self.micro = micro

    def view(self, name: str) -> ViewOutput:
        if name in ("image", "text"):
            return super().view(name)

        def make() -> ViewOutput:  # each micro-batch masks with its own stream
            self.passes[f"masker/{name}"] += 1
            return concat_parts([step.view(name) for step in self.micro])
        return self._once(("view", name), make)


class AccumulatedStep(WholeBatchStep):
    """The whole batch of a step, whose encoder and fusion features are computed micro-batch by
    micro-batch without gradients and cached as leaves (pass 1); see the module docstring."""

    def __init__(self, model: nn.Module, batch: Batch, micro: list[Step],
                 generator: torch.Generator):
        super().__init__(model, batch, micro, generator)
        self.cached: dict[tuple, tuple[Compute, list[torch.Tensor]]] = {}

    def _leaves(self, key: tuple, compute: Compute) -> list[torch.Tensor]:
        with torch.no_grad():
            per_micro = [compute(step) for step in self.micro]
        leaves = [torch.cat(list(parts)).requires_grad_() for parts in zip(*per_micro)]
        self.cached[key] = (compute, leaves)
        return leaves

    def image(self, view: str = "image") -> ImageFeatures:
        def encode() -> ImageFeatures:
            self.passes[f"image_encoder/{view}"] += 1
            (tokens,) = self._leaves(("image", view), lambda s: (s.image(view).tokens,))
            enc = self.model.image_encoder
            return ImageFeatures(tokens, enc.num_prefix_tokens, self.image_view(view), enc.pool)
        return self._once(("image", view), encode)

    def text(self, view: str = "text") -> TextFeatures:
        def encode() -> TextFeatures:
            self.passes[f"text_encoder/{view}"] += 1
            (tokens,) = self._leaves(("text", view), lambda s: (s.text(view).tokens,))
            return TextFeatures(tokens, self.text_view(view), self.model.text_encoder.pool)
        return self._once(("text", view), encode)

    def fused(self, image_view: str = "image", text_view: str = "text") -> FusedFeatures:
        def fuse() -> FusedFeatures:
            self.passes[f"fusion/{image_view}+{text_view}"] += 1

            def compute(step: Step) -> list[torch.Tensor]:
                out = step.fused(image_view, text_view)
                return [out.text, out.image, *out.image_layers]
            text, image, *layers = self._leaves(("fused", image_view, text_view), compute)
            return FusedFeatures(text, image, self.text_view(text_view).attention_mask, layers)
        return self._once(("fused", image_view, text_view), fuse)

    def backward_through_micro_batches(self) -> None:
        """Pass 2, after the whole-batch loss went backward: recompute each micro-batch's cached
        features with gradients (same views) and back-propagate their slice of the gradient."""
        start = 0
        for micro in self.micro:
            size = len(micro.batch)
            live = micro.sharing_views()
            outputs, grads = [], []
            for compute, leaves in self.cached.values():
                if all(leaf.grad is None for leaf in leaves):
                    continue  # read only without gradient (e.g. ITM's similarities)
                for output, leaf in zip(compute(live), leaves):
                    if leaf.grad is not None and output.requires_grad:
                        outputs.append(output)
                        grads.append(leaf.grad[start:start + size])
            if outputs:
                torch.autograd.backward(outputs, grads)
            start += size


def accumulation_problems(model: nn.Module) -> list[str]:
    """Why recomputing features would not reproduce them: dropout, stochastic depth or
    BatchNorm in an encoder or the fusion (heads run once on the whole batch, so they may)."""
    problems = []
    for part in ("image_encoder", "text_encoder", "fusion"):
        module = getattr(model, part, None)
        if module is None:
            continue
        for name, sub in module.named_modules():
            where = f"model.{part}" + (f" ({name})" if name else "")
            if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0:
                problems.append(f"{where} has dropout {sub.p}")
            elif getattr(sub, "drop_prob", 0) > 0:
                problems.append(f"{where} has stochastic depth {sub.drop_prob}")
            elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
                problems.append(f"{where} has BatchNorm (micro-batch statistics)")
    return problems


def all_reduce_gradients(model: nn.Module) -> None:
    """Average gradients over ranks once per step, in flat buckets (identity without a process
    group). Every rank runs the same objectives, so the same parameters have gradients."""
    D.average_over_ranks([p.grad for p in model.parameters()  # FSDP reduce-scatters its shards
                          if p.grad is not None and not isinstance(p.grad, DTensor)])
