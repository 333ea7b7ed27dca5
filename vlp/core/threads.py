"""CPU threads that fit the machine: one share of this process's cores per local rank.

torch starts as many intra-op threads as it sees cores, in every process; with several ranks,
a CPU quota or other work on the machine, those threads wait on each other. The default here is
the cores this process may use (its affinity mask, capped by a cgroup CPU quota) divided by the
ranks on this node; DataLoader workers get one thread each. Set before any work is done.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


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
    """`trainer.threads` if set, else OMP_NUM_THREADS if set, else cores / local ranks."""
    if requested is not None:
        return ThreadChoice(requested, "trainer.threads")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS")
    cores, ranks = available_cores(), local_ranks()
    share = max(1, cores // ranks)
    return ThreadChoice(share, f"{cores} cores available to this process / {ranks} local "
                               f"rank{'s' if ranks > 1 else ''}; set trainer.threads to change")


def apply_threads(requested: int | None) -> ThreadChoice:
    """Set torch's intra-op threads (and the tokenizer's pool, if not yet started)."""
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(choice.threads))  # tokenizers' thread pool
    return choice


def worker_init(_worker_id: int) -> None:
    """DataLoader worker start: one torch thread, tokenisation without its own thread pool."""
    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
