"""A tiny ITC model and a fixed batch, built identically in the test and in DDP workers."""

from __future__ import annotations

from pathlib import Path

import torch

from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import TokenIds, load_tokenizer, train_tokenizer

GLOBAL_BATCH = 8
RECIPE = """
data: {source: demo, train_size: 32, val_size: 16, image_size: 32, max_text_len: 40}
model:
  image_encoder: {name: timm_vit, arch: vit_tiny_patch16_224, patch_size: 8, embed_dim: 32,
                  depth: 1, num_heads: 2}
  text_encoder: {name: bert, layers: 1, width: 32, heads: 2}
  embed_dim: 16
objectives: {itc: {weight: 1.0}}
trainer: {max_steps: 1, batch_size: 8}
"""


def build_model_and_batch(folder: Path):
    path = folder / "itc_recipe.yaml"  # written by the test before the workers start
    if not path.exists():
        path.write_text(RECIPE)
    recipe = load_recipe(path)
    saved = folder / "tokenizer.json"  # trained once, shared: training is not reproducible
    if not saved.exists():
        train_tokenizer(demo_reports(32), vocab_size=200).save(str(saved))
    tok = load_tokenizer(saved)
    torch.manual_seed(0)
    model = VLPModel(recipe, TokenIds.of(tok))
    data = DemoDataset(GLOBAL_BATCH, image_size=32)
    batch = Collator(tok, 40)([data[i] for i in range(GLOBAL_BATCH)])
    return model, batch, torch.Generator().manual_seed(0)
