"""The training loop: one loop for CPU and CUDA, single process or DDP under torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vlp.core import distributed as D
from vlp.core.checkpoint import (
    load_state,
    load_weights,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from vlp.core.errors import NonFiniteLoss, Problem, RecipeError
from vlp.core.optim import build_optimizer, build_scheduler
from vlp.core.recipe import Recipe
from vlp.core.run import build_run, default_run_dir, latest_run_dir, resolve_device
from vlp.data.loader import train_loader


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    last_metrics: dict[str, float]
    evaluation: dict[str, Any] | None  # <run>/eval/summary.json of the downstream tasks

    @property
    def retrieval(self) -> dict[str, float] | None:
        """Values of the first retrieval task's metrics, and its `n`."""
        results = (self.evaluation or {}).get("results", {}).values()
        found = next((r for r in results if r.get("plugin") == "retrieval" and "n" in r), None)
        return None if found is None else {
            "n": found["n"], **{k: m["value"] for k, m in found["metrics"].items()}}


def step_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    """Masks and augmentations of step s come from (seed, s, rank) alone: exact resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 4099 + D.rank())
    return g


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # e.g. a line cut short by a crash
        return None


def _metrics_file(run_dir: Path, start: int):
    """Open metrics.jsonl for appending, dropping lines past the resumed step (or broken)."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines()
                if (s := _logged_step(ln)) is not None and s <= start]
        path.write_text("".join(ln + "\n" for ln in kept))
    return path.open("a")


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


def _tensorboard(run_dir: Path):
    """A SummaryWriter under the run folder (the recipe check ensures tensorboard exists)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def train(recipe: Recipe, out: Path | None = None, resume: str | None = None,
          evaluate: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train `recipe`; `stop_after` ends early at that step with a checkpoint (for jobs with a
    time limit: continue later with resume='latest'; the schedule still spans max_steps)."""
    spec, tr = recipe.spec, recipe.spec.trainer
    device = resolve_device(tr.device)
    D.init_from_env(device.type)
    rank, world = D.rank(), D.world_size()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    if tr.batch_size % (world * tr.grad_accum):
        raise RecipeError([Problem(recipe.source, "trainer.batch_size",
                                   f"{tr.batch_size} is not divisible by world size {world} x "
                                   f"grad_accum {tr.grad_accum}")])
    run_dir = _run_dir(recipe, out, resume)
    torch.manual_seed(spec.seed + rank)
    run = build_run(recipe, run_dir, device)
    model = run.model
    optimizer = build_optimizer(model, spec.optim)
    scheduler = build_scheduler(optimizer, tr.max_steps, spec.schedule)

    start = 0
    if resume:
        ckpt = resolve_checkpoint(run_dir, resume)
        load_weights(model, ckpt)
        state = load_state(ckpt, device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state({k: v.cpu() if torch.is_tensor(v) else [t.cpu() for t in v]
                       for k, v in state["rng"].items()})
        start = int(state["step"])
    if D.is_distributed() and device.type == "cuda":  # BatchNorm statistics over all ranks
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = (DistributedDataParallel(model, find_unused_parameters=tr.find_unused_parameters)
           if D.is_distributed() else model)

    end = tr.max_steps if stop_after is None else min(stop_after, tr.max_steps)
    loader = train_loader(run.data, run.collate, tr.batch_size, spec.seed, start, end,
                          spec.data.num_workers, rank, world, pin=device.type == "cuda")
    names = list(model.objectives)
    log = _metrics_file(run_dir, start) if rank == 0 else None
    board = _tensorboard(run_dir) if rank == 0 and tr.tensorboard else None
    bar = tqdm(total=tr.max_steps, initial=start, disable=rank != 0 or not sys.stderr.isatty(),
               dynamic_ncols=True, desc=recipe.name)
    sums: dict[str, torch.Tensor] = {}
    first_bad = torch.full((len(names),), -1, device=device)  # step of first non-finite loss
    last: dict[str, float] = {}
    tick, last_log = time.perf_counter(), start

    def save(step: int) -> None:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng_state()}
        if rank == 0:
            save_checkpoint(run_dir, step, model, state, keep=tr.keep_checkpoints)

    def check_finite(step: int) -> None:
        worst = first_bad.clone()
        if D.is_distributed():  # every rank stops together
            torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
        bad = worst.tolist()
        for name, at in zip(names, bad):
            if at >= 0:
                raise NonFiniteLoss(f"objective '{name}' gave a non-finite loss at step {at + 1}; "
                                    f"stopped at step {step}, last good checkpoint kept in "
                                    f"{run_dir / 'checkpoints'}")

    for step, batch in enumerate(loader, start=start):
        batch = batch.to(device)
        generator = step_generator(device, spec.seed, step)
        micro = batch.image.shape[0] // tr.grad_accum
        step_metrics: dict[str, torch.Tensor] = {}
        for i in range(tr.grad_accum):
            part = batch if tr.grad_accum == 1 else type(batch)(
                **{k: v[i * micro:(i + 1) * micro] for k, v in vars(batch).items()})
            sync = i == tr.grad_accum - 1 or not D.is_distributed()
            with (contextlib.nullcontext() if sync else ddp.no_sync()), \
                    _autocast(device, tr.precision):
                loss, metrics, passes = ddp(part, generator)
            (loss / tr.grad_accum).backward()
            for key, value in {"loss": loss.detach(), **metrics}.items():  # micro-batch mean
                step_metrics[key] = step_metrics.get(key, 0) + value / tr.grad_accum
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
                     if tr.grad_clip > 0 else torch.zeros((), device=device))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for objective in model.objectives.values():
            objective.after_optimizer_step()

        losses = torch.stack([step_metrics[f"loss/{n}"] for n in names])
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(losses),
                                torch.full_like(first_bad, step), first_bad)
        for key, value in {**step_metrics, "grad_norm": grad_norm}.items():
            sums[key] = sums.get(key, 0) + value
        done = step + 1
        if done % tr.log_every == 0 or done == end:
            check_finite(done)
            elapsed = time.perf_counter() - tick
            n = done - last_log
            means = torch.stack(list(sums.values())) / n
            if D.is_distributed():  # one collective per log line: the mean over ranks
                torch.distributed.all_reduce(means)
                means /= world
            values = dict(zip(sums, means.tolist()))
            last = {"step": done, "lr": scheduler.get_last_lr()[0], **values,
                    "samples_per_s": n * tr.batch_size / elapsed, **passes}
            if log is not None:
                log.write(json.dumps(last) + "\n")
                log.flush()
            if board is not None:
                for key, value in last.items():
                    board.add_scalar(key, value, done)
            bar.set_postfix(loss=f"{values['loss']:.4f}",
                            samples_s=f"{last['samples_per_s']:.0f}")
            sums, tick, last_log = {}, time.perf_counter(), done
        bar.update(1)
        if tr.ckpt_every and done % tr.ckpt_every == 0 and done != end:
            check_finite(done)
            save(done)
    bar.close()
    done = max(start, end)
    check_finite(done)
    save(done)
    if log is not None:
        log.close()
    if board is not None:
        board.close()

    evaluation = None
    if evaluate and rank == 0 and done >= tr.max_steps:
        evaluation = run.evaluate()  # the recipe's downstream tasks, into <run>/eval/
        write_json(run_dir / "summary.json", {
            "recipe": recipe.source, "steps": done, "final": last,
            "eval": evaluation["results"],
            "skipped_rows": run.data.skipped,
            "bad_rows": [list(r) for r in run.data.bad_rows[:100]]})
    if D.is_distributed():
        torch.distributed.barrier()
    return TrainResult(run_dir, done, last, evaluation)
