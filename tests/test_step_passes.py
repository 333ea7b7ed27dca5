"""The per-step cache: each encoder runs once per distinct view; weight 0 removes its passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import TokenIds, train_tokenizer

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(demo_reports(64), vocab_size=300)


def passes(recipe_path: Path, tokenizer, overrides: list[str] = ()) -> dict[str, int]:
    recipe = load_recipe(recipe_path, overrides)
    torch.manual_seed(0)
    model = VLPModel(recipe, TokenIds.of(tokenizer))
    size = recipe.spec.data.image_size
    data = DemoDataset(8, image_size=size)
    batch = Collator(tokenizer, recipe.spec.data.max_text_len)([data[i] for i in range(8)])
    loss, metrics, counts = model(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    return counts


def test_two_objectives_on_one_view_share_the_encoder_pass(write_recipe, tokenizer):
    path = write_recipe("""
        _base_: tiny_base.yaml
        views: {masked: {masker: random_patches, ratio: 0.5}}
        objectives:
          itc: {weight: 1.0}
          itc_again: {use: itc, weight: 0.5, init_temperature: 0.1}
          itc_masked: {use: itc, weight: 1.0, image_view: masked}
    """)
    counts = passes(path, tokenizer)
    assert counts["passes/image_encoder/image"] == 1
    assert counts["passes/image_encoder/masked"] == 1
    assert counts["passes/image_encoder"] == 2
    assert counts["passes/text_encoder"] == 1
    assert counts["passes/masker/masked"] == 1
    off = passes(path, tokenizer, ["objectives.itc_masked.weight=0"])
    assert off["passes/image_encoder"] == 1 and "passes/masker/masked" not in off


def small() -> list[str]:
    """Overrides that shrink the demo model so the real recipe runs in a test."""
    return ["data.image_size=32", "data.max_text_len=48",
            "model.image_encoder.embed_dim=32", "model.image_encoder.depth=1",
            "model.text_encoder.width=32", "model.text_encoder.layers=1",
            "model.fusion.layers=1", "objectives.simsiam.dim=32", "objectives.simsiam.pred_dim=8"]


def test_uni_mlip_recipe_encodes_each_view_once(tokenizer):
    path = REPO / "recipes" / "uni_mlip.yaml"
    counts = passes(path, tokenizer, small())
    for view in ("image", "image_masked", "image_aug1", "image_aug2"):
        assert counts[f"passes/image_encoder/{view}"] == 1
    assert counts["passes/image_encoder"] == 4
    assert counts["passes/text_encoder/text"] == counts["passes/text_encoder/text_mlm"] == 1
    assert counts["passes/text_encoder"] == 2
    assert counts["passes/fusion/image+text"] == 1  # ITM positives
    assert counts["passes/fusion/image+text_mlm"] == 1  # fused MLM
    assert counts["passes/fusion"] == 4  # + ITM's two negative pairings


@pytest.mark.parametrize("off,gone", [
    ("simsiam", ["passes/image_encoder/image_aug1", "passes/image_encoder/image_aug2",
                 "passes/masker/image_aug1"]),
    ("itm", ["passes/fusion/image+text", "passes/fusion/itm_negative_texts"]),
    ("itc_masked", ["passes/image_encoder/image_masked", "passes/masker/image_masked"]),
])
def test_weight_zero_removes_only_its_passes(tokenizer, off, gone):
    path = REPO / "recipes" / "uni_mlip.yaml"
    full = passes(path, tokenizer, small())
    less = passes(path, tokenizer, [*small(), f"objectives.{off}.weight=0"])
    for key in gone:
        assert key in full and key not in less
    assert set(less) < set(full)


def test_a_views_masks_do_not_depend_on_other_views(write_recipe, tokenizer):
    """Each view draws from its own stream, so switching an objective off (its view never
    drawn) leaves the other views' masks unchanged: ablations compare like with like."""
    from vlp.core.step import Step

    recipe = load_recipe(write_recipe("""
        _base_: tiny_base.yaml
        views:
          a: {masker: random_patches, ratio: 0.5}
          b: {masker: block_patches, ratio: 0.5}
        objectives:
          itc_a: {use: itc, weight: 1.0, image_view: a}
          itc_b: {use: itc, weight: 1.0, image_view: b}
    """))
    model = VLPModel(recipe, TokenIds.of(tokenizer))
    data = DemoDataset(8, image_size=32)
    batch = Collator(tokenizer, 48)([data[i] for i in range(8)])
    both = Step(model, batch, torch.Generator().manual_seed(3))
    both.image_view("b")
    only_a = Step(model, batch, torch.Generator().manual_seed(3))
    assert torch.equal(both.image_view("a").ids_keep, only_a.image_view("a").ids_keep)
    other_step = Step(model, batch, torch.Generator().manual_seed(4))
    assert not torch.equal(other_step.image_view("a").ids_keep, only_a.image_view("a").ids_keep)
