"""The training loop: one loop for CPU and CUDA, single process or DDP under torchrun.

`train` reads top to bottom: `setup` builds the run (process group, model, optimiser, resumed
state, DDP wrapper, data), `train_step` does one optimisation step over its micro-batches,
`MetricsWindow` averages metrics between log lines and remembers the first non-finite loss,
`RunLog` writes them, `save` checkpoints and `finish` evaluates and writes the summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from vlp.core import distributed as D
from vlp.core.accumulate import (
    AccumulatedStep,
    WholeBatchStep,
    all_reduce_gradients,
)
from vlp.core.checkpoint import (
    load_state,
    load_weights,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from vlp.core.diagnostics import gradient_diagnostics
from vlp.core.errors import Interrupted, NonFiniteLoss, Problem, RecipeError, UserError
from vlp.core.flops import (
    budget_note,
    count_run,
    describe_plan,
    read_record,
    resumed_steps,
    with_max_steps,
)
from vlp.core.heldout import HeldOutTracker
from vlp.core.optim import build_optimizer, build_scheduler
from vlp.core.progress import TrainProgress, say
from vlp.core.recipe import Recipe, TrainerSpec
from vlp.core.run import (
    Run,
    build_run,
    default_run_dir,
    latest_run_dir,
    load_run,
    resolve_device,
)
from vlp.core.runfolder import check_run_folder, record_changes
from vlp.core.sharding import full_state, is_sharded, load_full_state, shard_model
from vlp.core.signals import signal_name, stop_on_signals
from vlp.core.speed import checkpoint_blocks, compile_encoders
from vlp.core.step import Step
from vlp.core.threads import ThreadChoice, apply_threads, keep_run_threads
from vlp.core.untrained import check_every_parameter_trains
from vlp.data.batch import Batch
from vlp.data.faults import FaultCountingLoader, FaultLog, all_faults, data_report
from vlp.data.loader import probe_pairs, train_loader
from vlp.seeding import mix_seed

#: What `train` runs on the finished model (e.g. held-out retrieval): metrics by name.
Evaluator = Callable[[Run], dict[str, float]]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_metrics: dict[str, float]
    retrieval: dict[str, float] | None
    summary: dict
    run: Run  # the trained run as built (its model holds the final weights), for more tasks


def step_generator(device: torch.device, seed: int, step: int, micro_batch: int = 0
                   ) -> torch.Generator:
    """Masks and augmentations of micro-batch m of step s come from (seed, s, m, rank) alone:
    each accumulated micro-batch gets its own masks, and resuming needs no saved state."""
    return torch.Generator(device=device).manual_seed(
        mix_seed(seed, step, micro_batch, D.rank()))


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- setup


@dataclass
class Training:
    """Everything one training run holds, built once by `setup` and read by each part."""

    recipe: Recipe
    run: Run
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ddp: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    start: int  # first step to run (the resumed step, or 0)
    end: int  # step after the last one this call runs (stop_after or max_steps)
    faults: FaultLog  # this rank's rows that could not be read when drawn (resumed too)
    threads: ThreadChoice
    flops: dict[str, Any]  # the run's flops.json: FLOPs per step, the steps its budget planned

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def trainer(self) -> TrainerSpec:
        return self.recipe.spec.trainer


def _run_dir(recipe: Recipe, out: Path | None, resume: str | None) -> Path:
    """--out if given; else the run a checkpoint path belongs to; else latest or a new one."""
    if out:
        return Path(out)
    if resume and resume != "latest":
        ckpt = Path(resume)
        if ckpt.parent.name == "checkpoints":
            return ckpt.parent.parent
        raise FileNotFoundError(f"--resume {resume}: pass --out RUN_DIR, or a path "
                                "RUN_DIR/checkpoints/step_N")
    return latest_run_dir(recipe) if resume else default_run_dir(recipe)


def _join_ranks(recipe: Recipe) -> torch.device:
    """Join torchrun's process group (if any) and pick this rank's device."""
    trainer = recipe.spec.trainer
    device = resolve_device(trainer.device)
    D.init_from_env(device.type)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    world = D.world_size()
    if trainer.batch_size % (world * trainer.grad_accum):
        raise RecipeError([Problem(recipe.source, "trainer.batch_size",
                                   f"{trainer.batch_size} is not divisible by world size "
                                   f"{world} x grad_accum {trainer.grad_accum}")])
    return device


def _restore(run: Run, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, resume: str,
             faults: FaultLog) -> tuple[int, int | None]:
    """Load weights, optimiser, schedule, this rank's RNG state and data faults of a
    checkpoint; returns its step and the CPU threads it was trained with (if saved)."""
    ckpt = resolve_checkpoint(run.run_dir, resume)
    state = load_state(ckpt, run.device)
    if is_sharded(run.model):
        load_full_state(run.model, optimizer, ckpt, state["optimizer"])
    else:
        load_weights(run.model, ckpt)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ranks = state.get("ranks", [])
    own = ranks[D.rank()] if D.rank() < len(ranks) else {"rng": state.get("rng")}
    set_rng_state(own["rng"])
    faults.merge(own.get("data_faults", {}))
    threads = state.get("threads")
    return int(state["step"]), None if threads is None else int(threads)


def _wrap_for_ranks(model: nn.Module, device: torch.device, trainer: TrainerSpec) -> nn.Module:
    """DistributedDataParallel under torchrun (BatchNorm synchronised on CUDA); as is when
    sharded (FSDP2 synchronises itself) or in a single process."""
    if not D.is_distributed() or is_sharded(model):
        return model
    if device.type == "cuda":  # BatchNorm statistics over all ranks
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, find_unused_parameters=trainer.find_unused_parameters)


def setup(recipe: Recipe, out: Path | None, resume: str | None,
          stop_after: int | None) -> Training:
    """Build (or resume) a run: the model, optimiser, schedule and the steps to run.

    A fresh run counts the FLOPs of its first step and plans its steps (a budget's, or
    max_steps) into flops.json; a resumed one reads them back. The Recipe trained, returned in
    the Training, has the planned steps as trainer.max_steps (the run's recipe.yaml keeps the
    recipe as written)."""
    spec, trainer = recipe.spec, recipe.spec.trainer
    threads = apply_threads(trainer.threads)  # before any work, so every op sees it
    device = _join_ranks(recipe)
    run_dir = _run_dir(recipe, out, resume)
    say(f"{recipe.name}: {threads.describe()}, device {device}, {D.world_size()} rank(s), "
        f"run folder {run_dir}{budget_note(trainer)}")
    saved = read_record(run_dir) if resume else None
    planned = resumed_steps(run_dir, trainer, saved) if resume else None
    changes = check_run_folder(run_dir, recipe, resume, planned)
    torch.manual_seed(spec.seed + D.rank())
    run = build_run(recipe, run_dir, device)
    sample = run.collate(probe_pairs(run.data))
    check_every_parameter_trains(recipe, run.model, sample.to(device))
    flops = saved or count_run(run)  # before the wrappers below, which change no math
    say(describe_plan(flops, trainer.max_steps) + (" (read from flops.json)" if saved else ""))
    written, recipe = recipe, with_max_steps(recipe, flops["steps"])
    trainer = recipe.spec.trainer
    if trainer.grad_checkpointing:
        checkpoint_blocks(run.model)
    if trainer.parallel == "fsdp" and D.is_distributed():
        shard_model(run.model)  # before the optimiser, which then holds the shards
    if trainer.compile:
        compile_encoders(run.model)
    optimizer = build_optimizer(run.model, spec.optim, recipe.where)
    scheduler = build_scheduler(optimizer, trainer.max_steps, spec.schedule)
    faults = FaultLog()
    start = 0
    if resume:
        start, saved_threads = _restore(run, optimizer, scheduler, resume, faults)
        threads = keep_run_threads(threads, saved_threads)
    if changes and D.rank() == 0:
        record_changes(run_dir, written, changes, start)  # recipe.yaml keeps max_steps
    end = trainer.max_steps if stop_after is None else min(stop_after, trainer.max_steps)
    if stop_after is not None and end <= start:  # re-saving `start` would rewrite the summary
        raise UserError(f"--stop-after {stop_after}: the run in {run_dir} is already at step "
                        f"{start}; pass a later step (or none, to train to {trainer.max_steps})")
    ddp = _wrap_for_ranks(run.model, device, trainer)
    return Training(recipe, run, device, optimizer, scheduler, ddp, start, end, faults, threads,
                    flops)


def data_loader(training: Training) -> FaultCountingLoader:
    """This rank's share of the batches of steps start..end-1."""
    spec = training.recipe.spec
    return train_loader(training.run.data, training.run.collate, spec.trainer.batch_size,
                        spec.seed, training.start, training.end, spec.data.num_workers,
                        D.rank(), D.world_size(), pin=training.device.type == "cuda",
                        faults=training.faults)


