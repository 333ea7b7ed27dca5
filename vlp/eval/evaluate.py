"""Evaluation of a built run or a finished run folder: the recipe's downstream tasks (or a task
file's), and plain held-out retrieval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlp.core.checkpoint import write_json
from vlp.core.model import VLPModel
from vlp.core.recipe import EvalSpec, Resolved, load_task_file
from vlp.core.run import Run, load_run
from vlp.data.collate import Collator
from vlp.eval.features import FrozenFeatures
from vlp.eval.retrieval import retrieval_metrics
from vlp.eval.runner import run_tasks


def retrieval_eval(model: VLPModel, dataset: Dataset, collate: Collator, device: torch.device,
                   batch_size: int, ks: tuple[int, ...], num_workers: int = 0
                   ) -> dict[str, float]:
    """Embed every held-out pair with the full image and report; R@k both ways."""
    features = FrozenFeatures(model, collate, device, batch_size, num_workers)
    encoded = features.images("heldout", dataset, with_text=True)
    assert encoded.text_embedding is not None
    return retrieval_metrics(encoded.embedding, encoded.text_embedding, ks)


def retrieval_of_run(run: Run) -> dict[str, float]:
    """Held-out retrieval of a built run alone, written to <run>/retrieval.json (a light
    evaluator for `vlp.core.trainer.train`; the CLI runs `evaluate_tasks`)."""
    spec = run.recipe.spec
    metrics = retrieval_eval(run.model, run.data.val, run.collate, run.device,
                             spec.eval.batch_size, spec.eval.ks, spec.data.num_workers)
    write_json(run.run_dir / "retrieval.json", metrics)
    return metrics


def evaluate_tasks(run: Run, tasks: tuple[EvalSpec, dict[str, Resolved]] | None = None
                   ) -> dict[str, Any]:
    """The recipe's downstream tasks (or `tasks`, e.g. from a task file) on a built run,
    written to <run>/eval/; returns the summary (also <run>/eval/summary.json)."""
    spec, resolved = tasks or (run.recipe.spec.eval, run.recipe.tasks)
    return run_tasks(run, spec, resolved)


def evaluate_run(run_dir: str | Path, checkpoint: str = "latest", device: str = "auto",
                 tasks_file: str | Path | None = None) -> dict[str, Any]:
    """Rebuild a run's model from its folder (recipe, tokenizer, checkpoint) and run its
    recipe's tasks, or those of `tasks_file` (validated before anything is built)."""
    tasks = load_task_file(tasks_file) if tasks_file is not None else None
    return evaluate_tasks(load_run(Path(run_dir), checkpoint, device), tasks)
