"""SIGINT and SIGTERM end training at a step boundary, with a checkpoint, instead of mid-step.

Schedulers (SLURM, Kubernetes) send SIGTERM some seconds before a kill; Ctrl-C sends SIGINT.
The handler only records the signal; the trainer asks `requested()` after each step. A second
signal restores the default behaviour, so pressing Ctrl-C twice still stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import torch

from vlp.core import distributed as D

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The signal received so far (0: none), agreed across ranks when asked."""

    def __init__(self) -> None:
        self.signal = 0
        self.group = None  # under DDP: a gloo group, so the per-step agreement is a CPU
        if D.is_distributed():  # all-reduce and never waits for the GPU (no host sync)
            gloo = torch.distributed.get_backend() == "gloo"
            self.group = None if gloo else torch.distributed.new_group(backend="gloo")

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        for sig in SIGNALS:  # the next one is not caught
            signal.signal(sig, signal.SIG_DFL)

    def requested(self) -> int:
        """The signal number if any rank received one, else 0; every rank gets the same answer
        (one tiny CPU all-reduce per step under DDP, nothing in a single process)."""
        if not D.is_distributed():
            return self.signal
        flag = torch.tensor([self.signal])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return int(flag.item())


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGINT/SIGTERM for the duration (main thread only; elsewhere nothing is caught)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