# ----------------------------------------------------------------------------- the step


@dataclass
class StepOutput:
    metrics: dict[str, torch.Tensor]  # of the whole batch, detached, on the device
    passes: dict[str, int]  # encoder passes per (encoder, view); each covers all micro-batches


def micro_steps(model: nn.Module, batch: Batch, step: int, seed: int, grad_accum: int
                ) -> list[Step]:
    """The micro-batches of step `step`, each with its own mask generator."""
    device = batch.image.device
    return [Step(model, part, step_generator(device, seed, step, i))
            for i, part in enumerate(batch.split(grad_accum))]


def forward_backward(model: nn.Module, batch: Batch, step: int, seed: int, grad_accum: int,
                     precision: str, ddp: nn.Module | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """The whole batch's loss, metrics and pass counts, with its gradient in `.grad`.

    grad_accum 1: one pass (through `ddp` if given). grad_accum k > 1: the feature-caching
    two-pass step of vlp.core.accumulate, exact for batch-coupled objectives; gradients are then
    averaged over ranks once, here, instead of by DDP."""
    device = batch.image.device
    if grad_accum == 1:
        with _autocast(device, precision):
            loss, metrics, passes = (ddp or model)(batch, step_generator(device, seed, step))
        loss.backward()
        if is_sharded(model):  # FSDP leaves scalar parameters replicated
            all_reduce_gradients(model)
        return loss.detach(), metrics, passes
    whole = AccumulatedStep(model, batch, micro_steps(model, batch, step, seed, grad_accum),
                            step_generator(device, seed, step))
    with _autocast(device, precision):
        loss, metrics, passes = model.losses(whole)
    loss.backward()
    with _autocast(device, precision):
        whole.backward_through_micro_batches()
    all_reduce_gradients(model)
    return loss.detach(), metrics, passes


def train_step(training: Training, batch: Batch, step: int) -> StepOutput:
    """Forward and backward over the whole batch, clip, optimiser and schedule step."""
    trainer = training.trainer
    loss, metrics, passes = forward_backward(
        training.model, batch, step, training.recipe.spec.seed, trainer.grad_accum,
        trainer.precision, training.ddp)
    metrics = {"loss": loss, **metrics}
    norm = (torch.nn.utils.clip_grad_norm_(training.model.parameters(), trainer.grad_clip)
            if trainer.grad_clip > 0 else torch.zeros((), device=training.device))
    metrics["grad_norm"] = norm.full_tensor() if isinstance(norm, DTensor) else norm  # FSDP
    training.optimizer.step()
    training.scheduler.step()
    training.optimizer.zero_grad(set_to_none=True)
    for objective in training.model.objectives.values():
        objective.after_optimizer_step()
    return StepOutput(metrics, passes)


def diagnostic_step(model: nn.Module, batch: Batch, step: int, seed: int, grad_accum: int
                    ) -> Step:
    """Step `step` over this rank's whole batch with training's masks, features keeping their
    graph: under accumulation each micro-batch masked with its own stream, the whole batch in
    one pass (its gradient is the accumulated one; it holds the whole batch's activations)."""
    generator = step_generator(batch.image.device, seed, step)
    if grad_accum == 1:
        return Step(model, batch, generator)
    return WholeBatchStep(model, batch, micro_steps(model, batch, step, seed, grad_accum),
                          generator)


def diagnose(training: Training, batch: Batch, step: int) -> dict[str, int | float | None]:
    """Per-objective gradient norms and cosines on the shared parts (vlp.core.diagnostics) at
    step `step`, before it trains, on the unwrapped model; training is left unchanged."""
    trainer = training.trainer
    view = diagnostic_step(training.model, batch, step, training.recipe.spec.seed,
                           trainer.grad_accum)
    return gradient_diagnostics(training.model, view,
                                _autocast(training.device, trainer.precision), step)


# ----------------------------------------------------------------------------- metrics


class MetricsWindow:
    """Sums step metrics on the device between log lines (no host sync in between) and keeps
    the step of each objective's first non-finite loss, so every rank stops together."""

    def __init__(self, objectives: list[str], start: int, device: torch.device):
        self.objectives = objectives
        self.sums: dict[str, torch.Tensor] = {}
        self.first_bad = torch.full((len(objectives),), -1, device=device)
        self.since, self.tick = start, time.perf_counter()

    def add(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        losses = torch.stack([metrics[f"loss/{n}"] for n in self.objectives])
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(losses),
                                     torch.full_like(self.first_bad, step), self.first_bad)
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0) + value

    def check_finite(self, step: int, run_dir: Path) -> None:
        """Raise NonFiniteLoss (on every rank) if any objective's loss was not finite."""
        worst = self.first_bad.clone()
        if D.is_distributed():
            torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
        for name, at in zip(self.objectives, worst.tolist()):
            if at >= 0:
                raise NonFiniteLoss(f"objective '{name}' gave a non-finite loss at step {at + 1}; "
                                    f"stopped at step {step}, last good checkpoint kept in "
                                    f"{run_dir / 'checkpoints'}")

    def close(self, done: int) -> tuple[dict[str, float], float]:
        """Means since the last line, averaged over ranks (one collective), and the seconds
        the window took; starts a new window."""
        steps = done - self.since
        means = torch.stack(list(self.sums.values())) / steps
        if D.is_distributed():
            torch.distributed.all_reduce(means)
            means /= D.world_size()
        values = dict(zip(self.sums, means.tolist()))
        elapsed = time.perf_counter() - self.tick
        self.sums, self.since, self.tick = {}, done, time.perf_counter()
        return values, elapsed


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # e.g. a line cut short by a crash
        return None


