"""What a downstream task is given (TaskContext) and what it returns (TaskResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from vlp.core.model import VLPModel
from vlp.data.collate import Collator
from vlp.eval.features import FrozenFeatures
from vlp.eval.metrics import Metric


@dataclass
class TaskContext:
    """What a task may use: the trained model, its collate, the feature cache, data settings."""

    model: VLPModel
    collate: Collator
    device: torch.device
    features: FrozenFeatures
    image_size: int
    channels: int
    seed: int  # demo task data seed (the recipe's data seed)
    heldout: Dataset  # the pre-training held-out pairs (retrieval)
    ks: tuple[int, ...] = (1, 5, 10)
    num_workers: int = 0


@dataclass
class TaskResult:
    """Metrics (each beside its baseline), per-sample predictions and data accounting."""

    metrics: dict[str, Metric]
    n: int  # evaluated samples
    predictions: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # skipped/bad rows, notes
