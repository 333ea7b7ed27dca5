"""AdamW with no decay on norms, biases and embeddings-like tokens; warm-up then decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from vlp.core.recipe import OptimSpec, ScheduleSpec


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and undecayed norms/biases/1-d params/listed tokens."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, spec: OptimSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, spec.weight_decay), lr=spec.lr,
                             betas=spec.betas, eps=spec.eps)


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
