"""Held-out retrieval during training: a validation curve, and the best checkpoint kept.

Every `trainer.eval_every` steps rank 0 evaluates the held-out set, appends the metrics to
metrics.jsonl (keys `val/...`) and TensorBoard, and when `trainer.best_metric` improves it
writes the weights to checkpoints/best/, which pruning never touches.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from vlp.core.checkpoint import BEST, save_best


class HeldOutTracker:
    """Runs the trainer's evaluator every `every` steps; logs it and keeps the best weights."""

    def __init__(self, run: Any, evaluate: Callable[[Any], dict[str, float]], every: int,
                 metric: str, log: TextIO | None, board: Any):
        self.run, self.evaluator, self.every, self.metric = run, evaluate, every, metric
        self.log, self.board = log, board
        info = Path(run.run_dir) / "checkpoints" / BEST / "best.json"
        self.best: dict[str, Any] | None = json.loads(info.read_text()) if info.is_file() \
            else None  # kept across --resume
        self.last: tuple[int, dict[str, float]] | None = None  # (step, metrics) evaluated last

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate at `step` (once: a second call at the same step returns the same metrics)."""
        if self.last is not None and self.last[0] == step:
            return self.last[1]
        metrics = self.evaluator(self.run)
        self.last = (step, metrics)
        row = {"step": step, **{f"val/{k}": v for k, v in metrics.items()}}
        if self.log is not None:
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()
        if self.board is not None:
            for key, value in row.items():
                if key != "step":
                    self.board.add_scalar(key, value, step)
        value = metrics[self.metric]
        if self.best is None or value > self.best["value"]:
            path = save_best(self.run.run_dir, step, self.run.model,
                             {"metric": self.metric, "value": value, "step": step})
            self.best = {"metric": self.metric, "value": value, "step": step, "path": str(path)}
        return metrics
