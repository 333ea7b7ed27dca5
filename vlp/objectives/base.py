"""The contract between an objective plugin and the training step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from vlp.plugins.base import Params, Plugin

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


@dataclass(frozen=True)
class Needs:
    """What an objective reads, declared before anything is built so a recipe can be checked.

    `image_views`/`text_views` map a parameter name to the view it names; `fusion` says the
    objective reads fused features (so the recipe must define `model.fusion`); `masked` names
    the parameters whose view must be masked (MIM, MLM). `embeddings` says how it uses the
    shared image/text projections (`Step.image_embedding`): "train" (with gradient; the
    default, so an undeclared reader keeps them trainable), "read" (without gradient, e.g. to
    rank hard negatives: some other objective must train them) or "none".
    """

    image_views: dict[str, str] = field(default_factory=dict)
    text_views: dict[str, str] = field(default_factory=dict)
    fusion: bool = False
    masked: frozenset[str] = frozenset()  # parameter names whose view must be a masked one
    embeddings: Literal["train", "read", "none"] = "train"


@dataclass
class ObjectiveOutput:
    """A scalar loss to be weighted by the recipe, plus detached metrics for the log."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module, Plugin):
    """Base for objectives: they own their heads and read features only through the step."""

    #: True when a sample's loss depends on other samples of the batch (negatives); such
    #: objectives cannot be split across gradient-accumulation micro-batches unchanged.
    batch_coupled: ClassVar[bool] = False

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__()
        self.params = params

    @classmethod
    def needs(cls, params: Params) -> Needs:
        """Views and modules this objective reads, given its parameters."""
        return Needs()

    def forward(self, step: Step) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Called after each optimiser step: clamps every learnable temperature it holds."""
        from vlp.objectives.temperature import LearnableTemperature

        for module in self.modules():
            if isinstance(module, LearnableTemperature):
                module.clamp_()
