"""A learnable softmax temperature, as CLIP learns it: log inverse temperature, clamped."""

from __future__ import annotations

import math

import torch
from torch import nn


class LearnableTemperature(nn.Module):
    """Holds log(1 / temperature) as a parameter; logits are multiplied by `scale()`.

    The parameter itself is clamped to [0, log(max_scale)] after each optimiser step (CLIP's
    cap of 100): a clamp inside forward would zero its gradient for good once it hit the cap.
    `Objective.after_optimizer_step` clamps every one an objective holds.
    """

    def __init__(self, init_temperature: float, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_scale = max_scale

    def scale(self) -> torch.Tensor:
        """exp(log_scale) = 1 / temperature, with gradient."""
        return self.log_scale.exp()

    def temperature(self) -> torch.Tensor:
        """The current temperature, detached (for logs and samplers)."""
        return (-self.log_scale).exp().detach()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_scale.clamp_(0, math.log(self.max_scale))
