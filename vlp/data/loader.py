"""Data sets from a recipe, and a sampler whose batch at step s depends only on (seed, s).

Batches are a pure function of the step, so resuming at step s needs no replay of the data
order, and each rank takes its contiguous slice of the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset

from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.faults import FaultCollator, FaultCountingLoader, FaultLog, Replacing, Skipping
from vlp.data.manifest import ManifestDataset, split_groups, split_indices
from vlp.data.sample import DataError, Pair
from vlp.seeding import mix_seed

if TYPE_CHECKING:  # the recipe's data sections; data sits below core and never imports it
    from vlp.core.recipe import DemoData, ManifestData, WebDatasetData


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    train_texts: list[str]
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows, by reason
    bad_rows: list[tuple[str, int, str]] = field(default_factory=list)  # (file, row, reason)
    bad_row_details: list[str] = field(default_factory=list)  # each naming its row and line
    rows_read: int = 0  # data rows in the manifest files (demo: the pairs generated)


def _manifest(spec: ManifestData, path: str | Path) -> ManifestDataset:
    return ManifestDataset(path, image_root=spec.image_root, image_column=spec.image_column,
                           text_column=spec.text_column, id_column=spec.id_column,
                           image_size=spec.image_size, in_chans=spec.channels,
                           strict=spec.strict, fmt=spec.format, group_column=spec.group_column)


def manifest_for_run(spec: DemoData | ManifestData, path: str | Path) -> ManifestDataset:
    """A separate test manifest read with a run's data settings (columns, image root, size);
    after a demo run, the default columns `image` and `text`, images beside the manifest."""
    if spec.source == "manifest":
        return _manifest(spec.model_copy(update={"group_column": None, "format": None}), path)
    return ManifestDataset(path, image_size=spec.image_size, in_chans=spec.channels)


def _shards(spec: WebDatasetData) -> DataSplits:
    """A shard stream for training, held-out shards in memory; bad rows counted at sharding."""
    from vlp.data.shards import ShardPairs, ShardStream, expand, first_texts, read_index

    shards, skipped = read_index(expand(spec.urls))
    train = ShardStream(shards, spec.image_size, spec.channels)
    val = ShardPairs(expand(spec.val_urls), spec.image_size, spec.channels)
    return DataSplits(train, val, first_texts(shards, spec.tokenizer_samples), skipped,
                      rows_read=len(train) + sum(skipped.values()))


def build_datasets(spec: DemoData | ManifestData | WebDatasetData) -> DataSplits:
    """Training and held-out sets; bad manifest rows are counted, never silently dropped."""
    if spec.source == "webdataset":
        return _shards(spec)
    if spec.source == "demo":
        train = DemoDataset(spec.train_size, spec.image_size, spec.seed, spec.channels)
        val = DemoDataset(spec.val_size, spec.image_size, spec.seed, spec.channels,
                          offset=spec.train_size)
        return DataSplits(train, val, demo_reports(spec.train_size, spec.seed),
                          rows_read=spec.train_size + spec.val_size)
    full = _manifest(spec, spec.path)
    sets = [full]
    if spec.val_path:
        train, val = full, _manifest(spec, spec.val_path)
        sets.append(val)
        train_idx = list(range(len(full)))
    else:
        train_idx, val_idx = (split_groups(full.groups, spec.val_fraction, spec.seed)
                              if spec.group_column else
                              split_indices(len(full), spec.val_fraction, spec.seed))
        train, val = Subset(full, train_idx), Subset(full, val_idx)
    skipped: dict[str, int] = {}
    bad: list[tuple[str, int, str]] = []
    details = [d for ds in sets for d in ds.bad_row_details]
    for ds, path in zip(sets, [spec.path, spec.val_path]):
        for reason, n in ds.skipped.items():
            if n:
                skipped[reason] = skipped.get(reason, 0) + n
        bad.extend((str(path), row, reason) for row, reason in ds.bad_rows)
    texts = [full.texts[i] for i in train_idx]
    return DataSplits(train, val, texts, skipped, bad, details, sum(ds.num_rows for ds in sets))


def worker_init(_worker_id: int) -> None:
    """DataLoader worker start: one torch thread, tokenisation without its own thread pool
    (the main process's share of cores is set by vlp.core.threads)."""
    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


class StepBatchSampler(Sampler[list[int]]):
    """Index lists for steps start..total-1: epoch-wise permutations seeded by (seed, epoch)."""

    def __init__(self, n: int, global_batch: int, seed: int, start: int, total: int,
                 rank: int = 0, world: int = 1):
        if global_batch > n:
            raise DataError(f"trainer.batch_size {global_batch} exceeds the training set "
                            f"({n} usable pairs)")
        self.n, self.batch, self.seed = n, global_batch, seed
        self.start, self.total, self.rank, self.world = start, total, rank, world
        self.per_epoch = n // global_batch
        self.local = global_batch // world

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order, computed once per epoch."""
        if getattr(self, "_epoch", None) != epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.per_epoch)
        begin = within * self.batch + self.rank * self.local
        return self.permutation(epoch)[begin: begin + self.local].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            yield self.indices(step)

    def __len__(self) -> int:
        return self.total - self.start


def train_loader(data: DataSplits, collate: Collator, global_batch: int, seed: int, start: int,
                 total: int, num_workers: int, rank: int, world: int, pin: bool,
                 faults: FaultLog | None = None) -> FaultCountingLoader:
    """Batches of steps start..total-1; rows unreadable when drawn are replaced and counted in
    the returned loader's `faults`. The loader's own generator (worker seeds) is seeded from
    `seed`, so starting it draws nothing from the global RNG that dropout uses."""
    own_rng = {"worker_init_fn": worker_init,
               "generator": torch.Generator().manual_seed(mix_seed(seed, "loader", start))}
    if isinstance(data.train, IterableDataset):  # a shard stream splits and resumes itself
        return FaultCountingLoader(data.train.loader(collate, global_batch, seed, start, total,
                                                     num_workers, rank, world, pin, **own_rng),
                                   FaultLog() if faults is None else faults)
    sampler = StepBatchSampler(len(data.train), global_batch, seed, start, total, rank, world)
    loader = DataLoader(Replacing(data.train), batch_sampler=sampler,
                        collate_fn=FaultCollator(collate), num_workers=num_workers,
                        pin_memory=pin, persistent_workers=num_workers > 0, **own_rng)
    return FaultCountingLoader(loader, FaultLog() if faults is None else faults)


def probe_pairs(data: DataSplits, count: int = 2) -> list[Pair]:
    """A few readable pairs for checks before the first step: training pairs (an unreadable
    one replaced, as in training), or held-out ones where training is a shard stream."""
    source = data.val if isinstance(data.train, IterableDataset) else data.train
    readable = Replacing(source)
    return [readable[i][0] for i in range(min(count, len(readable)))]


def eval_loader(dataset: Dataset, collate: Collator, batch_size: int, num_workers: int
                ) -> FaultCountingLoader:
    """Held-out batches in order; pairs unreadable when drawn are left out and counted in the
    returned loader's `faults`."""
    loader = DataLoader(Skipping(dataset), batch_size=batch_size, shuffle=False,
                        collate_fn=FaultCollator(collate), num_workers=num_workers,
                        worker_init_fn=worker_init)
    return FaultCountingLoader(loader, FaultLog())
