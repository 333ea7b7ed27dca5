"""Initialisation options against the anchors: BERT's normal(0, 0.02) and MAE's decoder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.data.tokenize import TokenIds
from vlp.encoders.layers import sincos_positions_2d

TOKENS = TokenIds(vocab_size=300, pad=0, unk=1, cls=2, sep=3, mask=4)


def mae_table(width: int, rows: int, cols: int) -> list[list[float]]:
    """MAE's get_2d_sincos_pos_embed written out per position and channel."""
    quarter = width // 4
    table = []
    for r in range(rows):
        for c in range(cols):
            row = []
            for pos in (c, r):  # the first half encodes the column (MAE's grid[0] is w)
                row += [math.sin(pos / 10000 ** (k / quarter)) for k in range(quarter)]
                row += [math.cos(pos / 10000 ** (k / quarter)) for k in range(quarter)]
            table.append(row)
    return table


def test_sincos_positions_match_the_formula():
    got = sincos_positions_2d(16, (3, 5), prefix=1)
    assert got.shape == (1 + 15, 16)
    assert torch.equal(got[0], torch.zeros(16))  # [CLS]
    torch.testing.assert_close(got[1:], torch.tensor(mae_table(16, 3, 5)), atol=1e-6, rtol=0)


@pytest.fixture
def model(write_recipe):
    path = write_recipe("""
        _base_: tiny_base.yaml
        model: {init: bert, text_encoder: {width: 64, heads: 2},
                fusion: {name: cross_attention, layers: 1, heads: 2}}
        views: {masked: {masker: random_patches, ratio: 0.5}, mlm: {masker: mlm_tokens}}
        objectives:
          itc: {weight: 1.0}
          itm: {weight: 1.0}
          mlm: {weight: 1.0, text_view: mlm, fused: true}
          mim: {weight: 1.0, image_view: masked, decoder_width: 64, decoder_heads: 2}
    """)
    torch.manual_seed(0)
    return VLPModel(load_recipe(path), TOKENS)


def test_bert_init_for_text_encoder_fusion_and_heads(model):
    parts = {"text_encoder": model.text_encoder, "fusion": model.fusion,
             "itm": model.objectives["itm"], "mlm": model.objectives["mlm"]}
    for name, part in parts.items():
        for layer in part.modules():
            if isinstance(layer, (nn.Linear, nn.Embedding)) and layer.weight.numel() >= 4096:
                assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1), name
                assert abs(layer.weight.mean().item()) < 0.002, name
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), name
            if isinstance(layer, nn.LayerNorm):
                assert torch.equal(layer.weight, torch.ones_like(layer.weight)), name
    pad = model.text_encoder.token_embed.weight[TOKENS.pad]
    assert torch.equal(pad, torch.zeros_like(pad))


def test_mae_decoder_is_xavier_with_fixed_sincos_positions(model):
    mim = model.objectives["mim"]
    for layer in mim.modules():  # model.init: bert leaves the MAE decoder alone
        if isinstance(layer, nn.Linear):
            fan_out, fan_in = layer.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert layer.weight.abs().max().item() <= bound
            assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    expected = sincos_positions_2d(64, model.image_encoder.grid_size,
                                   model.image_encoder.num_prefix_tokens)
    assert torch.equal(mim.pos_embed[0], expected)
    assert not mim.pos_embed.requires_grad  # fixed: not trained, not in the optimiser
