"""Held-out retrieval for a model, and re-running a finished run folder's downstream tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlp.core.model import VLPModel
from vlp.data.collate import Collator
from vlp.eval.features import FrozenFeatures
from vlp.eval.retrieval import retrieval_metrics


def retrieval_eval(model: VLPModel, dataset: Dataset, collate: Collator, device: torch.device,
                   batch_size: int, ks: tuple[int, ...], num_workers: int = 0
                   ) -> dict[str, float]:
    """Embed every held-out pair with the full image and report; R@k both ways."""
    features = FrozenFeatures(model, collate, device, batch_size, num_workers)
    encoded = features.images("heldout", dataset, with_text=True)
    assert encoded.text_embedding is not None
    return retrieval_metrics(encoded.embedding, encoded.text_embedding, ks)


def evaluate_run(run_dir: str | Path, checkpoint: str = "latest", device: str = "auto",
                 tasks_file: str | Path | None = None) -> dict[str, Any]:
    """Rebuild a run's model from its folder (recipe, tokenizer, checkpoint) and run its
    recipe's tasks, or those of `tasks_file`; results go to <run>/eval/."""
    from vlp.core.recipe import load_task_file
    from vlp.core.run import load_run

    tasks = load_task_file(tasks_file) if tasks_file is not None else None  # before building
    run = load_run(Path(run_dir), checkpoint, device)
    return run.evaluate(tasks)
