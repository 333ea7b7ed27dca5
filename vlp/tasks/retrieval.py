"""Held-out image-text retrieval (R@k both ways) as a task."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from vlp.eval.metrics import Metric
from vlp.eval.retrieval import paired_ranks, retrieval_metrics
from vlp.plugins.base import Params
from vlp.tasks.base import Task, TaskContext, TaskResult


class Retrieval(Task):
    """Image-to-text and text-to-image Recall@k on the pre-training held-out pairs."""

    requires: ClassVar[tuple[str, ...]] = ()

    class Params(Params):
        ks: tuple[Annotated[int, Field(ge=1)], ...] | None = None  # default: eval.ks
        """Recall@k cut-offs; unset: the recipe's eval.ks."""

    def run(self, ctx: TaskContext) -> TaskResult:
        ks = self.params.ks or ctx.ks
        encoded = ctx.features.images("pretrain/heldout", ctx.heldout, with_text=True)
        images, texts = encoded.embedding, encoded.text_embedding
        assert texts is not None
        recalls = retrieval_metrics(images, texts, ks)
        n = int(recalls.pop("n"))
        chance = {f"R@{k}": 100.0 * min(k, n) / n for k in ks}  # a random ranking
        chance["mean_R"] = sum(chance.values()) / len(ks)
        metrics = {key: Metric(value, chance[key if key == "mean_R" else key[len("i2t_"):]],
                               "chance") for key, value in recalls.items()}
        i2t, t2i = paired_ranks(images, texts)
        rows = [{"index": i, "i2t_rank": int(a), "t2i_rank": int(b)}
                for i, (a, b) in enumerate(zip(i2t.tolist(), t2i.tolist()))]
        return TaskResult(metrics, n, rows)