def _metrics_file(run_dir: Path, start: int, name: str = "metrics.jsonl") -> TextIO:
    """Open a JSON-lines log for appending, keeping the lines of steps up to `start` (metrics:
    steps done; pass start - 1 for lines written before a step runs) and no broken ones."""
    path = run_dir / name
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines()
                if (s := _logged_step(ln)) is not None and s <= start]
        path.write_text("".join(ln + "\n" for ln in kept))
    return path.open("a")


class RunLog:
    """Where metric lines go on rank 0: metrics.jsonl, TensorBoard (optional), and progress:
    a bar on a terminal, plain lines in a batch job (vlp.core.progress)."""

    def __init__(self, training: Training):
        trainer, rank0 = training.trainer, D.rank() == 0
        self.file = _metrics_file(training.run_dir, training.start) if rank0 else None
        self.board = None
        if rank0 and trainer.tensorboard:  # the recipe check ensures tensorboard exists
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(training.run_dir / "tensorboard"))
        self.progress = TrainProgress(training.recipe.name, training.start, trainer.max_steps,
                                      training.end)

    def write(self, line: dict[str, float]) -> None:
        step = int(line["step"])
        if self.file is not None:
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
        if self.board is not None:
            for key, value in line.items():
                self.board.add_scalar(key, value, step)
        self.progress.logged(step, line["loss"], line["samples_per_s"])

    def close(self) -> None:
        self.progress.close()
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


