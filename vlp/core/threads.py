"""CPU threads that fit the machine: one share of this process's free cores per local rank.

torch starts as many intra-op threads as it sees cores, in every process; with several ranks,
a CPU quota or other work on the machine, those threads wait on each other (on a loaded 2-core
machine a step took 4x longer with 2 threads than with 1: docs/benchmarks.md). The default here
is the cores this process may use (its affinity mask, capped by a cgroup CPU quota, and by the
cores left idle by other work at start) divided by the ranks on this node; DataLoader workers
get one thread each. It is set before any work is done and logged; `trainer.threads` fixes it
(the idle measurement varies with the machine's load, so a fixed count repeats bit for bit).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_STAT = Path("/proc/stat")
IDLE_WINDOW_S = 0.3


def available_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs together, from /proc/stat."""
    fields = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


def idle_cores(window: float = IDLE_WINDOW_S) -> float | None:
    """Cores' worth of CPU left idle by everything else, over `window` seconds while this
    process sleeps; None where /proc/stat is unavailable."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(window)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def local_ranks() -> int:
    """Processes of this job on this node (torchrun's LOCAL_WORLD_SIZE; 1 otherwise)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str

    def describe(self) -> str:
        return f"threads: {self.threads} ({self.reason})"


def choose_threads(requested: int | None) -> ThreadChoice:
    """`trainer.threads` if set, else OMP_NUM_THREADS if set, else free cores / local ranks."""
    if requested is not None:
        return ThreadChoice(requested, "trainer.threads")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS")
    cores, ranks, idle = available_cores(), local_ranks(), idle_cores()
    usable = cores if idle is None else max(1, min(cores, round(idle)))
    busy = "" if usable == cores else f" ({cores - usable} busy with other work)"
    return ThreadChoice(max(1, usable // ranks),
                        f"{cores} cores available to this process{busy}, {ranks} local "
                        f"rank{'s' if ranks > 1 else ''}; set trainer.threads to fix it")


def apply_threads(requested: int | None) -> ThreadChoice:
    """Set torch's intra-op threads (and the tokenizer's pool, if not yet started)."""
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(choice.threads))  # tokenizers' thread pool
    return choice
