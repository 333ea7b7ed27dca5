"""Optimiser parameter groups from the recipe: per-module lr scales and weight decay."""

from __future__ import annotations

import pytest

from vlp.core.errors import RecipeError
from vlp.core.model import VLPModel
from vlp.core.optim import build_optimizer, build_scheduler
from vlp.core.recipe import load_recipe
from vlp.data.tokenize import TokenIds

TOKENS = TokenIds(vocab_size=300, pad=0, unk=1, cls=2, sep=3, mask=4)


def settings_of(optimizer) -> dict[int, tuple[float, float]]:
    """id(parameter) -> (lr, weight decay) as the optimiser holds them."""
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
            for p in g["params"]}


def test_groups_scale_lr_and_set_weight_decay_first_match_wins(write_recipe):
    # M3AE: heads and fusion at 5x the encoders' rate; positions exempt from decay
    path = write_recipe("""
        _base_: tiny_base.yaml
        model: {fusion: {name: cross_attention, layers: 1, heads: 2}}
        objectives: {itc: {weight: 1.0}, itm: {weight: 1.0}}
        optim:
          lr: 1.0e-3
          weight_decay: 0.05
          groups:
            - {match: "text_encoder.pos_embed", lr_scale: 2.0}
            - {match: "fusion.*", lr_scale: 5.0}
            - {match: "objectives.*", lr_scale: 5.0, weight_decay: 0.0}
            - {match: "*.cls_token", weight_decay: 0.01}
    """)
    recipe = load_recipe(path)
    model = VLPModel(recipe, TOKENS)
    optimizer = build_optimizer(model, recipe.spec.optim)
    got = settings_of(optimizer)
    params = dict(model.named_parameters())
    assert got[id(params["text_encoder.pos_embed"])] == (pytest.approx(2e-3), 0.0)  # 1-d rule
    assert got[id(params["fusion.text_blocks.0.attn.q.weight"])] == (pytest.approx(5e-3), 0.05)
    assert got[id(params["fusion.text_blocks.0.attn.q.bias"])] == (pytest.approx(5e-3), 0.0)
    assert got[id(params["objectives.itm.head.weight"])] == (pytest.approx(5e-3), 0.0)
    assert got[id(params["image_encoder.vit.cls_token"])] == (pytest.approx(1e-3), 0.01)
    assert got[id(params["text_encoder.blocks.0.attn.q.weight"])] == (pytest.approx(1e-3), 0.05)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        p.requires_grad for p in model.parameters())
    # the schedule multiplies every group's own rate: the ratios hold at every step
    scheduler = build_scheduler(optimizer, 10, recipe.spec.schedule)
    optimizer.step()
    scheduler.step()
    lrs = settings_of(optimizer)
    base = lrs[id(params["text_encoder.blocks.0.attn.q.weight"])][0]
    assert lrs[id(params["fusion.text_blocks.0.attn.q.weight"])][0] == pytest.approx(5 * base)


def test_a_group_matching_nothing_is_a_recipe_error(write_recipe):
    path = write_recipe("""
        _base_: tiny_base.yaml
        objectives: {itc: {weight: 1.0}}
        optim: {groups: [{match: "fusion.*", lr_scale: 5.0}]}
    """)
    recipe = load_recipe(path)
    with pytest.raises(RecipeError) as caught:
        build_optimizer(VLPModel(recipe, TOKENS), recipe.spec.optim, recipe.where)
    (problem,) = caught.value.problems
    assert problem.key == "optim.groups.0.match" and "matches no trainable parameter" in str(
        problem)
