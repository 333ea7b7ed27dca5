"""SimSiam uni-modal image self-supervision: projector + predictor, stop-gradient inside."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlp.objectives.base import Needs, Objective, ObjectiveOutput
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
                 ) -> torch.Tensor:
    """Symmetric negative cosine, predictions against stop-gradient projections (in [-1, 1])."""
    return -(F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
             + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()) / 2


def projector(width: int, dim: int) -> nn.Sequential:
    """SimSiam's 3-layer projection MLP with BatchNorm (last BN without affine)."""
    return nn.Sequential(nn.Linear(width, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))


def predictor(dim: int, hidden: int) -> nn.Sequential:
    """SimSiam's bottleneck prediction MLP."""
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(True), nn.Linear(hidden, dim))


class SimSiam(Objective):
    """SimSiam on two augmented image views (uni-modal image self-supervision)."""

    batch_coupled = True  # BatchNorm statistics span the batch

    class Params(Params):
        view_1: str = "image_aug1"
        """First augmented image view."""
        view_2: str = "image_aug2"
        """Second augmented image view."""
        dim: int = Field(2048, gt=0)
        """Width of the projection MLP's output."""
        pred_dim: int = Field(512, gt=0)
        """Hidden width of the predictor MLP."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        self.projector = projector(ctx.image_width, params.dim)
        self.predictor = predictor(params.dim, params.pred_dim)

    @classmethod
    def needs(cls, params: Params) -> Needs:
        return Needs(image_views={"view_1": params.view_1, "view_2": params.view_2},
                     embeddings="none")

    def forward(self, step: Step) -> ObjectiveOutput:
        z1 = self.projector(step.image(self.params.view_1).pooled)
        z2 = self.projector(step.image(self.params.view_2).pooled)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # collapse monitor: per-dimension std of normalised projections (1/sqrt(dim) if healthy)
        spread = F.normalize(z1.detach(), dim=-1).std(0).mean()
        return ObjectiveOutput(simsiam_loss(p1, p2, z1, z2), {"z_std": spread})