# ----------------------------------------------------------------------------- checkpoints


def save(training: Training, step: int) -> None:
    """Checkpoint weights, optimiser, schedule, and every rank's RNG state and data faults
    (written by rank 0)."""
    ranks = D.per_rank({"rng": rng_state(), "data_faults": training.faults.state()})
    weights, optimizer = None, training.optimizer.state_dict()
    if is_sharded(training.model):  # every rank takes part in gathering the full state
        weights, optimizer = full_state(training.model, training.optimizer)
    state = {"optimizer": optimizer, "scheduler": training.scheduler.state_dict(),
             "ranks": ranks, "threads": training.threads.threads}
    if D.rank() == 0:
        save_checkpoint(training.run_dir, step, training.model, state,
                        keep=training.trainer.keep_checkpoints, weights=weights)


def finish(training: Training, done: int, last: dict[str, float], evaluate: Evaluator | None,
           held_out: HeldOutTracker | None, train_seconds: float, stopped_by: str | None = None
           ) -> tuple[dict[str, float] | None, dict, Run]:
    """After the last step: evaluate on rank 0 (complete runs only) and write summary.json
    (every run, also with --no-eval, --stop-after or when stopped by a signal). Returns the
    run evaluated (a sharded model's rebuilt from its saved full weights)."""
    result, skipped_because = None, None
    trainer, run = training.trainer, training.run
    faults = all_faults(training.faults)
    if evaluate and not stopped_by and done >= trainer.max_steps and is_sharded(run.model):
        run = load_run(training.run_dir, device=str(training.device))  # the saved full weights,
        # rebuilt on every rank (building synchronises); rank 0 evaluates them
    if stopped_by:
        skipped_because = stopped_by
    elif not evaluate:
        skipped_because = "--no-eval"
    elif done < trainer.max_steps:
        skipped_because = f"stopped at step {done} of {trainer.max_steps}"
    elif held_out is not None:  # the last point of the curve, and a candidate for best
        result = held_out.evaluate(done)
    elif D.rank() == 0:
        result = evaluate(run)
    summary = {
        "recipe": training.recipe.source, "run_dir": str(training.run_dir.resolve()),
        "steps": done, "max_steps": trainer.max_steps, "final": last, "retrieval": result,
        "eval_skipped": skipped_because, "threads": training.threads.threads,
        "train_seconds": train_seconds, "best": held_out.best if held_out else None,
        "flops_per_step": training.flops["flops_per_step"],
        "total_flops": training.flops["flops_per_step"] * done,  # of the steps trained so far
        "budget": training.flops["budget"], "recipe_max_steps": run.recipe.spec.trainer.max_steps,
        **data_report(run.data, faults)}
    if D.rank() == 0:
        write_json(training.run_dir / "summary.json", summary)
    if D.is_distributed():
        torch.distributed.barrier()
    return result, summary, run


