"""Fine-tuned classification: the image encoder trained end to end with a linear head."""

from __future__ import annotations

import re
from collections import Counter

import torch
from pydantic import Field
from torch import nn

from vlp.core.step import Step
from vlp.eval.metrics import Metric
from vlp.plugins.base import Params
from vlp.tasks.base import Task, TaskContext, TaskResult, batches, trainable_copy
from vlp.tasks.data import ClassData, DemoClassData, class_splits, merged_bad_rows
from vlp.tasks.heads import classification_loss, fit_with_early_stopping, scores_of
from vlp.tasks.linear_probe import split_metrics
from vlp.tasks.zero_shot import prediction_rows

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_decay_groups(encoder: nn.Module, head: nn.Module, lr: float, weight_decay: float,
                       decay: float | None) -> list[dict]:
    """AdamW groups with layer-wise learning-rate decay (BEiT/MAE): with L blocks, block i gets
    lr * decay**(L - i), the embeddings before block 0 lr * decay**(L + 1), the final norm and
    the head lr. Encoders without `blocks.N` parameters, or decay None: every parameter at lr.
    Norms and biases are not decayed."""
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    ids = [int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))]
    depth = max(ids) + 1 if ids else 0
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in named:
        match = _BLOCK.search(name)
        if decay is None or not depth:
            layer = depth + 1
        elif match:
            layer = int(match.group(1)) + 1
        else:  # before the blocks (patch/position embeddings, prefix tokens) or after (norm)
            layer = 0 if re.search(r"embed|cls_token|reg_token", name) else depth + 1
        scale = 1.0 if decay is None else decay ** (depth + 1 - layer)
        wd = 0.0 if param.ndim <= 1 else weight_decay
        groups.setdefault((scale, wd), []).append(param)
    out = [{"params": ps, "lr": lr * scale, "weight_decay": wd}
           for (scale, wd), ps in groups.items()]
    out.append({"params": list(head.parameters()), "lr": lr, "weight_decay": weight_decay})
    return out


class Finetune(Task):
    """Classification fine-tuning of the image encoder with a linear head, early stopping."""

    class Params(Params):
        data: ClassData = DemoClassData()
        """Classification data: the demo findings or manifest files (source: demo | manifest)."""
        epochs: int = Field(5, gt=0)
        """Passes over the training split at most."""
        patience: int = Field(2, gt=0)
        """Epochs without a better validation score before stopping early."""
        batch_size: int = Field(32, gt=0)
        """Images per fine-tuning step."""
        lr: float = Field(1e-4, gt=0)
        """AdamW learning rate of the head (and of the top encoder layer)."""
        weight_decay: float = Field(0.05, ge=0)
        """AdamW weight decay (none on norms and biases)."""
        layer_decay: float | None = Field(None, gt=0, le=1)  # e.g. 0.75; None: off
        """Layer-wise learning-rate decay per block below the top (e.g. 0.75); unset: off."""
        seed: int = 0
        """Seed of the head initialisation and the batch order."""

    def run(self, ctx: TaskContext) -> TaskResult:
        p = self.params
        splits = class_splits(p.data, ("train", "val", "test"), ctx.image_size, ctx.channels,
                              ctx.seed)
        train, val, test = splits["train"], splits["val"], splits["test"]
        torch.manual_seed(p.seed)
        clone = trainable_copy(ctx.model)
        head = nn.Linear(clone.image_encoder.width, len(train.classes)).to(ctx.device)
        trained = nn.ModuleDict({"image_encoder": clone.image_encoder, "head": head})
        generator = torch.Generator().manual_seed(p.seed)
        step_gen = torch.Generator(ctx.device).manual_seed(p.seed)

        passes: Counter[str] = Counter()

        def logits(batch) -> torch.Tensor:  # through the model's encoder, with gradients
            step = Step(clone, batch, step_gen)
            pooled = step.image("image").pooled
            passes.update(step.passes)
            return head(pooled.float())

        def labelled(split, order):
            labels = torch.from_numpy(split.labels).to(ctx.device)
            for batch, rows in batches(split.images, order, p.batch_size, ctx.collate,
                                       ctx.device):
                yield batch, labels[rows]

        @torch.no_grad()
        def predict(split) -> torch.Tensor:
            order = torch.arange(len(split.ids))
            return torch.cat([logits(b) for b, _ in labelled(split, order)])

        @torch.no_grad()
        def val_loss() -> float:
            target = torch.from_numpy(val.labels).to(ctx.device)
            return float(classification_loss(predict(val), target, train.multi_label))

        groups = layer_decay_groups(clone.image_encoder, head, p.lr, p.weight_decay,
                                    p.layer_decay)
        log = fit_with_early_stopping(
            trained, groups,
            lambda epoch: labelled(train, torch.randperm(len(train.ids), generator=generator)),
            val_loss, p.epochs, p.patience, p.lr, p.weight_decay, train.multi_label, logits)
        scores = scores_of(predict(test), train.multi_label).cpu().numpy()
        metrics: dict[str, Metric] = split_metrics(test, scores, train.labels, "")
        return TaskResult(metrics, len(test.ids), prediction_rows(test, scores),
                          {**merged_bad_rows(splits.values()).to_dict(), "training": log,
                           "training_passes": dict(sorted(passes.items()))})
