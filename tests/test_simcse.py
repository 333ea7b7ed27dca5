"""SimCSE: the loss by hand, and two dropout views as two text-encoder passes."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.core.step import Step
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import TokenIds, train_tokenizer
from vlp.objectives.simcse import simcse_loss


def reference(first: torch.Tensor, second: torch.Tensor, temperature: float) -> float:
    """-mean_i log( exp(cos(a_i, b_i)/t) / sum_j exp(cos(a_i, b_j)/t) ), written out."""
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a)
                                                            * sum(y * y for y in b))
    a, b = first.tolist(), second.tolist()
    total = 0.0
    for i in range(len(a)):
        scores = [cos(a[i], b[j]) / temperature for j in range(len(b))]
        total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    return total / len(a)


def test_simcse_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert simcse_loss(first, second, 0.05).item() == pytest.approx(
        reference(first, second, 0.05), rel=1e-5)
    # identical views and orthogonal reports: the loss vanishes at a low temperature
    eye = torch.eye(4)
    assert simcse_loss(eye, 3 * eye, 0.01).item() < 1e-6


def test_two_dropout_views_are_two_text_passes(write_recipe):
    path = write_recipe("""
        _base_: tiny_base.yaml
        model: {text_encoder: {dropout: 0.1}}
        views: {text_copy: {masker: text_copy}}
        objectives: {simcse: {weight: 1.0}}
    """)
    tokenizer = train_tokenizer(demo_reports(16), vocab_size=300)
    torch.manual_seed(0)
    model = VLPModel(load_recipe(path), TokenIds.of(tokenizer))
    data = DemoDataset(4, image_size=32)
    batch = Collator(tokenizer, 48)([data[i] for i in range(4)])
    step = Step(model, batch, torch.Generator().manual_seed(0))
    out = model.objectives["simcse"](step)
    out.loss.backward()
    counts = step.pass_counts()
    assert counts["passes/text_encoder"] == 2 and "passes/image_encoder" not in counts
    first, second = step.text("text").tokens, step.text("text_copy").tokens
    assert not torch.allclose(first, second)  # the dropout draws differ
    assert model.text_encoder.token_embed.weight.grad.abs().sum() > 0
