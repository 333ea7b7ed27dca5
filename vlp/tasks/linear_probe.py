"""Linear probe: one linear layer on frozen, cached image features, at several label fractions."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from vlp.eval.metrics import Metric, multi_label_metrics, single_label_metrics
from vlp.plugins.base import Params
from vlp.tasks.base import Task, TaskContext, TaskResult
from vlp.tasks.data import (
    ClassData,
    ClassSplit,
    DemoClassData,
    class_splits,
    merged_bad_rows,
)
from vlp.tasks.heads import (
    classification_loss,
    fit_with_early_stopping,
    label_fraction,
    scores_of,
)
from vlp.tasks.zero_shot import prediction_rows


def _fraction_tag(fraction: float) -> str:
    return f"@{fraction * 100:g}%"


def train_linear_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor,
                       num_outputs: int, multi_label: bool, lr: float = 1e-2,
                       weight_decay: float = 1e-4, epochs: int = 200, patience: int = 20,
                       batch_size: int = 256, seed: int = 0) -> tuple[nn.Module, dict]:
    """A Linear layer on standardised features (training-subset mean and std), trained with
    AdamW and early stopping on the validation loss; returns (standardise + linear, log)."""
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp(min=1e-6)
    torch.manual_seed(seed)
    linear = nn.Linear(train_x.shape[1], num_outputs)
    model = nn.Sequential(_Standardise(mean, std), linear)
    generator = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(train_x.shape[0], generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield train_x[rows], train_y[rows]

    @torch.no_grad()
    def val_loss() -> float:
        return float(classification_loss(model(val_x), val_y, multi_label))

    log = fit_with_early_stopping(model, linear.parameters(), batches, val_loss, epochs,
                                  patience, lr, weight_decay, multi_label, model)
    return model, log


class _Standardise(nn.Module):
    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def split_metrics(split: ClassSplit, scores: np.ndarray, train_labels: np.ndarray,
                  suffix: str) -> dict[str, Metric]:
    if split.multi_label:
        return multi_label_metrics(split.labels, scores, split.classes, suffix)
    return single_label_metrics(split.labels, scores, train_labels, len(split.classes), suffix)


class LinearProbe(Task):
    """Linear probe on frozen image features, features computed once per split and cached."""

    class Params(Params):
        data: ClassData = DemoClassData()
        """Classification data: the demo findings or manifest files (source: demo | manifest)."""
        fractions: list[float] = Field([1.0], min_length=1)  # of the training split
        """Label fractions of the training split to train on, e.g. [0.01, 0.1, 1.0]."""
        features: Literal["pooled", "embedding"] = "pooled"  # encoder output or projection
        """Frozen features: the pooled encoder output or its shared projection."""
        lr: float = Field(1e-2, gt=0)  # on standardised features
        """AdamW learning rate of the linear layer (on standardised features)."""
        weight_decay: float = Field(1e-4, ge=0)
        """AdamW weight decay of the linear layer."""
        epochs: int = Field(200, gt=0)
        """Passes over the cached training features at most."""
        patience: int = Field(20, gt=0)
        """Epochs without a better validation score before stopping early."""
        batch_size: int = Field(256, gt=0)
        """Feature rows per step."""
        seed: int = 0
        """Seed of the label-fraction draw and the batch order."""

        @field_validator("fractions")
        @classmethod
        def _in_unit_interval(cls, values: list[float]) -> list[float]:
            if any(not 0 < f <= 1 for f in values):
                raise ValueError(f"fractions must be in (0, 1], got {values}")
            return values

    def run(self, ctx: TaskContext) -> TaskResult:
        p = self.params
        splits = class_splits(p.data, ("train", "val", "test"), ctx.image_size, ctx.channels,
                              ctx.seed)
        feats = {name: getattr(ctx.features.images(s.key, s.images), p.features)
                 for name, s in splits.items()}
        labels = {name: torch.from_numpy(s.labels) for name, s in splits.items()}
        train, test = splits["train"], splits["test"]
        outputs = len(train.classes)  # one logit per label or per class
        metrics: dict[str, Metric] = {}
        rows, logs = [], {}
        for fraction in p.fractions:
            keep = torch.from_numpy(label_fraction(len(train.ids), fraction, p.seed))
            model, log = train_linear_probe(
                feats["train"][keep], labels["train"][keep], feats["val"], labels["val"],
                outputs, train.multi_label, p.lr, p.weight_decay, p.epochs, p.patience,
                p.batch_size, p.seed)
            with torch.no_grad():
                scores = scores_of(model(feats["test"]), train.multi_label).numpy()
            tag = _fraction_tag(fraction)
            metrics.update(split_metrics(test, scores, train.labels[keep.numpy()], tag))
            rows += prediction_rows(test, scores, extra={"fraction": fraction})
            logs[tag] = {**log, "train_samples": int(len(keep))}
        return TaskResult(metrics, len(test.ids), rows,
                          {**merged_bad_rows(splits.values()).to_dict(), "training": logs})
