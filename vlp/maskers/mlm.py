"""Masked language modelling inputs: whole-word selection and BERT's 80/10/10 replacement."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from pydantic import Field, model_validator

from vlp.core.views import TextView, ViewOutput
from vlp.maskers.base import Masker
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.step import Step

IGNORE = -100


def select_units(units: torch.Tensor, eligible: torch.Tensor, ratio: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Pick whole units (words) at random until about `ratio` of eligible tokens are covered.

    Units are shuffled per row and taken while the tokens before a unit plus half of it stay
    within the budget, so the expected count is ratio * eligible however long the words are.
    Vectorised: no loop over the batch. Returns a (B, T) bool token selection.
    """
    b, t = units.shape
    slot = torch.where(eligible, units, torch.full_like(units, t))  # t: bucket for the rest
    length = torch.zeros(b, t + 1, device=units.device).scatter_add_(
        1, slot, eligible.float())[:, :t]
    budget = ratio * eligible.sum(1, keepdim=True)
    score = torch.rand(b, t, generator=generator, device=units.device)
    order = score.masked_fill(length == 0, 2.0).argsort(dim=1)
    sorted_len = length.gather(1, order)
    before = sorted_len.cumsum(1) - sorted_len
    take = (sorted_len > 0) & (before + sorted_len / 2 < budget)
    chosen = torch.zeros(b, t, dtype=torch.bool, device=units.device).scatter(1, order, take)
    return eligible & chosen.gather(1, slot.clamp(max=t - 1))


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor,
                word_ids: torch.Tensor, mask_token_id: int, vocab_size: int, ratio: float,
                generator: torch.Generator, *, whole_word: bool = True, mask_prob: float = 0.8,
                random_prob: float = 0.1, random_low: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: select ~ratio of non-special tokens (whole words when `whole_word`),
    replace 80% of them by [MASK], 10% by a random token in [random_low, vocab_size), keep 10%.

    Returns (masked_ids, labels) with labels = original id at selected tokens, -100 elsewhere.
    `word_ids` is the word index of each token, negative at special and padding tokens.
    """
    eligible = ~special_tokens_mask & (word_ids >= 0)
    units = word_ids if whole_word else torch.arange(
        input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    selected = select_units(units, eligible, ratio, generator)
    r = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    random_ids = torch.randint(random_low, vocab_size, input_ids.shape, generator=generator,
                               device=input_ids.device)
    masked = torch.where(selected & (r < mask_prob), mask_token_id, input_ids)
    masked = torch.where(selected & (r >= mask_prob) & (r < mask_prob + random_prob),
                         random_ids, masked)
    labels = torch.where(selected, input_ids, IGNORE)
    return masked, labels


def prediction_positions(labels: torch.Tensor, max_predictions: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-size (B, M) positions of labelled tokens and their labels (-100 as padding), so a
    head projects only masked tokens to the vocabulary without a data-dependent shape."""
    m = min(max_predictions, labels.shape[1])
    noise = torch.rand(labels.shape, generator=generator, device=labels.device)
    positions = ((labels != IGNORE).float() + noise * 0.5).topk(m, dim=1).indices
    return positions, labels.gather(1, positions)


def max_predictions_for(ratio: float, length: int) -> int:
    """Room for ratio * length tokens plus whole-word overshoot; rarer excess is not predicted."""
    return min(length, math.ceil(ratio * length * 1.25) + 4)


class MLMTokens(Masker):
    """Mask report tokens for MLM: whole words, 80% [MASK] / 10% random / 10% unchanged."""

    produces = frozenset({"text"})
    masks = frozenset({"text"})

    class Params(Params):
        ratio: float = Field(0.15, gt=0, lt=1)
        """Fraction of report tokens selected for prediction."""
        whole_word: bool = True
        """Select whole words (all their subword tokens) together."""
        mask_prob: float = Field(0.8, ge=0, le=1)
        """Of the selected tokens, the fraction replaced by [MASK]."""
        random_prob: float = Field(0.1, ge=0, le=1)
        """Of the selected tokens, the fraction replaced by a random token."""

        @model_validator(mode="after")
        def _probabilities(self):
            if self.mask_prob + self.random_prob > 1:
                raise ValueError("mask_prob + random_prob must be at most 1")
            return self

    def __call__(self, step: Step, generator: torch.Generator) -> ViewOutput:
        p, ids, batch = self.params, self.ctx.tokens, step.batch
        masked, labels = mask_tokens(batch.input_ids, batch.special_tokens_mask, batch.word_ids,
                                     ids.mask, ids.vocab_size, p.ratio, generator,
                                     whole_word=p.whole_word, mask_prob=p.mask_prob,
                                     random_prob=p.random_prob, random_low=ids.first_regular)
        positions, position_labels = prediction_positions(
            labels, max_predictions_for(p.ratio, labels.shape[1]), generator)
        return ViewOutput(text=TextView(masked, batch.attention_mask, labels, positions,
                                        position_labels))
