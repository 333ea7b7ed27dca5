"""Parameters a recipe would leave untrained are reported before training, not by DDP."""

from __future__ import annotations

import pytest

from vlp.core.errors import RecipeError
from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.data.tokenize import TokenIds

TOKENS = TokenIds(vocab_size=300, pad=0, unk=1, cls=2, sep=3, mask=4)
FUSION = "model: {fusion: {name: cross_attention, layers: 1, heads: 2, bidirectional: true}}"


def test_hard_negatives_from_projections_nothing_trains_are_a_recipe_error(write_recipe):
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        {FUSION}
        objectives: {{itm: {{weight: 1.0, negatives: hard}}}}
    """)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert problem.key == "objectives.itm" and "negatives: random" in problem.reason
    # trained by ITC, or not needed with random negatives: valid
    load_recipe(path, ["objectives.itc.weight=1.0"])
    random = load_recipe(path, ["objectives.itm.negatives=random"])
    model = VLPModel(random, TOKENS)  # nothing trains the projections: kept fixed
    assert not model.image_proj.weight.requires_grad
    assert not model.text_proj.weight.requires_grad


def test_untrained_fusion_layers_are_named_before_the_first_step(write_recipe, tmp_path):
    # MIM reads only the image stream of the fusion: its text stream is never trained
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        {FUSION}
        views: {{masked: {{masker: random_patches, ratio: 0.5}}}}
        objectives:
          mim: {{weight: 1.0, image_view: masked, source: fusion, decoder_width: 16,
                decoder_depth: 1, decoder_heads: 2}}
        trainer: {{max_steps: 1}}
    """)
    message = r"fusion\.text_blocks\.0\..*trainer\.find_unused_parameters: true"
    with pytest.raises(RecipeError, match=message):
        train(load_recipe(path), out=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    accepted = train(load_recipe(path, ["trainer.find_unused_parameters=true"]),
                     out=tmp_path / "accepted")
    assert accepted.steps == 1


def test_a_part_weighted_zero_builds_nothing_untrained(write_recipe, tmp_path):
    path = write_recipe("""
        _base_: tiny_base.yaml
        objectives: {gla: {weight: 1.0, local_weight: 0.0}}
        trainer: {max_steps: 1}
    """)
    model = VLPModel(load_recipe(path), TOKENS)
    assert not hasattr(model.objectives["gla"], "word_proj")
    assert train(load_recipe(path), out=tmp_path / "run").steps == 1
