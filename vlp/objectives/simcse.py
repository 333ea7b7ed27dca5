"""Uni-modal text self-supervision at feature level: SimCSE's contrast of two dropout views.

Two passes of the same report through the text encoder differ only by dropout; each report's
first view must pick out its own second view among every report's second view (in-batch and,
under DDP, other ranks' negatives). Needs text encoder dropout > 0 (SimCSE uses 0.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlp.core import distributed as D
from vlp.core.ops import fp32
from vlp.objectives.base import Needs, Objective, ObjectiveOutput
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


def simcse_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of cos(first_i, second_j) / temperature against j = i, over every rank's
    second views; first, second (B, D), any scale. Computed in fp32."""
    first = F.normalize(first.float(), dim=-1)
    second = F.normalize(second.float(), dim=-1)
    with fp32(first):
        logits = first @ D.gather_with_grad(second).T / temperature
    labels = torch.arange(first.shape[0], device=first.device) + D.rank() * first.shape[0]
    return F.cross_entropy(logits, labels)


class SimCSE(Objective):
    """SimCSE on two dropout views of each report (uni-modal text, feature level)."""

    batch_coupled = True

    class Params(Params):
        view_1: str = "text"
        """First view of the report."""
        view_2: str = "text_copy"
        """Second view of the same report (e.g. from the text_copy masker)."""
        temperature: float = Field(0.05, gt=0)
        """Softmax temperature of the cosine similarities (SimCSE: 0.05)."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        # SimCSE's training-time pooler on the pooled feature: dense + tanh
        self.pooler = nn.Sequential(nn.Linear(ctx.text_width, ctx.text_width), nn.Tanh())

    @classmethod
    def needs(cls, params: Params) -> Needs:
        return Needs(text_views={"view_1": params.view_1, "view_2": params.view_2},
                     embeddings="none")

    def forward(self, step: Step) -> ObjectiveOutput:
        first = self.pooler(step.text(self.params.view_1).pooled)
        second = self.pooler(step.text(self.params.view_2).pooled)
        return ObjectiveOutput(simcse_loss(first, second, self.params.temperature))
