"""A run folder: the resolved recipe, the tokenizer, the model and the data, built once.

Training and `vlp eval` both start from here, so an evaluated run is rebuilt exactly as trained
(evaluation itself lives above core, in vlp.eval, and is handed to the trainer).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer

from vlp.core import distributed as D
from vlp.core.checkpoint import load_weights, resolve_checkpoint
from vlp.core.model import VLPModel
from vlp.core.recipe import Recipe, load_recipe
from vlp.data.collate import Collator
from vlp.data.loader import DataSplits, build_datasets
from vlp.data.tokenize import TokenIds, load_tokenizer, train_tokenizer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_run_dir(recipe: Recipe) -> Path:
    """runs/<recipe>-<time>/ under the working directory (same on every rank)."""
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if D.is_distributed():
        torch.distributed.broadcast_object_list(stamp, src=0)
    return Path("runs") / f"{recipe.name}-{stamp[0]}"


RUN_STAMP = re.compile(r"-\d{8}-\d{6}$")


def latest_run_dir(recipe: Recipe) -> Path:
    """The newest runs/<recipe>-<YYYYmmdd-HHMMSS> of exactly this recipe name."""
    runs = sorted(p for p in Path("runs").glob(f"{recipe.name}-*")
                  if RUN_STAMP.sub("", p.name) == recipe.name)
    if not runs:
        raise FileNotFoundError(f"no earlier run of '{recipe.name}' under runs/ to resume; "
                                "pass --out RUN_DIR")
    return runs[-1]


def _tokenizer(recipe: Recipe, run_dir: Path, texts: list[str]) -> Tokenizer:
    """The run's tokenizer.json if present, else the recipe's file, else trained (rank 0)."""
    saved = run_dir / "tokenizer.json"
    spec = recipe.spec.model.tokenizer
    if not saved.is_file() and D.rank() == 0:
        tok = (load_tokenizer(spec.path) if spec.path else
               train_tokenizer(texts, spec.kind, spec.vocab_size, spec.min_frequency,
                               spec.lowercase))
        tmp = saved.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(saved)
    if D.is_distributed():
        torch.distributed.barrier()
    return load_tokenizer(saved)


@dataclass
class Run:
    recipe: Recipe
    run_dir: Path
    device: torch.device
    data: DataSplits
    tokenizer: Tokenizer
    model: VLPModel

    @property
    def collate(self) -> Collator:
        return Collator(self.tokenizer, self.recipe.spec.data.max_text_len)


def build_run(recipe: Recipe, run_dir: Path, device: torch.device) -> Run:
    run_dir.mkdir(parents=True, exist_ok=True)
    data = build_datasets(recipe.spec.data)
    tokenizer = _tokenizer(recipe, run_dir, data.train_texts)
    saved = run_dir / "recipe.yaml"
    if D.rank() == 0 and not saved.exists():  # a run keeps the recipe it started with
        saved.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    model = VLPModel(recipe, TokenIds.of(tokenizer)).to(device)
    return Run(recipe, run_dir, device, data, tokenizer, model)


def load_run(run_dir: Path, checkpoint: str = "latest", device: str = "auto") -> Run:
    """Rebuild a finished (or interrupted) run from its folder, with checkpoint weights."""
    recipe = load_recipe(run_dir / "recipe.yaml",  # the device asked for here, not the run's
                         [f"trainer.device={device}"] if device != "auto" else [])
    run = build_run(recipe, run_dir, resolve_device(device))
    load_weights(run.model, resolve_checkpoint(run_dir, checkpoint))
    return run
