"""Image-text matching on fused pairs, with hard (similarity-weighted) or random negatives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

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


def same_pair_mask(query_ids: tuple[torch.Tensor, ...], cand_ids: tuple[torch.Tensor, ...]
                   ) -> torch.Tensor:
    """(Q, C) True where a candidate shares any id with the query (same study or same text)."""
    out = torch.zeros(query_ids[0].shape[0], cand_ids[0].shape[0], dtype=torch.bool,
                      device=query_ids[0].device)
    for q, c in zip(query_ids, cand_ids):
        out |= q[:, None] == c[None, :]
    return out


def sample_negatives(sim: torch.Tensor, exclude: torch.Tensor, generator: torch.Generator,
                     hard: bool = True, temperature: float = 0.07) -> torch.Tensor:
    """One negative candidate per query row in a single vectorised draw (no host sync).

    Hard: probability proportional to softmax(sim / temperature) over allowed candidates;
    random: uniform over them. `exclude` (Q, C) marks candidates that must never be drawn. A row
    with no allowed candidate falls back to uniform over all (its pair is then labelled by id).
    """
    logits = sim.float() / temperature if hard else torch.zeros_like(sim, dtype=torch.float)
    weights = torch.softmax(logits.masked_fill(exclude, float("-inf")), dim=1)
    weights = torch.nan_to_num(weights, nan=0.0)  # all-excluded rows
    empty = weights.sum(1, keepdim=True) == 0
    weights = torch.where(empty, torch.ones_like(weights), weights)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary match/no-match cross-entropy; logits (N, 2), labels (N,) with 1 = match."""
    return F.cross_entropy(logits.float(), labels)


class ITM(Objective):
    """Image-text matching on fused pairs with hard (similarity-drawn) or random negatives.

    Each image gets one negative report and each report one negative image."""

    batch_coupled = True

    class Params(Params):
        image_view: str = "image"
        """Image view of the pairs to classify."""
        text_view: str = "text"
        """Text view of the pairs to classify."""
        negatives: Literal["hard", "random"] = "hard"
        """How mismatched pairs are drawn: by similarity (hard) or uniformly (random)."""
        temperature: float = Field(0.07, gt=0)  # sharpness of hard-negative sampling
        """Sharpness of hard-negative sampling."""
        gather: bool = False  # draw candidates from every rank's batch (DDP)
        """Draw negatives from every rank's batch under DDP."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        if ctx.fusion_width is None:
            raise ValueError("ITM needs a fusion module")
        self.head = nn.Linear(ctx.fusion_width, 2)
        self.max_text_len = ctx.max_text_len

    @classmethod
    def needs(cls, params: Params) -> Needs:
        return Needs(image_views={"image_view": params.image_view},
                     text_views={"text_view": params.text_view}, fusion=True,
                     embeddings="read" if params.negatives == "hard" else "none")

    def forward(self, step: Step) -> ObjectiveOutput:
        p = self.params

        def cands(x: torch.Tensor, grad: bool = False, pad_to: int | None = None
                  ) -> torch.Tensor:
            """Candidates: this rank's batch, or every rank's when `gather` is on (token
            tensors padded to a length all ranks share)."""
            if not p.gather:
                return x
            return D.gather_with_grad(x, pad_to) if grad else D.gather_no_grad(x, pad_to)

        img, txt = step.image(p.image_view), step.text(p.text_view)
        ids = (step.batch.sample_id, step.batch.text_id)
        exclude = same_pair_mask(ids, tuple(cands(i) for i in ids))
        hard = p.negatives == "hard"
        if hard:  # similarities of the shared ITC embeddings, no gradient
            image_emb = step.image_embedding(p.image_view).detach().float()
            text_emb = step.text_embedding(p.text_view).detach().float()
            with fp32(image_emb):  # bf16 would round near-equal similarities together
                sim_i2t, sim_t2i = image_emb @ cands(text_emb).T, text_emb @ cands(image_emb).T
        else:
            sim_i2t = sim_t2i = torch.zeros(exclude.shape, device=exclude.device)
        g = step.generator_for(f"itm/{p.image_view}/{p.text_view}")
        neg_text = sample_negatives(sim_i2t, exclude, g, hard, p.temperature)
        neg_image = sample_negatives(sim_t2i, exclude, g, hard, p.temperature)
        matched = torch.cat([torch.ones_like(neg_text, dtype=torch.bool),
                             exclude.gather(1, neg_text[:, None]).squeeze(1),
                             exclude.gather(1, neg_image[:, None]).squeeze(1)]).long()
        length = self.max_text_len
        text_tokens = cands(txt.tokens, grad=True, pad_to=length)
        text_mask = cands(txt.mask, pad_to=length)
        image_with_neg_text = step.fuse(img.tokens, text_tokens[neg_text], text_mask[neg_text],
                                        "itm_negative_texts")
        text_with_neg_image = step.fuse(cands(img.tokens, grad=True)[neg_image], txt.tokens,
                                        txt.mask, "itm_negative_images")
        positive = step.fused(p.image_view, p.text_view)
        cls = torch.cat([positive.text[:, 0], image_with_neg_text.text[:, 0],
                         text_with_neg_image.text[:, 0]])
        logits = self.head(cls)
        accuracy = (logits.argmax(-1) == matched).float().mean()
        return ObjectiveOutput(itm_loss(logits, matched), {"accuracy": accuracy})
