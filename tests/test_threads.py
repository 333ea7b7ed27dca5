"""trainer.threads: the default share of cores, its overrides, and one thread per data worker."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from vlp.core import threads
from vlp.core.threads import apply_threads, available_cores, choose_threads
from vlp.data.loader import worker_init


def test_default_is_the_cores_available_divided_by_local_ranks(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.setattr(threads, "idle_cores", lambda: None)  # no /proc/stat
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", tmp_path / "absent")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert choose_threads(None).threads == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert choose_threads(None).threads == 1  # never zero
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    quota = tmp_path / "cpu.max"
    quota.write_text("250000 100000\n")  # a container limited to 2.5 CPUs
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", quota)
    assert available_cores() == 2
    choice = choose_threads(None)
    assert choice.threads == 2 and "2 cores available" in choice.describe()
    quota.write_text("max 100000\n")
    assert available_cores() == 12
    monkeypatch.setattr(threads, "idle_cores", lambda: 5.4)  # other work holds 6.6 cores
    choice = choose_threads(None)
    assert choice.threads == 5 and "(7 busy with other work)" in choice.describe()
    monkeypatch.setattr(threads, "idle_cores", lambda: 0.2)
    assert choose_threads(None).threads == 1


def test_idle_cores_from_cpu_counters(monkeypatch):
    samples = iter([(100, 1000), (175, 1100)])  # (idle, total) jiffies: 75% idle meanwhile
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.idle_cores(window=0) == 3.0


def test_recipe_value_then_environment_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (choose_threads(None).threads, choose_threads(None).reason) == (3, "OMP_NUM_THREADS")
    assert choose_threads(5).threads == 5
    before = torch.get_num_threads()
    try:
        assert apply_threads(1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class _Threads(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        import os
        return torch.get_num_threads() * 10 + (os.environ.get("TOKENIZERS_PARALLELISM") == "false")


def test_each_data_worker_gets_one_thread():
    loader = DataLoader(_Threads(), batch_size=None, num_workers=1, worker_init_fn=worker_init)
    assert [int(v) for v in loader] == [11, 11]
