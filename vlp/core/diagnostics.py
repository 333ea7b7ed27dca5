"""Per-objective gradient diagnostics: how hard each objective pulls on the shared parts (image
encoder, text encoder, fusion) and whether objectives pull the same way (cosine similarity).

At a diagnostic step the trainer hands over a step over that step's batch with the masks
training uses; one forward of the unwrapped model gives each objective's weighted loss
(recipe weight * loss), `torch.autograd.grad` of each gives its gradient on every shared part
(averaged over ranks under torchrun), and a Gram matrix accumulated parameter by parameter gives
the norms and cosines. Training is left as it was: no `.grad` is written, the RNG streams are
forked, buffers (BatchNorm statistics in heads) are restored, and nothing is stepped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
from torch import nn

from vlp.core import distributed as D
from vlp.core.step import Step

if TYPE_CHECKING:
    from vlp.core.model import VLPModel

#: The parts every objective may share, as attributes of VLPModel.
SHARED_PARTS = ("image_encoder", "text_encoder", "fusion")

#: An objective's gradient per parameter of one part; None where it does not reach a parameter.
Gradients = Sequence[torch.Tensor | None]


def gradient_gram(grads: Sequence[Gradients]) -> torch.Tensor:
    """Gram matrix G[i, j] = <g_i, g_j> (float64) of objective gradients, where grads[i][k] is
    objective i's gradient of parameter k. Accumulated parameter by parameter, so no objective's
    gradient over all parameters is ever concatenated."""
    count = len(grads)
    device = next((g.device for row in grads for g in row if g is not None), None)
    gram = torch.zeros(count, count, dtype=torch.float64, device=device)
    for k in range(len(grads[0]) if count else 0):
        column = [grads[i][k] for i in range(count)]
        reached = next((g for g in column if g is not None), None)
        if reached is None:
            continue
        zero = torch.zeros_like(reached)  # an objective that does not reach it adds nothing
        rows = torch.stack([(zero if g is None else g).reshape(-1).double() for g in column])
        gram += rows @ rows.T  # no host sync: no index tensor is built per parameter
    return gram


def norms_and_cosines(gram: Sequence[Sequence[float]]
                      ) -> tuple[list[float], list[list[float | None]]]:
    """Norms sqrt(G_ii) and cosines G_ij / (n_i n_j) of a Gram matrix; a cosine is None where
    a norm is 0 (an objective that does not reach the part has no direction)."""
    norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(len(gram))]
    cosines = [[max(-1.0, min(1.0, gram[i][j] / (norms[i] * norms[j])))
                if norms[i] > 0 and norms[j] > 0 else None for j in range(len(gram))]
               for i in range(len(gram))]
    return norms, cosines


def shared_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters of each shared part the model has (parts without any are left
    out: a frozen text encoder, no fusion)."""
    parts = {}
    for part in SHARED_PARTS:
        module = getattr(model, part, None)
        trainable = [] if module is None else [p for p in module.parameters() if p.requires_grad]
        if trainable:
            parts[part] = trainable
    return parts


@contextlib.contextmanager
def training_untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a side computation without changing training: torch's RNG streams (dropout) are
    forked and the model's buffers (e.g. BatchNorm running statistics) restored afterwards."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def objective_gradients(losses: dict[str, torch.Tensor], params: list[nn.Parameter]
                        ) -> list[list[torch.Tensor | None]]:
    """Each loss's gradient of `params` (None where it does not reach one), without writing
    `.grad`; averaged over ranks under torchrun (untouched parameters count as zero there,
    so every rank reduces the same tensors)."""
    grads: list[list[torch.Tensor | None]] = []
    names = list(losses)
    for i, name in enumerate(names):
        loss = losses[name]
        if not loss.requires_grad:
            grads.append([None] * len(params))
            continue
        grads.append(list(torch.autograd.grad(loss, params, retain_graph=i < len(names) - 1,
                                              allow_unused=True)))
    if D.is_distributed():
        grads = [[torch.zeros_like(p) if g is None else g for g, p in zip(row, params)]
                 for row in grads]
        D.average_over_ranks([g for row in grads for g in row])
    return grads


def gradient_diagnostics(model: VLPModel, step: Step, autocast: AbstractContextManager,
                         index: int) -> dict[str, int | float | None]:
    """One line of gradients.jsonl for training step `index`: "norm/<objective>/<part>" and
    "cos/<a>/<b>/<part>" (a before b in recipe order; None where a norm is 0) of the weighted
    losses' gradients on `step`. Every rank must call it at the same steps (collectives)."""
    parts = shared_parameters(model)
    params = [p for part in parts.values() for p in part]
    with training_untouched(model, step.batch.image.device):
        with autocast:
            losses = model.objective_losses(step)
        grads = objective_gradients(losses, params)
    grams, start = [], 0
    for part in parts.values():
        grams.append(gradient_gram([row[start:start + len(part)] for row in grads]))
        start += len(part)
    names = list(losses)
    line: dict[str, int | float | None] = {"step": index}
    values = torch.stack(grams).tolist() if grams else []  # the one host sync
    for part, gram in zip(parts, values):
        norms, cosines = norms_and_cosines(gram)
        for i, name in enumerate(names):
            line[f"norm/{name}/{part}"] = norms[i]
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                line[f"cos/{a}/{names[j]}/{part}"] = cosines[i][j]
    return line
