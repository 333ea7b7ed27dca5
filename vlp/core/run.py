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
from vlp.core.errors import Problem, RecipeError
from vlp.core.model import VLPModel
from vlp.core.progress import phase
from vlp.core.recipe import ManifestData, Recipe, load_recipe
from vlp.core.threads import apply_threads
from vlp.data.collate import Collator
from vlp.data.loader import DataSplits, build_datasets
from vlp.data.tokenize import (
    BERT_SPECIALS,
    SpecialTokens,
    TokenIds,
    load_tokenizer,
    train_tokenizer,
)
from vlp.files import write_text_atomic


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


def _tokenizer(recipe: Recipe, run_dir: Path, texts: list[str]
               ) -> tuple[Tokenizer, SpecialTokens]:
    """The run's saved tokenizer if present; else the text encoder's own (a pretrained folder's),
    the recipe's file, or one trained on the reports (rank 0), saved into the run folder."""
    saved, saved_special = run_dir / "tokenizer.json", run_dir / "special_tokens.json"
    spec = recipe.spec.model.tokenizer
    if not saved.is_file() and D.rank() == 0:
        te = recipe.text_encoder
        own = te.cls.pretrained_tokenizer(te.params)
        if own is not None:
            tok, special = own
            special.save(saved_special)
        elif spec.path:
            tok = load_tokenizer(spec.path)
        else:
            with phase("tokenizer training") as details:
                tok = train_tokenizer(texts, spec.kind, spec.vocab_size, spec.min_frequency,
                                      spec.lowercase)
                details["vocab"] = f"{tok.get_vocab_size()} tokens from {len(texts)} reports"
        tmp = saved.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(saved)
    if D.is_distributed():
        torch.distributed.barrier()
    special = SpecialTokens.load(saved_special) if saved_special.is_file() else BERT_SPECIALS
    return load_tokenizer(saved, special), special


@dataclass
class Run:
    recipe: Recipe
    run_dir: Path
    device: torch.device
    data: DataSplits
    tokenizer: Tokenizer
    special: SpecialTokens
    model: VLPModel

    @property
    def collate(self) -> Collator:
        return Collator(self.tokenizer, self.recipe.spec.data.max_text_len, self.special)


def check_held_out(recipe: Recipe, data: DataSplits) -> None:
    """A manifest's held-out set, known once rows are read, must cover max(eval.ks) and
    data.min_val_size, as the demo data's val_size is checked with the recipe."""
    spec = recipe.spec.data
    if not isinstance(spec, ManifestData):
        return
    key = "data.val_path" if spec.val_path else "data.val_fraction"
    n = len(data.val)
    for need, what in ((max(recipe.spec.eval.ks), "max(eval.ks)"),
                       (spec.min_val_size, "data.min_val_size")):
        if n < need:
            raise RecipeError([Problem(recipe.source, key, f"the held-out set has {n} usable "
                                       f"pairs, fewer than {what} ({need})")])


def build_run(recipe: Recipe, run_dir: Path, device: torch.device) -> Run:
    with phase("data set check") as details:
        data = build_datasets(recipe.spec.data)
        bad = sum(data.skipped.values())
        details["sizes"] = (f"{len(data.train)} training / {len(data.val)} held-out pairs, "
                            f"{bad} bad rows")
    check_held_out(recipe, data)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, special = _tokenizer(recipe, run_dir, data.train_texts)
    saved = run_dir / "recipe.yaml"
    if D.rank() == 0 and not saved.exists():  # a run keeps the recipe it started with
        write_text_atomic(saved, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    model = VLPModel(recipe, TokenIds.of(tokenizer, special)).to(device)
    return Run(recipe, run_dir, device, data, tokenizer, special, model)


def load_run(run_dir: Path, checkpoint: str = "latest", device: str = "auto") -> Run:
    """Rebuild a finished (or interrupted) run from its folder, with checkpoint weights."""
    recipe = load_recipe(run_dir / "recipe.yaml",  # the device asked for here, not the run's
                         [f"trainer.device={device}"] if device != "auto" else [])
    apply_threads(recipe.spec.trainer.threads)
    run = build_run(recipe, run_dir, resolve_device(device))
    load_weights(run.model, resolve_checkpoint(run_dir, checkpoint))
    return run
