"""Tiny recipes, built identically in a test and in its DDP workers; each rank collates only
its own share of the step's batch, as `vlp.data.loader` does in real training."""

from __future__ import annotations

from pathlib import Path

import torch

from vlp.core.model import VLPModel
from vlp.core.recipe import Recipe, load_recipe
from vlp.data.batch import Batch
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.loader import StepBatchSampler
from vlp.data.tokenize import TokenIds, load_tokenizer, train_tokenizer

GLOBAL_BATCH = 8
BASE = """
data: {source: demo, train_size: 32, val_size: 16, image_size: 32, max_text_len: 128}
model:
  image_encoder: {name: timm_vit, arch: vit_tiny_patch16_224, patch_size: 8, embed_dim: 32,
                  depth: 1, num_heads: 2}
  text_encoder: {name: bert, layers: 1, width: 32, heads: 2}
  fusion: {name: cross_attention, layers: 1, heads: 2}
  embed_dim: 16
trainer: {max_steps: 1, batch_size: 8}
"""
RECIPES = {
    "itc": BASE + "objectives: {itc: {weight: 1.0}}\n",
    # GLA's local part and ITM's candidates gather token tensors across ranks
    "gla_itm": BASE + "objectives: {gla: {weight: 1.0, local: filip},\n"
                      "             itm: {weight: 1.0, negatives: hard, gather: true}}\n",
    "gla": BASE + "objectives: {gla: {weight: 1.0, local: filip}}\n",
}


def build(folder: Path, name: str) -> tuple[Recipe, VLPModel, Collator, DemoDataset]:
    """The recipe `name`, its model (seeded), a collator and the training set."""
    path = folder / f"{name}.yaml"  # written by the test before the workers start
    if not path.exists():
        path.write_text(RECIPES[name])
    recipe = load_recipe(path)
    saved = folder / "tokenizer.json"  # trained once, shared: training is not reproducible
    if not saved.exists():
        train_tokenizer(demo_reports(32), vocab_size=500).save(str(saved))
    tokenizer = load_tokenizer(saved)
    torch.manual_seed(0)
    model = VLPModel(recipe, TokenIds.of(tokenizer))
    data = recipe.spec.data
    return (recipe, model, Collator(tokenizer, data.max_text_len),
            DemoDataset(data.train_size, image_size=data.image_size))


def share(recipe: Recipe, collate: Collator, dataset: DemoDataset, rank: int, world: int,
          step: int = 0) -> Batch:
    """This rank's part of step `step`'s global batch, collated on its own (own padding)."""
    sampler = StepBatchSampler(len(dataset), recipe.spec.trainer.batch_size, recipe.spec.seed,
                               step, step + 1, rank, world)
    return collate([dataset[i] for i in sampler.indices(step)])
