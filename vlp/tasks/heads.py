"""Training a classification head with AdamW and early stopping on a validation split.

Shared by the linear probe (a Linear layer on frozen features) and fine-tuning (a head on the
image encoder, trained end to end). Multi-label losses ignore NaN (uncertain) labels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def classification_loss(logits: Tensor, target: Tensor, multi_label: bool) -> Tensor:
    """Cross-entropy (single-label, class indices) or BCE over the known labels (multi)."""
    if not multi_label:
        return F.cross_entropy(logits, target.long())
    known = ~torch.isnan(target)
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target),
                                              reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def scores_of(logits: Tensor, multi_label: bool) -> Tensor:
    """Probabilities: sigmoid per label, or softmax over classes."""
    return logits.sigmoid() if multi_label else logits.softmax(dim=-1)


def label_fraction(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction * n) training samples (at least 1), drawn with `seed`."""
    keep = max(1, round(fraction * n))
    order = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return np.sort(order[:keep])


def fit_with_early_stopping(module: nn.Module, params: Iterable[dict] | Iterable[Tensor],
                            train_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
                            val_loss: Callable[[], float], epochs: int, patience: int,
                            lr: float, weight_decay: float, multi_label: bool,
                            forward: Callable[[Tensor], Tensor]) -> dict[str, float]:
    """Train `forward` (whose parameters live in `module`) with AdamW for up to `epochs`,
    keeping the weights with the lowest validation loss; stop after `patience` epochs
    without improvement. Returns {"best_epoch", "epochs_run", "best_val_loss"}."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch, epoch = float("inf"), None, 0, 0
    for epoch in range(1, epochs + 1):
        module.train()
        for x, y in train_batches(epoch):
            loss = classification_loss(forward(x), y, multi_label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        module.eval()
        current = val_loss()
        if current < best - 1e-6:
            best, best_epoch = current, epoch
            best_state = copy.deepcopy(module.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return {"best_epoch": best_epoch, "epochs_run": epoch, "best_val_loss": best}
