"""Held-out retrieval for a model, a built run, or a finished run folder; and the recipe's
downstream tasks (or a task file's) on a built run or a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlp.core.checkpoint import write_json
from vlp.core.model import VLPModel
from vlp.core.progress import phase
from vlp.core.recipe import EvalSpec, Resolved, load_task_file
from vlp.core.run import Run, load_run
from vlp.core.step import Step
from vlp.data.collate import Collator
from vlp.data.loader import eval_loader, manifest_for_run
from vlp.data.sample import DataError
from vlp.eval.retrieval import retrieval_metrics
from vlp.eval.runner import run_tasks


@torch.no_grad()
def retrieval_eval(model: VLPModel, dataset: Dataset, collate: Collator, device: torch.device,
                   batch_size: int, ks: tuple[int, ...], num_workers: int = 0
                   ) -> dict[str, float]:
    """Embed every held-out pair with the full image and report; R@k both ways."""
    was_training = model.training
    model.eval()
    images, texts = [], []
    loader = eval_loader(dataset, collate, batch_size, num_workers)
    for batch in loader:
        step = Step(model, batch.to(device), torch.Generator(device))  # the training path
        images.append(step.image_embedding("image").float())
        texts.append(step.text_embedding("text").float())
    model.train(was_training)
    if not images:
        raise DataError(f"none of the {len(dataset)} held-out pairs could be read")
    metrics = retrieval_metrics(torch.cat(images), torch.cat(texts), ks)
    if loader.faults.rows:  # held-out pairs whose image could not be read are left out
        metrics["unreadable_pairs"] = len(loader.faults.rows)
    return metrics


def retrieval_of_run(run: Run, dataset: Dataset | None = None, out: str = "retrieval.json"
                     ) -> dict[str, float]:
    """Held-out retrieval of a built run (or on `dataset`), written to <run>/`out` (the
    trainer's default evaluation, handed to `vlp.core.trainer.train` by the CLI)."""
    spec = run.recipe.spec
    with phase("evaluation") as details:
        metrics = retrieval_eval(run.model, run.data.val if dataset is None else dataset,
                                 run.collate, run.device, spec.eval.batch_size, spec.eval.ks,
                                 spec.data.num_workers)
        details["n"] = f"{metrics['n']} pairs"
    write_json(run.run_dir / out, metrics)
    return metrics


def evaluate_run(run_dir: str | Path, checkpoint: str = "latest", device: str = "auto",
                 data: str | Path | None = None) -> dict[str, float]:
    """Rebuild a run's model from its folder (recipe, tokenizer, checkpoint) and evaluate it
    on its held-out split, or on the manifest `data` (written to retrieval_<name>.json)."""
    run = load_run(Path(run_dir), checkpoint, device)
    if data is None:
        return retrieval_of_run(run)
    dataset = manifest_for_run(run.recipe.spec.data, data)
    need = max(run.recipe.spec.eval.ks)
    if len(dataset) < need:
        raise DataError(f"{data}: {len(dataset)} usable pairs, fewer than max(eval.ks) ({need})")
    metrics = retrieval_of_run(run, dataset, out=f"retrieval_{Path(data).stem}.json")
    bad = {k: v for k, v in dataset.skipped.items() if v}
    return {**metrics, **({"skipped_rows": bad} if bad else {})}


def evaluate_tasks(run: Run, tasks: tuple[EvalSpec, dict[str, Resolved]] | None = None
                   ) -> dict[str, Any]:
    """The recipe's downstream tasks (or `tasks`, e.g. from a task file) on a built run,
    written to <run>/eval/; returns the summary (also <run>/eval/summary.json)."""
    spec, resolved = tasks or (run.recipe.spec.eval, run.recipe.tasks)
    return run_tasks(run, spec, resolved)


def evaluate_run_tasks(run_dir: str | Path, checkpoint: str = "latest", device: str = "auto",
                       tasks_file: str | Path | None = None) -> dict[str, Any]:
    """Rebuild a run from its folder and run its recipe's tasks, or those of `tasks_file`
    (validated before anything is built)."""
    tasks = load_task_file(tasks_file) if tasks_file is not None else None
    return evaluate_tasks(load_run(Path(run_dir), checkpoint, device), tasks)
