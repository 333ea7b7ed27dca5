"""Masked language modelling on the report alone (uni-modal) or image-conditioned (fused)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.core.errors import ParamError
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


class TiedMLMHead(nn.Module):
    """BERT's head with its vocabulary projection tied to the token embeddings: transform,
    GELU, LayerNorm, then logits = h @ E^T + b with E the encoder's (shared) embedding table."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(features), embedding, self.bias)


class MLM(Objective):
    """Masked language modelling; `fused: true` predicts from image-conditioned (fused) tokens."""

    class Params(Params):
        text_view: str  # a masked text view (e.g. from the mlm_tokens masker)
        """Masked text view to predict (e.g. from the mlm_tokens masker)."""
        fused: bool = False
        """Predict from image-conditioned (fused) report tokens instead of the text encoder's."""
        image_view: str = "image"  # the image the report is conditioned on, when fused
        """Image the report is conditioned on, when fused."""
        head: Literal["auto", "own", "tied", "encoder"] = "auto"
        """'own': a new BERT head; 'tied': its vocabulary projection is the text encoder's
        token embedding table (BERT); 'encoder': the pretrained head the text encoder brings;
        'auto': that head where there is one of the right width, else a new one."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        width = ctx.fusion_width if params.fused else ctx.text_width
        if width is None:
            raise ValueError("fused MLM needs a fusion module")
        self.width = width
        pretrained = ctx.text_mlm_head if width == ctx.text_width else None
        if params.head == "encoder" and pretrained is None:
            raise ParamError("head", "the text encoder brings no pretrained MLM head of width "
                             f"{width}; use head: own or tied")
        self.uses_pretrained_head = params.head in ("auto", "encoder") and pretrained is not None
        if self.uses_pretrained_head:
            self.head = pretrained
        elif params.head == "tied":
            self.head = TiedMLMHead(width, ctx.tokens.vocab_size)
        else:
            self.head = MLMHead(width, ctx.tokens.vocab_size)

    def bind(self, model: nn.Module) -> None:
        if self.params.head != "tied":
            return
        encoder = model.text_encoder
        embedding = encoder.input_embeddings()
        if embedding is None:
            raise ParamError("head", f"the text encoder ({type(encoder).__name__}) offers no "
                             "token embeddings to tie to")
        if embedding.weight.shape[1] != self.width:
            raise ParamError("head", f"tied: the token embeddings are "
                             f"{embedding.weight.shape[1]} wide, the features {self.width}")

    def init_weights(self, style: str) -> None:
        """A pretrained head keeps its weights under `model.init`."""
        if not self.uses_pretrained_head:
            super().init_weights(style)

    def logits(self, step: Step, picked: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the features at masked positions."""
        if self.params.head == "tied":
            return self.head(picked, step.model.text_encoder.input_embeddings().weight)
        return self.head(picked)

    @classmethod
    def needs(cls, params: Params) -> Needs:
        image = {"image_view": params.image_view} if params.fused else {}
        return Needs(image_views=image, text_views={"text_view": params.text_view},
                     fusion=params.fused, masked=frozenset({"text_view"}), embeddings="none")

    def forward(self, step: Step) -> ObjectiveOutput:
        params = self.params
        view = step.text_view(params.text_view)
        if view.positions is None:
            raise ValueError(f"MLM needs a masked text view; '{params.text_view}' has no labels")
        tokens = (step.fused(params.image_view, params.text_view).text if params.fused
                  else step.text(params.text_view).tokens)
        picked = tokens.gather(1, view.positions[..., None].expand(-1, -1, tokens.shape[-1]))
        logits = self.logits(step, picked)  # only masked positions reach the vocabulary
        labels = view.position_labels
        valid = labels != IGNORE
        accuracy = ((logits.argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1)
        return ObjectiveOutput(mlm_loss(logits, labels), {"accuracy": accuracy})
