"""Shared fixtures: tiny recipes that train in seconds, and plugin fixtures on sys.path."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

from vlp.plugins import registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))
# a fixed count for trainer.threads' default (otherwise it follows the machine's load), so
# runs compared bit for bit in one test use the same threads
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent

TINY_BASE = """
seed: 0
data: {source: demo, train_size: 64, val_size: 16, image_size: 32, channels: 1, max_text_len: 48}
model:
  image_encoder: {name: timm_vit, arch: vit_tiny_patch16_224, patch_size: 8, embed_dim: 32,
                  depth: 1, num_heads: 2}
  text_encoder: {name: bert, layers: 1, width: 32, heads: 2}
  embed_dim: 16
  tokenizer: {vocab_size: 300}
optim: {lr: 1.0e-3}
schedule: {warmup_steps: 2}
trainer: {max_steps: 4, batch_size: 8, log_every: 1}
eval: {batch_size: 16}
"""


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe YAML (dedented) to tmp_path and return its path; tiny base available."""
    (tmp_path / "tiny_base.yaml").write_text(TINY_BASE)

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write


@pytest.fixture
def plugin_dirs(monkeypatch: pytest.MonkeyPatch):
    """Put fixture distributions (folders under tests/fixtures) on sys.path for one test."""
    def add(*names: str) -> None:
        for name in names:
            monkeypatch.syspath_prepend(str(FIXTURES / name))
        registry.refresh()
    yield add
    registry.refresh()


@pytest.fixture
def tokenizer_path(tmp_path: Path) -> Path:
    """A tokenizer trained once on the tiny demo reports: one vocabulary for every run of a
    test (tokenizer training is not repeatable)."""
    from vlp.data.demo import demo_reports
    from vlp.data.tokenize import train_tokenizer

    path = tmp_path / "tokenizer.json"
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(path))
    return path
