"""Zero-shot classification from class prompts, with prompt ensembling (CLIP, CheXzero)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from vlp.eval.metrics import multi_label_metrics, single_label_metrics
from vlp.plugins.base import Params
from vlp.tasks.base import Task, TaskContext, TaskResult
from vlp.tasks.data import ClassData, ClassSplit, DemoClassData, class_splits


def ensemble(prompt_embeddings: Tensor) -> Tensor:
    """One class embedding from its prompts: mean of the L2-normalised rows, renormalised."""
    return F.normalize(F.normalize(prompt_embeddings, dim=-1).mean(0), dim=-1)


def class_scores(image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """(N, C) cosine similarity of each image to each class embedding."""
    return F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).T


def positive_probability(image_emb: Tensor, positive: Tensor, negative: Tensor,
                         scale: float) -> Tensor:
    """(N,) p(label) = softmax over (positive, negative) similarities, scaled (CheXzero)."""
    logits = scale * class_scores(image_emb, torch.stack([positive, negative]))
    return logits.softmax(dim=-1)[:, 0]


class PromptPair(Params):
    """Multi-label prompts of one label: what a positive and a negative report would say."""

    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


def prediction_rows(split: ClassSplit, scores: np.ndarray, prefix: str = "",
                    extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One CSV row per sample: id, truth and score per class (and the argmax if single)."""
    rows = []
    for i, sample_id in enumerate(split.ids):
        row: dict[str, Any] = {"id": sample_id, **(extra or {})}
        if split.multi_label:
            for j, label in enumerate(split.classes):
                truth = split.labels[i, j]
                row[f"truth/{label}"] = "" if np.isnan(truth) else int(truth)
                row[f"{prefix}score/{label}"] = round(float(scores[i, j]), 6)
        else:
            row["truth"] = split.classes[int(split.labels[i])]
            row["prediction"] = split.classes[int(scores[i].argmax())]
            for j, label in enumerate(split.classes):
                row[f"score/{label}"] = round(float(scores[i, j]), 6)
        rows.append(row)
    return rows


class ZeroShot(Task):
    """Zero-shot classification: image embeddings against ensembled class-prompt embeddings."""

    class Params(Params):
        data: ClassData = DemoClassData()
        """Classification data: the demo findings or manifest files (source: demo | manifest)."""
        prompts: dict[str, list[str] | PromptPair]
        """Single-label: class -> prompts; multi-label: label -> positive and negative prompts."""
        scale: float = Field(100.0, gt=0)  # multi-label softmax scale (1 / temperature)
        """Multi-label softmax scale over positive vs negative prompts (1 / temperature)."""

        @model_validator(mode="after")
        def _prompts_match_classes(self):
            names = self.data.class_names
            if set(self.prompts) != set(names):
                missing = sorted(set(names) - set(self.prompts))
                extra = sorted(set(self.prompts) - set(names))
                raise ValueError(f"prompts must name every class exactly: missing {missing}, "
                                 f"unknown {extra} (classes: {names})")
            want = PromptPair if self.data.multi_label else list
            kind = ("{positive: [...], negative: [...]}" if self.data.multi_label
                    else "a list of prompts")
            for name, value in self.prompts.items():
                if not isinstance(value, want) or (want is list and not value):
                    raise ValueError(f"prompts.{name}: expected {kind} for a "
                                     f"{'multi' if self.data.multi_label else 'single'}-label "
                                     "task")
            return self

    def run(self, ctx: TaskContext) -> TaskResult:
        split = class_splits(self.params.data, ("test",), ctx.image_size, ctx.channels,
                             ctx.seed)["test"]
        image = ctx.features.images(split.key, split.images).embedding
        classes = split.classes
        if split.multi_label:
            scores = torch.stack([positive_probability(
                image, ensemble(ctx.features.texts(self.params.prompts[c].positive)),
                ensemble(ctx.features.texts(self.params.prompts[c].negative)),
                self.params.scale) for c in classes], dim=1).numpy()
            metrics = multi_label_metrics(split.labels, scores, classes)
        else:
            class_emb = torch.stack([ensemble(ctx.features.texts(self.params.prompts[c]))
                                     for c in classes])
            scores = class_scores(image, class_emb).numpy()
            metrics = single_label_metrics(split.labels, scores, split.labels, len(classes))
        return TaskResult(metrics, len(split.ids), prediction_rows(split, scores),
                          {**split.bad.to_dict(),
                           "note": "single-label majority baseline: the test set's majority "
                                   "class (zero-shot has no training split)"
                           if not split.multi_label else ""})
