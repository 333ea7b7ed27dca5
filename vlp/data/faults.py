"""Rows whose image fails to decode when drawn: replaced deterministically, counted, reported.

The construction check cannot catch everything (a JPEG cut short verifies but does not decode),
and one such file must not stop a run. The replacement of item i is the next readable item
(i+1, i+2, ... in the data set's order), a function of the files alone, so every run and every
resume draws the same batch and exact resume holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from vlp.data.collate import Collator
from vlp.data.sample import DataError, Pair, UnreadableSample

MAX_REPLACEMENT_TRIES = 64  # this many unreadable rows in a row is a broken data set


@dataclass(frozen=True)
class Fault:
    """One row that could not be read when drawn."""

    source: str
    row: int
    reason: str
    detail: str


class Replacing(Dataset):
    """Items of `dataset` with each unreadable one replaced by the next readable one; yields
    (pair, faults met on the way)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Pair, tuple[Fault, ...]]:
        faults: list[Fault] = []
        n = len(self.dataset)
        for offset in range(min(n, MAX_REPLACEMENT_TRIES)):
            try:
                return self.dataset[(index + offset) % n], tuple(faults)
            except UnreadableSample as exc:
                faults.append(Fault(exc.source, exc.row, exc.reason, exc.detail))
        raise DataError(f"{len(faults)} consecutive rows could not be read (last: "
                        f"{faults[-1].source}: data row {faults[-1].row}: {faults[-1].detail})")


class Skipping(Dataset):
    """Items of `dataset` with each unreadable one left out (None): for held-out sets, where a
    replacement would count one pair twice. Yields (pair or None, faults)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Pair | None, tuple[Fault, ...]]:
        try:
            return self.dataset[index], ()
        except UnreadableSample as exc:
            return None, (Fault(exc.source, exc.row, exc.reason, exc.detail),)


class FaultCollator:
    """Collates the pairs (None: left out; no pair left: no batch) and passes the faults beside
    the batch, out of loader workers."""

    def __init__(self, collate: Collator):
        self.collate = collate

    def __call__(self, items: list[tuple[Pair | None, tuple[Fault, ...]]]):
        pairs = [pair for pair, _ in items if pair is not None]
        return (self.collate(pairs) if pairs else None), [f for _, fs in items for f in fs]


class FaultLog:
    """Distinct unreadable rows seen so far (each counted once) and how often one was drawn."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], Fault] = {}
        self.draws = 0

    def add(self, faults: list[Fault]) -> None:
        self.draws += len(faults)
        for fault in faults:
            self.rows.setdefault((fault.source, fault.row), fault)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(f.reason for f in self.rows.values()))

    def state(self) -> dict[str, Any]:
        """JSON-able (and weights_only-loadable) state for checkpoints and summary.json."""
        rows = sorted(self.rows.values(), key=lambda f: (f.source, f.row))
        return {"draws": self.draws,
                "rows": [[f.source, f.row, f.reason, f.detail] for f in rows]}

    def merge(self, state: dict[str, Any]) -> None:
        """Add a saved state (a checkpoint's, or another rank's)."""
        self.draws += int(state.get("draws", 0))
        for source, row, reason, detail in state.get("rows", []):
            self.rows.setdefault((str(source), int(row)),
                                 Fault(str(source), int(row), str(reason), str(detail)))


class FaultCountingLoader:
    """Iterates a DataLoader over `Replacing` or `Skipping` items: yields the batches, logs the
    faults."""

    def __init__(self, loader: DataLoader, log: FaultLog):
        self.loader, self.faults = loader, log

    def __iter__(self) -> Iterator:
        for batch, faults in self.loader:
            if faults:
                self.faults.add(faults)
            if batch is not None:
                yield batch

    def __len__(self) -> int:
        return len(self.loader)


def all_faults(log: FaultLog) -> FaultLog:
    """The faults every rank met (each rank draws its own share of the batches)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return log
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, log.state())
    merged = FaultLog()
    for state in states:
        merged.merge(state)
    return merged


def data_report(data: Any, faults: FaultLog) -> dict[str, Any]:
    """What summary.json says about the data (`data` is a DataSplits): rows read, trained on,
    held out, and those skipped by reason, at construction or when drawn."""
    skipped = dict(data.skipped)
    for reason, n in faults.by_reason().items():
        skipped[reason] = skipped.get(reason, 0) + n
    drawn = faults.state()
    return {
        "rows": {"read": data.rows_read, "trained_on": len(data.train) - len(faults.rows),
                 "held_out": len(data.val), "skipped": sum(skipped.values())},
        "skipped_rows": skipped,
        "bad_rows": [list(r) for r in data.bad_rows[:100]]
        + [[source, row, reason] for source, row, reason, _ in drawn["rows"][:100]],
        "bad_row_details": data.bad_row_details[:100] + [
            f"{source}: data row {row}: {reason} when drawn (replaced by the next readable "
            f"row): {detail}" for source, row, reason, detail in drawn["rows"][:100]],
        "unreadable_draws": drawn["draws"],
    }
