"""Find parameters that no objective trains, before training starts (not by DDP at step 1).

One forward/backward of the built model on two training pairs shows which trainable
parameters get no gradient: e.g. a fusion layer whose output nothing reads. It runs in eval
mode (no BatchNorm statistics change) with the global RNG restored afterwards, so training
and exact resume see no trace of it.
"""

from __future__ import annotations

import torch

from vlp.core.errors import Problem, RecipeError
from vlp.core.model import VLPModel
from vlp.core.recipe import Recipe
from vlp.data.batch import Batch

SHOWN = 8  # parameter names listed in the message


def untrained_parameters(model: VLPModel, batch: Batch) -> list[str]:
    """Names of parameters requiring grad that get no gradient from one step on `batch`."""
    device = batch.image.device
    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.eval()
        try:
            loss, _, _ = model(batch, torch.Generator(device).manual_seed(0))
            loss.backward()
            missing = [name for name, p in model.named_parameters()
                       if p.requires_grad and p.grad is None]
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
    return missing


def check_every_parameter_trains(recipe: Recipe, model: VLPModel, batch: Batch) -> None:
    """RecipeError naming the untrained parameters, unless the recipe accepts them
    (trainer.find_unused_parameters: true, which DDP then needs too)."""
    if recipe.spec.trainer.find_unused_parameters:
        return
    missing = untrained_parameters(model, batch)
    if not missing:
        return
    shown = ", ".join(missing[:SHOWN]) + (f" and {len(missing) - SHOWN} more"
                                         if len(missing) > SHOWN else "")
    raise RecipeError([Problem(recipe.source, "objectives", (
        f"{len(missing)} parameters get no gradient from any objective, so they would never "
        f"train (and DDP would stop at the first step): {shown}. Add an objective that reads "
        "them, remove what builds them, or set trainer.find_unused_parameters: true"))])
