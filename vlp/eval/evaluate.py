"""Held-out retrieval for a model, a built run, or a finished run folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlp.core.checkpoint import write_json
from vlp.core.model import VLPModel
from vlp.core.run import Run, load_run
from vlp.core.step import Step
from vlp.data.collate import Collator
from vlp.data.loader import eval_loader
from vlp.eval.retrieval import retrieval_metrics


@torch.no_grad()
def retrieval_eval(model: VLPModel, dataset: Dataset, collate: Collator, device: torch.device,
                   batch_size: int, ks: tuple[int, ...], num_workers: int = 0
                   ) -> dict[str, float]:
    """Embed every held-out pair with the full image and report; R@k both ways."""
    was_training = model.training
    model.eval()
    images, texts = [], []
    for batch in eval_loader(dataset, collate, batch_size, num_workers):
        step = Step(model, batch.to(device), torch.Generator(device))  # the training path
        images.append(step.image_embedding("image").float())
        texts.append(step.text_embedding("text").float())
    model.train(was_training)
    return retrieval_metrics(torch.cat(images), torch.cat(texts), ks)


def retrieval_of_run(run: Run) -> dict[str, float]:
    """Held-out retrieval of a built run, written to <run>/retrieval.json (the trainer's
    default evaluation, handed to `vlp.core.trainer.train` by the CLI)."""
    spec = run.recipe.spec
    metrics = retrieval_eval(run.model, run.data.val, run.collate, run.device,
                             spec.eval.batch_size, spec.eval.ks, spec.data.num_workers)
    write_json(run.run_dir / "retrieval.json", metrics)
    return metrics


def evaluate_run(run_dir: str | Path, checkpoint: str = "latest",
                 device: str = "auto") -> dict[str, float]:
    """Rebuild a run's model from its folder (recipe, tokenizer, checkpoint) and evaluate it."""
    return retrieval_of_run(load_run(Path(run_dir), checkpoint, device))
