"""What every downstream task is: a plugin with validated Params that runs on a trained model.

A task reads frozen features from the shared `FrozenFeatures` cache (each split encoded once
for all tasks) or, if it fine-tunes, trains a copy of the model through its own encoders. It
returns metrics beside their baselines and one prediction row per evaluated sample.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vlp.core.model import VLPModel
from vlp.data.batch import Batch
from vlp.data.collate import Collator
from vlp.eval.context import TaskContext, TaskResult
from vlp.plugins.base import Params, Plugin

__all__ = ["Task", "TaskContext", "TaskResult", "batches", "trainable_copy"]


class Task(Plugin):
    """Base class of downstream tasks; `requires` lists optional modules the task imports."""

    requires: ClassVar[tuple[str, ...]] = ("sklearn",)

    def __init__(self, params: Params, name: str):
        self.params, self.name = params, name

    def run(self, ctx: TaskContext) -> TaskResult:  # pragma: no cover - abstract
        raise NotImplementedError


def trainable_copy(model: VLPModel) -> VLPModel:
    """A deep copy of the encoders, projections and fusion (not the objectives' heads), for
    fine-tuning without touching the pre-trained weights other tasks read."""
    objectives = model.objectives
    model.objectives = nn.ModuleDict()
    try:
        clone = copy.deepcopy(model)
    finally:
        model.objectives = objectives
    clone.train()
    return clone


def batches(dataset: Dataset, order: Tensor, batch_size: int, collate: Collator,
            device: torch.device) -> Iterator[tuple[Batch, Tensor]]:
    """(batch on the device, the dataset rows it holds) for rows `order`, in that order."""
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield collate([dataset[int(i)] for i in rows]).to(device), rows
