"""Held-out image-text retrieval for a model, or for a finished run folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlp.core.model import VLPModel
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


def evaluate_run(run_dir: str | Path, checkpoint: str = "latest",
                 device: str = "auto") -> dict[str, float]:
    """Rebuild a run's model from its folder (recipe, tokenizer, checkpoint) and evaluate it."""
    from vlp.core.run import load_run

    run = load_run(Path(run_dir), checkpoint, device)
    return run.evaluate()
