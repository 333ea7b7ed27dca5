"""AdamW with no decay on norms, biases and embeddings-like tokens, per-module learning-rate
scales and weight decay from the recipe's `optim.groups`; warm-up then decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from fnmatch import fnmatchcase

import torch
from torch import nn

from vlp.core.errors import Problem, RecipeError
from vlp.core.recipe import OptimSpec, ScheduleSpec


def param_groups(model: nn.Module, spec: OptimSpec,
                 where: Callable[[str], str] = str) -> list[dict]:
    """Optimiser groups: by default decayed matrices and undecayed norms, biases, 1-d and
    listed (no_weight_decay) parameters; a recipe group's glob takes the parameters it matches
    first, scaling their lr and, if it says so, setting their weight decay. A glob that matches
    no trainable parameter is a RecipeError (a typo would otherwise change nothing)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    used = [False] * len(spec.groups)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim <= 1 or name in skip else spec.weight_decay
        lr_scale = 1.0
        for index, group in enumerate(spec.groups):
            if fnmatchcase(name, group.match):
                used[index] = True
                lr_scale = group.lr_scale
                decay = decay if group.weight_decay is None else group.weight_decay
                break
        buckets.setdefault((lr_scale, decay), []).append(param)
    unused = [i for i, hit in enumerate(used) if not hit]
    if unused:
        raise RecipeError([Problem(where(f"optim.groups.{i}.match"), f"optim.groups.{i}.match",
                                   f"{spec.groups[i].match!r} matches no trainable parameter "
                                   "(names look like 'fusion.text_blocks.0.attn.q.weight')")
                           for i in unused])
    return [{"params": params, "lr": spec.lr * lr_scale, "weight_decay": decay}
            for (lr_scale, decay), params in buckets.items()]


def build_optimizer(model: nn.Module, spec: OptimSpec,
                    where: Callable[[str], str] = str) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; `where` locates a recipe key for error messages."""
    return torch.optim.AdamW(param_groups(model, spec, where), lr=spec.lr, betas=spec.betas,
                             eps=spec.eps)


def lr_factor(step: int, total: int, spec: ScheduleSpec) -> float:
    """Multiplier of the base learning rate at `step` (0-based)."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.kind == "constant":
        return 1.0
    progress = min(1.0, (step - spec.warmup_steps) / max(1, total - spec.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if spec.kind == "cosine" else 1 - progress
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, spec: ScheduleSpec
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda s: lr_factor(s, total_steps, spec))
