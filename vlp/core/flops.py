"""FLOPs of one training step, counted once on the run's first batch, and the steps a budget buys.

The count is of the step's math: forward and backward through the trainer's own
`forward_backward` (no optimiser step), under `torch.utils.flop_counter.FlopCounterMode`, which
counts matrix products, convolutions and attention (2 FLOPs per multiply-add) and not
elementwise ops, norms or softmax. It is taken before activation checkpointing and
torch.compile are applied: they change how the step runs (recomputation, fused kernels), not
what it computes. Counting leaves no trace on training: the RNG is forked, buffers are restored
and every `.grad` is None afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from vlp.core import distributed as D
from vlp.core.checkpoint import write_json
from vlp.core.errors import UserError
from vlp.core.recipe import Recipe, TrainerSpec
from vlp.core.run import Run, build_run
from vlp.data.batch import Batch
from vlp.data.faults import FaultLog
from vlp.data.loader import train_loader

COUNTED_ON = ("one step (forward + backward, no optimiser step) on the batch of step 0, "
              "all ranks together, by torch.utils.flop_counter")


def _cpu_attention(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: PyTorch's CPU attention kernel, which flop_counter does not know (it would count 0): the
#: same formulas as for the CUDA flash kernels, so a count on the CPU equals one on a GPU
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def count_flops(model: nn.Module, device: torch.device, run_step: Callable[[], Any]) -> int:
    """FLOPs of `run_step()` (a forward and backward of `model`), leaving the model and the
    global RNG (CPU, and `device` if CUDA) as they were: buffers restored, `.grad` None."""
    buffers = {name: value.detach().clone() for name, value in model.named_buffers()}
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), counter:
            run_step()
    finally:
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def first_batch(run: Run, rank: int, world: int) -> Batch:
    """This rank's share of step 0's batch, exactly as the training loader draws it (rows
    unreadable here are not logged: training draws the batch again and logs them then)."""
    spec = run.recipe.spec
    loader = train_loader(run.data, run.collate, spec.trainer.batch_size, spec.seed, 0, 1, 0,
                          rank, world, pin=False, faults=FaultLog())
    return next(iter(loader))


def rank_step_flops(run: Run) -> int:
    """This rank's FLOPs of step 0 (its share of the batch), through the trainer's own
    `forward_backward` on the unwrapped model."""
    from vlp.core.trainer import forward_backward  # the trainer imports this module

    spec = run.recipe.spec
    batch = first_batch(run, D.rank(), D.world_size()).to(run.device)
    return count_flops(run.model, run.device, lambda: forward_backward(
        run.model, batch, 0, spec.seed, spec.trainer.grad_accum, spec.trainer.precision))


def step_flops(recipe: Recipe) -> int:
    """FLOPs of one training step of `recipe` in this process (the whole global batch): the
    model and data built on the CPU as a run builds them, in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder, torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.spec.seed)
        return rank_step_flops(build_run(recipe, Path(folder), torch.device("cpu")))


# ----------------------------------------------------------------------------- budgets


def budget_of(trainer: TrainerSpec) -> dict[str, Any]:
    """{"kind": "flops" | "samples" | "steps", "value": ...}: what decides the run's length."""
    if trainer.budget_flops is not None:
        return {"kind": "flops", "value": trainer.budget_flops}
    if trainer.budget_samples is not None:
        return {"kind": "samples", "value": trainer.budget_samples}
    return {"kind": "steps", "value": trainer.max_steps}


def planned_steps(trainer: TrainerSpec, flops_per_step: int) -> int:
    """The steps the budget buys: floor(budget / cost of a step), at least 1; max_steps
    without a budget."""
    if trainer.budget_flops is not None:
        if flops_per_step <= 0:
            raise UserError(f"trainer.budget_flops {trainer.budget_flops:g}: a step of this "
                            "recipe counted 0 FLOPs, so a FLOP budget cannot set its length; "
                            "use trainer.budget_samples or trainer.max_steps")
        return max(1, math.floor(Fraction(trainer.budget_flops) / flops_per_step))
    if trainer.budget_samples is not None:
        return max(1, trainer.budget_samples // trainer.batch_size)
    return trainer.max_steps


def flops_record(trainer: TrainerSpec, flops_per_step: int) -> dict[str, Any]:
    """The content of a run's flops.json."""
    steps = planned_steps(trainer, flops_per_step)
    return {"flops_per_step": flops_per_step, "steps": steps,
            "total_flops": flops_per_step * steps, "budget": budget_of(trainer),
            "counted_on": COUNTED_ON}


def _amount(budget: dict[str, Any]) -> str:
    return f"{budget['value']:.3g}" if budget["kind"] == "flops" else str(budget["value"])


def budget_note(trainer: TrainerSpec) -> str:
    """", trainer.budget_flops 1.2e+12 sets the steps (max_steps 400 not used)", or ""."""
    budget = budget_of(trainer)
    if budget["kind"] == "steps":
        return ""
    return (f", trainer.budget_{budget['kind']} {_amount(budget)} sets the steps (max_steps "
            f"{trainer.max_steps} not used)")


def describe_plan(record: dict[str, Any], recipe_max_steps: int) -> str:
    """One line: the budget, the steps it buys and their cost."""
    budget, steps, per_step = record["budget"], record["steps"], record["flops_per_step"]
    cost = f"{steps} steps of {per_step:.3g} FLOPs"
    if budget["kind"] == "steps":
        return f"{cost} = {record['total_flops']:.3g} FLOPs"
    unit = "FLOPs" if budget["kind"] == "flops" else "samples"
    return (f"budget {_amount(budget)} {unit} = {cost} (recipe max_steps {recipe_max_steps} "
            "not used)")


def with_max_steps(recipe: Recipe, steps: int) -> Recipe:
    """`recipe` with trainer.max_steps replaced (the steps a budget planned)."""
    trainer = recipe.spec.trainer.model_copy(update={"max_steps": steps})
    return dataclasses.replace(recipe, spec=recipe.spec.model_copy(update={"trainer": trainer}))


# ----------------------------------------------------------------------------- the run folder

FLOPS_FILE = "flops.json"


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's flops.json, or None for a run started before vlp wrote it."""
    path = Path(run_dir) / FLOPS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def resumed_steps(run_dir: Path, trainer: TrainerSpec, record: dict[str, Any] | None) -> int:
    """The steps planned for a run being resumed: its flops.json's; without one (a run of a
    version before it), those its recipe plans, unless they depend on a count that may have
    changed since (a FLOP budget's)."""
    if record is not None:
        return int(record["steps"])
    if trainer.budget_flops is not None:
        raise UserError(f"{Path(run_dir) / FLOPS_FILE} is missing, so the steps this run's "
                        "trainer.budget_flops planned are unknown; restore the file, or start a "
                        "new run with another --out")
    return planned_steps(trainer, 0)


def count_run(run: Run) -> dict[str, Any]:
    """The flops.json of `run`'s recipe: step 0 counted on every rank and summed (one
    all_reduce), its steps planned. Rank 0 writes it into the run folder."""
    count = torch.tensor(rank_step_flops(run), dtype=torch.int64, device=run.device)
    if D.is_distributed():
        torch.distributed.all_reduce(count)
    record = flops_record(run.recipe.spec.trainer, int(count.item()))
    if D.rank() == 0:
        write_json(run.run_dir / FLOPS_FILE, record)
    return record
