"""Image-text contrastive learning (CLIP's symmetric InfoNCE), exact under DDP."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from vlp.core import distributed as D
from vlp.core.ops import fp32
from vlp.objectives.base import Needs, Objective, ObjectiveOutput
from vlp.objectives.temperature import LearnableTemperature
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


def symmetric_cross_entropy(logits_i2t: torch.Tensor, logits_t2i: torch.Tensor
                            ) -> torch.Tensor:
    """Mean of both directions' cross-entropy; local row r's positive is global column
    r + rank * rows (identity without a process group)."""
    n = logits_i2t.shape[0]
    labels = torch.arange(n, device=logits_i2t.device) + D.rank() * n
    return (F.cross_entropy(logits_i2t.float(), labels)
            + F.cross_entropy(logits_t2i.float(), labels)) / 2


def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
             logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over all pairs of the (global) batch; row i of each input is a pair.

    Inputs are L2-normalised (B, D); `logit_scale` is the log of the inverse temperature. The
    similarities are computed in fp32 even under autocast (bf16 would round them). Under
    DDP each rank scores its own rows against every rank's rows (features gathered with
    gradient, "local loss"), which gives the exact global loss at O(B * N) memory.
    """
    image_emb, text_emb = image_emb.float(), text_emb.float()
    all_image, all_text = D.gather_with_grad(image_emb), D.gather_with_grad(text_emb)
    scale = logit_scale.float().exp()
    with fp32(image_emb):
        return symmetric_cross_entropy(scale * image_emb @ all_text.T,
                                       scale * text_emb @ all_image.T)


class ITC(Objective):
    """Image-text contrastive loss (symmetric InfoNCE) with a learnable, clamped temperature."""

    batch_coupled = True

    class Params(Params):
        image_view: str = "image"
        """Image view to contrast (e.g. a masked view for FLIP-style ITC)."""
        text_view: str = "text"
        """Text view to contrast."""
        init_temperature: float = Field(0.07, gt=0)
        """Initial softmax temperature (learnable)."""
        max_logit_scale: float = Field(100.0, gt=1)  # CLIP clamps exp(scale) at 100
        """Cap on the learnable logit scale (CLIP clamps exp(scale) at 100)."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        self.temperature = LearnableTemperature(params.init_temperature, params.max_logit_scale)

    @classmethod
    def needs(cls, params: Params) -> Needs:
        return Needs(image_views={"image_view": params.image_view},
                     text_views={"text_view": params.text_view})

    def forward(self, step: Step) -> ObjectiveOutput:
        loss = itc_loss(step.image_embedding(self.params.image_view),
                        step.text_embedding(self.params.text_view), self.temperature.log_scale)
        return ObjectiveOutput(loss, {"temperature": self.temperature.temperature()})
