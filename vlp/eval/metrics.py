"""Classification metrics from scikit-learn, and the baselines every metric is reported beside.

scikit-learn is imported lazily (the `eval` extra); without it the tasks that need it are
skipped with the install command, and training and retrieval still run.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlp.core.errors import UserError


class MissingExtra(UserError):
    """An optional library a task needs is not installed."""


# import name -> (distribution, extra that installs it)
EXTRAS = {"sklearn": ("scikit-learn", "eval"), "matplotlib": ("matplotlib", "plots")}


def require(module: str) -> Any:
    """Import an optional library or raise MissingExtra naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        dist, extra = EXTRAS[module]
        raise MissingExtra(f"needs {dist}, which is not installed: "
                           f"pip install -e '.[{extra}]'") from None


@dataclass(frozen=True)
class Metric:
    """A metric's value beside what a model that ignores the input would score."""

    value: float
    baseline: float | None
    baseline_kind: str  # "chance" or "majority" (most frequent training class or answer)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "baseline": self.baseline,
                "baseline_kind": self.baseline_kind}


def _sklearn_metrics() -> Any:
    require("sklearn")
    return importlib.import_module("sklearn.metrics")


def accuracy(truth: Sequence, prediction: Sequence) -> float:
    """Fraction of exact matches, in percent."""
    metrics = _sklearn_metrics()
    return 100.0 * float(metrics.accuracy_score(list(truth), list(prediction)))


def macro_f1(truth: Sequence[int], prediction: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over all classes (absent classes count as 0), percent."""
    metrics = _sklearn_metrics()
    return 100.0 * float(metrics.f1_score(list(truth), list(prediction),
                                          labels=list(range(num_classes)), average="macro",
                                          zero_division=0))


def auroc_per_label(truth: np.ndarray, scores: np.ndarray, labels: Sequence[str]
                    ) -> dict[str, float | None]:
    """ROC AUC of each label column; NaN truth is ignored; None where one class is absent."""
    metrics = _sklearn_metrics()
    out: dict[str, float | None] = {}
    for j, label in enumerate(labels):
        keep = ~np.isnan(truth[:, j])
        y = truth[keep, j]
        out[label] = (None if len(np.unique(y)) < 2 else
                      float(metrics.roc_auc_score(y, scores[keep, j])))
    return out


def macro_auroc(per_label: dict[str, float | None]) -> float | None:
    """Mean AUROC over labels where it is defined."""
    values = [v for v in per_label.values() if v is not None]
    return float(np.mean(values)) if values else None


def majority(values: Sequence) -> Any:
    """The most frequent value; ties go to the one seen first."""
    return Counter(values).most_common(1)[0][0]


def single_label_metrics(truth: np.ndarray, scores: np.ndarray, train_truth: np.ndarray,
                         num_classes: int, suffix: str = "") -> dict[str, Metric]:
    """Accuracy and macro-F1 of argmax predictions, beside the majority training class."""
    prediction = scores.argmax(axis=1)
    constant = np.full_like(truth, majority(train_truth.tolist()))
    return {
        f"accuracy{suffix}": Metric(accuracy(truth, prediction), accuracy(truth, constant),
                                    "majority"),
        f"macro_f1{suffix}": Metric(macro_f1(truth, prediction, num_classes),
                                    macro_f1(truth, constant, num_classes), "majority"),
    }


def multi_label_metrics(truth: np.ndarray, scores: np.ndarray, labels: Sequence[str],
                        suffix: str = "") -> dict[str, Metric]:
    """Macro AUROC and per-label AUROC (chance 0.5)."""
    per_label = auroc_per_label(truth, scores, labels)
    out = {f"macro_auroc{suffix}": Metric(_or_nan(macro_auroc(per_label)), 0.5, "chance")}
    for label, value in per_label.items():
        out[f"auroc/{label}{suffix}"] = Metric(_or_nan(value), 0.5, "chance")
    return out


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
