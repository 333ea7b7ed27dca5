"""Global and local alignment: contrastive on pooled features plus report-token to image-patch
alignment (FILIP-style max-similarity or GLoRIA-style attention-weighted regions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlp.core import distributed as D
from vlp.core.ops import fp32, masked_mean
from vlp.objectives.base import Needs, Objective, ObjectiveOutput
from vlp.objectives.itc import itc_loss, symmetric_cross_entropy
from vlp.objectives.temperature import LearnableTemperature
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


def filip_scores(words: torch.Tensor, word_mask: torch.Tensor, patches: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP late interaction. words (Bt, T, E) and patches (Bi, K, E) L2-normalised;
    word_mask (Bt, T) True for real words. Returns (image->text (Bi, Bt), text->image (Bt, Bi)):
    each patch's best word averaged over patches, and each word's best patch averaged over words.
    """
    sim = torch.einsum("ike,jte->ijkt", patches, words)  # (Bi, Bt, K, T)
    masked = sim.masked_fill(~word_mask[None, :, None, :], float("-inf"))
    has_words = word_mask.any(1)[None, :]  # a report with no words scores 0
    image_to_text = torch.where(has_words, masked.max(dim=3).values.mean(dim=2), 0.0)
    best_patch = sim.max(dim=2).values  # (Bi, Bt, T)
    text_to_image = masked_mean(best_patch, word_mask[None], dim=2).T  # (Bt, Bi)
    return image_to_text, text_to_image


def gloria_scores(words: torch.Tensor, word_mask: torch.Tensor, patches: torch.Tensor,
                  attn_temperature: float = 4.0, agg_temperature: float = 5.0) -> torch.Tensor:
    """GLoRIA local similarity (Bi, Bt): each word attends over the image's patches
    (softmax(attn_temperature * cos)), is compared with its attention-weighted region by cosine,
    and the word scores are aggregated by log-sum-exp(agg_temperature * .) / agg_temperature."""
    sim = torch.einsum("ike,jte->ijtk", patches, words)  # (Bi, Bt, T, K)
    attn = (attn_temperature * sim).softmax(dim=-1)
    region = F.normalize(torch.einsum("ijtk,ike->ijte", attn, patches), dim=-1)
    word_score = (region * words[None]).sum(-1)  # (Bi, Bt, T)
    word_score = word_score.masked_fill(~word_mask[None], float("-inf"))
    score = torch.logsumexp(agg_temperature * word_score, dim=-1) / agg_temperature
    return torch.where(word_mask.any(1)[None, :], score, 0.0)  # a report with no words: 0


class GLA(Objective):
    """Global (pooled ITC) plus local (token-to-patch) image-report alignment."""

    batch_coupled = True

    class Params(Params):
        image_view: str = "image"
        """Image view whose patch tokens are aligned."""
        text_view: str = "text"
        """Text view whose word tokens are aligned."""
        global_weight: float = Field(1.0, ge=0)
        """Weight of the global (pooled) image-report contrastive term."""
        local_weight: float = Field(1.0, ge=0)
        """Weight of the local word-patch alignment term."""
        local: Literal["filip", "gloria"] = "filip"
        """Local alignment: FILIP token-wise max similarity or GLoRIA attention-weighted."""
        init_temperature: float = Field(0.07, gt=0)
        """Initial softmax temperature (learnable)."""
        max_logit_scale: float = Field(100.0, gt=1)
        """Cap on the learnable logit scale exp(1/temperature)."""
        attn_temperature: float = Field(4.0, gt=0)  # GLoRIA gamma_1
        """GLoRIA gamma_1: sharpness of word-to-patch attention."""
        agg_temperature: float = Field(5.0, gt=0)  # GLoRIA gamma_2
        """GLoRIA gamma_2: sharpness of the word-score aggregation."""

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        self.max_text_len = ctx.max_text_len
        temperature, cap = params.init_temperature, params.max_logit_scale
        if params.global_weight > 0:  # a part weighted 0 builds nothing (nothing untrained)
            self.global_temperature = LearnableTemperature(temperature, cap)
        if params.local_weight > 0:
            self.local_temperature = LearnableTemperature(temperature, cap)
            self.word_proj = nn.Linear(ctx.text_width, ctx.embed_dim)
            self.patch_proj = nn.Linear(ctx.image_width, ctx.embed_dim)

    @classmethod
    def needs(cls, params: Params) -> Needs:
        return Needs(image_views={"image_view": params.image_view},
                     text_views={"text_view": params.text_view},
                     embeddings="train" if params.global_weight > 0 else "none")

    def local_loss(self, step: Step) -> torch.Tensor:
        """Contrastive loss over token-to-patch scores, negatives from every rank."""
        p = self.params
        text = step.text(p.text_view)
        words = F.normalize(self.word_proj(text.tokens).float(), dim=-1)  # fp32 similarities
        word_mask = text.mask & ~step.batch.special_tokens_mask  # no [CLS]/[SEP]/padding
        patches = F.normalize(self.patch_proj(step.image(p.image_view).patches).float(), dim=-1)
        length = self.max_text_len  # ranks pad their own batches to different lengths
        all_words = D.gather_with_grad(words, pad_to=length)
        all_mask = D.gather_no_grad(word_mask, pad_to=length)
        all_patches = D.gather_with_grad(patches)
        with fp32(words):
            if p.local == "filip":
                i2t, _ = filip_scores(all_words, all_mask, patches)
                _, t2i = filip_scores(words, word_mask, all_patches)
            else:
                i2t = gloria_scores(all_words, all_mask, patches, p.attn_temperature,
                                    p.agg_temperature)
                t2i = gloria_scores(words, word_mask, all_patches, p.attn_temperature,
                                    p.agg_temperature).T
            scale = self.local_temperature.scale().float()
            return symmetric_cross_entropy(scale * i2t, scale * t2i)

    def forward(self, step: Step) -> ObjectiveOutput:
        p = self.params
        zero = step.batch.image.new_zeros(())
        global_loss = (itc_loss(step.image_embedding(p.image_view),
                                step.text_embedding(p.text_view),
                                self.global_temperature.log_scale)
                       if p.global_weight > 0 else zero)  # a part weighted 0 is not computed
        local_loss = self.local_loss(step) if p.local_weight > 0 else zero
        loss = p.global_weight * global_loss + p.local_weight * local_loss
        return ObjectiveOutput(loss, {"global": global_loss.detach(),
                                      "local": local_loss.detach()})
