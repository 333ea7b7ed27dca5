"""Shared helpers for benchmarks: build a recipe's model and one batch, time alternately."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import TokenIds, train_tokenizer

REPO = Path(__file__).resolve().parent.parent


def model_and_batch(recipe_file: str, overrides: list[str] = ()):
    recipe = load_recipe(REPO / recipe_file, overrides)
    spec = recipe.spec
    tok = train_tokenizer(demo_reports(1000), vocab_size=spec.model.tokenizer.vocab_size)
    torch.manual_seed(0)
    model = VLPModel(recipe, TokenIds.of(tok))
    data = DemoDataset(spec.trainer.batch_size, spec.data.image_size, spec.data.seed,
                       spec.data.channels)
    batch = Collator(tok, spec.data.max_text_len)([data[i] for i in range(len(data))])
    return recipe, model, batch


def time_alternating(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2
                     ) -> dict[str, float]:
    """Median seconds per call, the candidates interleaved so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