# ----------------------------------------------------------------------------- the loop


def train(recipe: Recipe, out: Path | None = None, resume: str | None = None,
          evaluate: Evaluator | None = None, stop_after: int | None = None) -> TrainResult:
    """Train `recipe`, then run `evaluate` on the finished model (e.g.
    `vlp.eval.evaluate.retrieval_of_run`). `stop_after` ends early at that step with a
    checkpoint (for jobs with a time limit: continue later with resume='latest'; the schedule
    still spans max_steps)."""
    training = setup(recipe, out, resume, stop_after)
    trainer = training.trainer
    window = MetricsWindow(list(training.model.objectives), training.start, training.device)
    log = RunLog(training)
    held_out = (HeldOutTracker(training.run, evaluate, trainer.eval_every, trainer.best_metric,
                               log.file, log.board)
                if evaluate and trainer.eval_every and D.rank() == 0 else None)
    last: dict[str, float] = {}
    every, gradients = trainer.diagnostics_every, training.run_dir / "gradients.jsonl"
    if every and D.rank() == 0:  # lines of the steps that will run again go
        _metrics_file(training.run_dir, training.start - 1, gradients.name).close()
    with stop_on_signals() as stop:  # SIGINT/SIGTERM: end the step, checkpoint, exit
        for step, batch in enumerate(data_loader(training), start=training.start):
            batch = batch.to(training.device)
            if every and step % every == 0:  # every rank computes, rank 0 writes
                line = diagnose(training, batch, step)
                if D.rank() == 0:
                    with gradients.open("a") as file:
                        file.write(json.dumps(line) + "\n")
            output = train_step(training, batch, step)
            window.add(step, output.metrics)
            done = step + 1
            if done % trainer.log_every == 0 or done == training.end:
                window.check_finite(done, training.run_dir)
                steps = done - window.since
                values, elapsed = window.close(done)
                last = {"step": done, "lr": training.scheduler.get_last_lr()[0], **values,
                        "samples_per_s": steps * trainer.batch_size / elapsed, **output.passes}
                log.write(last)
            log.progress.advance()
            if held_out is not None and held_out.due(done):
                held_out.evaluate(done)
            if trainer.ckpt_every and done % trainer.ckpt_every == 0 and done != training.end:
                window.check_finite(done, training.run_dir)
                save(training, done)
            if (signum := stop.requested()) and done != training.end:
                seconds = log.progress.close()
                log.close()
                window.check_finite(done, training.run_dir)
                save(training, done)
                finish(training, done, last, evaluate, held_out, seconds,
                       stopped_by=f"stopped by {signal_name(signum)} after step {done}")
                raise Interrupted(f"{signal_name(signum)}: stopped after step {done} with a "
                                  f"checkpoint in {training.run_dir / 'checkpoints'}; continue "
                                  "with --resume latest", signum)
    train_seconds = log.progress.close()
    done = max(training.start, training.end)
    window.check_finite(done, training.run_dir)
    save(training, done)
    result, summary, run = finish(training, done, last, evaluate, held_out, train_seconds)
    log.close()  # after finish: the last held-out line goes to the same files
    return TrainResult(training.run_dir, done, last, result, summary, run)
