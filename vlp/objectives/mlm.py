"""Masked language modelling on the report alone (uni-modal) or image-conditioned (fused)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vlp.maskers.mlm import IGNORE
from vlp.objectives.base import Needs, Objective, ObjectiveOutput
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions (labels -100 are ignored); 0 if there are none."""
    per_token = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(),
                                ignore_index=IGNORE, reduction="sum")
    return per_token / (labels != IGNORE).sum().clamp(min=1)


class MLMHead(nn.Sequential):
    """BERT's prediction head: transform, GELU, LayerNorm, then a projection to the vocabulary."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width),
                         nn.Linear(width, vocab_size))


class MLM(Objective):
    """Masked language modelling; `fused: true` predicts from image-conditioned (fused) tokens."""

    class Params(Params):
        text_view: str  # a masked text view (e.g. from the mlm_tokens masker)
        """Masked text view to predict (e.g. from the mlm_tokens masker)."""
        fused: bool = False
        """Predict from image-conditioned (fused) report tokens instead of the text encoder's."""
        image_view: str = "image"  # the image the report is conditioned on, when fused
        """Image the report is conditioned on, when fused."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        width = ctx.fusion_width if params.fused else ctx.text_width
        if width is None:
            raise ValueError("fused MLM needs a fusion module")
        pretrained = ctx.text_mlm_head  # a pretrained text encoder's head, where widths match
        self.head = (pretrained if pretrained is not None and width == ctx.text_width
                     else MLMHead(width, ctx.tokens.vocab_size))

    @classmethod
    def needs(cls, params: Params) -> Needs:
        image = {"image_view": params.image_view} if params.fused else {}
        return Needs(image_views=image, text_views={"text_view": params.text_view},
                     fusion=params.fused, masked=frozenset({"text_view"}), embeddings="none")

    def forward(self, step: Step) -> ObjectiveOutput:
        p = self.params
        view = step.text_view(p.text_view)
        if view.positions is None:
            raise ValueError(f"MLM needs a masked text view; '{p.text_view}' has no labels")
        tokens = (step.fused(p.image_view, p.text_view).text if p.fused
                  else step.text(p.text_view).tokens)
        picked = tokens.gather(1, view.positions[..., None].expand(-1, -1, tokens.shape[-1]))
        logits = self.head(picked)  # only masked positions reach the vocabulary projection
        labels = view.position_labels
        valid = labels != IGNORE
        accuracy = ((logits.argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1)
        return ObjectiveOutput(mlm_loss(logits, labels), {"accuracy": accuracy})
