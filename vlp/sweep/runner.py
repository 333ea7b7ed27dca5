"""Running a sweep's plan: each run a child `python -m vlp train` (its output in the run
folder's train.log), `jobs` at once, finished runs skipped, interrupted ones resumed; SIGINT or
SIGTERM on the sweep goes to every child (each checkpoints and stops by itself, vlp.core.signals)
and the sweep waits for them; at the end one table per budget (vlp.eval.compare.aggregate)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vlp.core.errors import Interrupted, UserError
from vlp.core.progress import clock, say
from vlp.core.runfolder import RUN_FILES
from vlp.core.signals import SIGNALS, signal_name
from vlp.core.threads import available_cores
from vlp.sweep.plan import (
    EVALUATE,
    FINISHED,
    RESTART,
    RESUME,
    RUN_RECORD,
    Plan,
    PlannedRun,
    make_plan,
    shown_path,
    state_of,
    write_json,
)
from vlp.sweep.spec import load_sweep

LOG = "train.log"
POLL_S = 0.2


def threads_per_run(jobs: int) -> int:
    """Each child's share of the cores (its OMP_NUM_THREADS)."""
    return max(1, available_cores() // jobs)


def command(run: PlannedRun, action: str, evaluate: bool) -> list[str]:
    """The child's command line: `vlp train` with the run's --set values (or `vlp eval`)."""
    vlp = [sys.executable, "-m", "vlp"]
    if action == EVALUATE:
        return [*vlp, "eval", str(run.folder)]
    cmd = [*vlp, "train", str(run.recipe), "--out", str(run.folder)]
    for assignment in run.overrides:
        cmd += ["--set", assignment]
    if action == RESUME:
        cmd += ["--resume", "latest"]
    return cmd if evaluate else [*cmd, "--no-eval"]


@dataclass
class Outcome:
    """What a sweep did: run labels by what happened, and the signal that stopped it (or 0)."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, Path]] = field(default_factory=list)  # label, its train.log
    interrupted: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    signal: int = 0


@contextmanager
def forward_signals(running: dict[subprocess.Popen, object]) -> Iterator[Outcome]:
    """Meanwhile SIGINT/SIGTERM is recorded and sent on to every running child (each in its
    own session, so a terminal's Ctrl-C reaches it once, through here); a second signal is sent
    on too, and stops the children at once."""
    outcome = Outcome()

    def handle(signum: int, frame: object) -> None:
        outcome.signal = outcome.signal or signum
        for proc in list(running):
            proc.send_signal(signum)  # a child that already ended is skipped

    if threading.current_thread() is not threading.main_thread():
        yield outcome
        return
    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield outcome
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start(plan: Plan, run: PlannedRun, action: str, threads: int) -> subprocess.Popen:
    """Write sweep_run.json and start the child, its output appended to train.log."""
    if action == RESTART:  # nothing to resume from: the folder's run files go
        for name in RUN_FILES:
            path = run.folder / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    write_json(run.folder / RUN_RECORD, run.record(plan.sweep))
    cmd = command(run, action, plan.sweep.spec.eval)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with (run.folder / LOG).open("ab") as log:
        log.write(f"# vlp sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {action}: "
                  f"{shlex.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def run_plan(plan: Plan, jobs: int) -> Outcome:
    """Run what each run needs, `jobs` at once; one line per run started, finished, skipped."""
    spec = plan.sweep.spec
    write_json(plan.sweep.out / "sweep.json", plan.manifest())
    threads = threads_per_run(jobs)
    total = len(plan.runs)
    todo: deque[tuple[int, PlannedRun, str, str]] = deque()
    running: dict[subprocess.Popen, tuple[int, PlannedRun, float]] = {}  # index, run, start
    with forward_signals(running) as outcome:
        for index, run in enumerate(plan.runs, start=1):
            action, why = state_of(run, spec.eval)
            if action == FINISHED:
                say(f"[{index}/{total}] skip     {run.label} ({why})")
                outcome.skipped.append(run.label)
            else:
                todo.append((index, run, action, why))
        while todo or running:
            while todo and not outcome.signal and len(running) < jobs:
                index, run, action, why = todo.popleft()
                proc = _start(plan, run, action, threads)
                running[proc] = (index, run, time.perf_counter())
                say(f"[{index}/{total}] {action:8} {run.label} ({why}; {threads} thread"
                    f"{'s' if threads > 1 else ''}, log {shown_path(run.folder / LOG)})")
                if outcome.signal:  # came while it started: it gets it too
                    proc.send_signal(outcome.signal)
            if not running:
                break
            time.sleep(POLL_S)
            for proc in [p for p in running if p.poll() is not None]:
                index, run, began = running.pop(proc)
                _ended(index, total, run, proc.returncode, time.perf_counter() - began, outcome)
        outcome.not_started = [run.label for _, run, _, _ in todo]
    return outcome


def _ended(index: int, total: int, run: PlannedRun, code: int, seconds: float,
           outcome: Outcome) -> None:
    head = f"[{index}/{total}] "
    if code == 0:
        say(f"{head}finished {run.label} in {clock(seconds)}")
        outcome.finished.append(run.label)
    elif outcome.signal:
        say(f"{head}stopped  {run.label} by {signal_name(outcome.signal)} (exit {code})")
        outcome.interrupted.append(run.label)
    else:
        log = run.folder / LOG
        say(f"{head}FAILED   {run.label} (exit {code}): see {shown_path(log)}")
        outcome.failed.append((run.label, log))


def aggregate_budgets(plan: Plan) -> None:
    """One table per budget (OUT/<budget>/results.md, .csv, plots), variants as rows in the
    sweep's order, over the seeds; a budget with unfinished runs is left out, saying so."""
    from vlp.eval.compare import aggregate

    sweep = plan.sweep
    if not sweep.spec.eval:
        say("no tables: the sweep has eval: false")
        return
    for budget in plan.budgets:
        runs = [run for run in plan.runs if run.budget == budget]
        unfinished = [run.label for run in runs if state_of(run, True)[0] != FINISHED]
        if unfinished:
            say(f"budget {budget}: no table, {len(unfinished)} run(s) not finished "
                f"({', '.join(unfinished)})")
            continue
        groups = {variant: [run.folder for run in runs if run.variant == variant]
                  for variant in sweep.spec.variants}
        markdown, files, skipped = aggregate(groups, sweep.out / budget, sweep.baseline)
        print(f"\n## {budget}\n\n{markdown}", end="" if markdown.endswith("\n") else "\n")
        say("wrote " + ", ".join(shown_path(f) for f in files))
        if skipped:
            say(skipped)


def sweep_plan_text(plan: Plan, jobs: int) -> str:
    """What `--dry-run` prints: the budgets, then each run and what it needs."""
    sweep = plan.sweep
    spec = sweep.spec
    lines = [f"{sweep.source}: {len(spec.budgets)} budget(s) x {len(spec.variants)} "
             f"variant(s) x {len(spec.seeds)} seed(s) = {len(plan.runs)} runs in "
             f"{shown_path(sweep.out)}; {jobs} at once, {threads_per_run(jobs)} thread(s) each"]
    for name, budget in plan.budgets.items():
        counted = budget.counted
        how = (f" (the FLOPs of '{counted['flops_of']}' at {counted['steps']} steps: "
               f"{counted['flops_per_step']:.4g} per step)" if counted else "")
        lines.append(f"budget {name}: {budget.override(sweep).assignment}{how}")
    for run in plan.runs:
        action, why = state_of(run, spec.eval)
        lines.append(f"  {action:8} {run.label} ({why})")
    return "\n".join(lines)


def run_sweep(path: Path, jobs: int | None = None, dry_run: bool = False) -> int:
    """`vlp sweep`: validate everything, then run (or, dry, print) the plan; 0 when every run
    finished, 1 when some failed; a signal raises Interrupted saying how to continue."""
    sweep = load_sweep(path)
    jobs = sweep.spec.jobs if jobs is None else jobs
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: at least 1 run at a time")
    plan = make_plan(sweep, write=not dry_run)
    if dry_run:
        print(sweep_plan_text(plan, jobs))
        return 0
    outcome = run_plan(plan, jobs)
    counts = (f"{len(outcome.finished)} finished, {len(outcome.skipped)} skipped (done "
              f"before), {len(outcome.failed)} failed")
    if outcome.signal:
        raise Interrupted(
            f"{signal_name(outcome.signal)}: sweep stopped ({counts}, "
            f"{len(outcome.interrupted)} stopped with a checkpoint, {len(outcome.not_started)} "
            f"not started); continue with: vlp sweep {path}", outcome.signal)
    say(f"sweep {sweep.source}: {counts} of {len(plan.runs)} runs in {shown_path(sweep.out)}")
    aggregate_budgets(plan)
    for label, log in outcome.failed:
        print(f"error: run {label} failed: see {shown_path(log)}", file=sys.stderr)
    return 1 if outcome.failed else 0
