"""Tar shards (the `webdataset` format) for data sets past one machine's memory.

`write_shards` turns a checked manifest into `shard-000000.tar`, ... plus `index.json` (sample
counts per shard, the manifest's bad rows). Each sample holds the image file's own bytes
(PNG, JPEG or DICOM, so depth survives), `txt` (the report) and `json` ({"id": sample id}).

Reading (`ShardStream`): rank r takes shards r, r + world, ...; within a rank, DataLoader worker
role w takes every W-th of those shards (W = max(1, num_workers)) and makes every W-th batch, so
no sample is read twice. Each role walks its shards in an order drawn from (seed, rank, role,
epoch) and cycles through epochs without end. Batch k of a rank is therefore a pure function of
(shards, seed, world, num_workers, k): resuming at step s skips to exactly where the
interrupted run was (whole shards are skipped by their counts, without being read), so a
resumed run sees the very batches the uninterrupted one would have.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from vlp.data.collate import Collator
from vlp.data.images import DecodeError, load_image_bytes
from vlp.data.sample import DataError, Pair
from vlp.files import write_text_atomic

IMAGE_EXTS = ("png", "jpg", "jpeg", "dcm", "dicom", "tif", "tiff", "bmp")
INDEX = "index.json"


def _wds() -> Any:
    try:
        import webdataset
    except ImportError:
        raise DataError("tar shards need webdataset: pip install -e '.[wds]'") from None
    return webdataset


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


def write_shards(dataset: Any, out: Path, shard_size: int = 1000, seed: int = 0
                 ) -> dict[str, Any]:
    """Write a ManifestDataset's usable rows, shuffled by `seed`, as tar shards of
    `shard_size` samples into `out`; returns (and writes) the index."""
    wds = _wds()
    out.mkdir(parents=True, exist_ok=True)
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)  # shards mix the manifest's order once, at writing
    shards: list[dict[str, Any]] = []
    for first in range(0, len(order), shard_size):
        name = f"shard-{len(shards):06d}.tar"
        part = order[first:first + shard_size]
        with wds.TarWriter(str(out / name)) as sink:
            for index in part:
                entry = dataset.entry(index)
                sink.write({"__key__": f"{index:09d}",
                            entry.image.suffix.lower().lstrip(".") or "png":
                                entry.image.read_bytes(),
                            "txt": entry.text, "json": {"id": entry.sample_id}})
        shards.append({"url": name, "samples": len(part)})
    index = {"source": str(dataset.path), "total": len(order), "shards": shards,
             "skipped": {k: v for k, v in dataset.skipped.items() if v},
             "bad_rows": [list(r) for r in dataset.bad_rows]}
    write_text_atomic(out / INDEX, json.dumps(index, indent=2) + "\n")
    return index


def expand(urls: str | list[str]) -> list[str]:
    """Brace-expanded shard URLs or paths, in order."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    return [u for item in listed for u in _wds().shardlists.expand_urls(item)]


def read_index(urls: list[str]) -> tuple[list[Shard], dict[str, int]]:
    """Sample counts of each shard (from index.json beside local shards, else by reading it
    once: any URL webdataset opens) and the bad rows counted when the shards were written."""
    folder = Path(urls[0]).parent
    index: dict[str, Any] = {}
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
    known = {str(folder / s["url"]): int(s["samples"]) for s in index.get("shards", [])}
    shards = [Shard(u, known[u] if u in known else sum(1 for _ in samples(u))) for u in urls]
    return shards, dict(index.get("skipped", {}))


def samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in written order."""
    from webdataset.tariterators import tarfile_samples

    yield from tarfile_samples([{"url": url}])


def to_pair(sample: dict[str, Any], in_chans: int, size: int) -> Pair:
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    name = f"{sample.get('__url__')}:{sample.get('__key__')}"
    try:
        if ext is None:
            raise DecodeError(name, "missing_image", "no image in this sample")
        image = load_image_bytes(sample[ext], ext, in_chans, size, name)
        text = sample["txt"].decode("utf-8")
        sample_id = int(json.loads(sample["json"])["id"])
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: malformed sample: {exc}") from exc
    return Pair(torch.from_numpy(image), text, sample_id)


class ShardStream(IterableDataset):
    """Training batches streamed from tar shards, split across ranks and loader workers."""

    def __init__(self, shards: list[Shard], image_size: int, in_chans: int):
        if not shards:
            raise DataError("webdataset: no shards")
        self.shards, self.image_size, self.in_chans = shards, image_size, in_chans
        self.configure(None, 1, 0, 0, 0, 0, 1, 1)

    def configure(self, collate: Collator | None, local_batch: int, seed: int, start: int,
                  total: int, rank: int, world: int, roles: int) -> None:
        mine = self.shards[rank::world]
        if len(mine) < roles:
            raise DataError(f"webdataset: rank {rank} of {world} has {len(mine)} shard(s) for "
                            f"{roles} loader worker(s); write smaller shards (vlp data shard "
                            "--shard-size) or use fewer data.num_workers")
        self.collate, self.batch, self.seed = collate, local_batch, seed
        self.start, self.total, self.rank, self.roles = start, total, rank, roles
        self.mine = mine

    def role_stream(self, role: int, skip: int) -> Iterator[dict[str, Any]]:
        """Endless samples of one role's shards (epoch by epoch), after skipping `skip`."""
        shards = self.mine[role::self.roles]
        if sum(s.samples for s in shards) == 0:
            raise DataError(f"webdataset: the shards of rank {self.rank}, worker {role} are "
                            "empty")
        epoch = 0
        while True:
            order = list(shards)
            random.Random(f"{self.seed}-{self.rank}-{role}-{epoch}").shuffle(order)
            for shard in order:
                if skip >= shard.samples:  # skipped whole, without reading it
                    skip -= shard.samples
                    continue
                for sample in samples(shard.url):
                    if skip:
                        skip -= 1
                        continue
                    yield sample
            epoch += 1

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        # the j-th batch after `start` comes from worker j % W: it is rank-local batch
        # start + j, made by role (start + j) % W as that role's batch (start + j) // W
        first = self.start + worker
        role = first % self.roles
        stream = self.role_stream(role, (first // self.roles) * self.batch)
        for _ in range(first, self.total, self.roles):
            pairs = [to_pair(next(stream), self.in_chans, self.image_size)
                     for _ in range(self.batch)]
            yield self.collate(pairs), []  # (batch, faults): shard rows were checked

    def __len__(self) -> int:
        """Training pairs in all shards (every rank's)."""
        return sum(s.samples for s in self.shards)

    def loader(self, collate: Collator, global_batch: int, seed: int, start: int, total: int,
               num_workers: int, rank: int, world: int, pin: bool, **options: Any
               ) -> DataLoader:
        """A DataLoader of the batches for steps start..total-1 of this rank; `options` go to
        the DataLoader (its own seeded generator, so starting it draws no global RNG)."""
        self.configure(collate, global_batch // world, seed, start, total, rank, world,
                       max(1, num_workers))
        return DataLoader(self, batch_size=None, num_workers=num_workers, pin_memory=pin,
                          **options)


class ShardPairs(Dataset[Pair]):
    """A small shard set (held-out pairs) read into memory once, decoded per item."""

    def __init__(self, urls: list[str], image_size: int, in_chans: int):
        self.items = [s for url in urls for s in samples(url)]
        self.image_size, self.in_chans = image_size, in_chans
        self.texts = [s["txt"].decode("utf-8") for s in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Pair:
        return to_pair(self.items[index], self.in_chans, self.image_size)


def first_texts(shards: list[Shard], limit: int) -> list[str]:
    """Reports of the first `limit` training samples (to train a tokenizer on)."""
    texts: list[str] = []
    for shard in shards:
        for sample in samples(shard.url):
            texts.append(sample["txt"].decode("utf-8"))
            if len(texts) >= limit:
                return texts
    return texts
