"""ROCO (Radiology Objects in COntext, razorx89/roco-dataset): radiology figures and captions.

Reads, under SRC (the repository's `data/` folder or its parent):
- `{train,validation,test}/radiology/captions.txt`: one `ROCO_ID<TAB>caption` per line;
- the images `{train,validation,test}/radiology/images/{ROCO_ID}.jpg`.
Only the radiology subset is read. Held-out pairs follow M3AE: Options.eval_size (2,000) pairs
sampled (seeded) from the validation split and as many from the test split; all of train.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from vlp.data.prepare import Options, Record
from vlp.data.sample import DataError

SPLITS = {"train": "train", "validation": "val", "test": "test"}


def records(src: Path, options: Options) -> Iterator[Record]:
    root = src / "data" if (src / "data" / "train").is_dir() else src
    if not (root / "train" / "radiology" / "captions.txt").is_file():
        raise DataError(f"{src}: no train/radiology/captions.txt (ROCO's data/ layout)")
    for folder, split in SPLITS.items():
        base = root / folder / "radiology"
        captions = base / "captions.txt"
        if not captions.is_file():
            continue
        rows: list[tuple[str, str]] = []
        for line in captions.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            roco_id, _, caption = line.partition("\t")
            caption = " ".join(caption.split())
            if not caption:
                options.drop("empty_text")
                continue
            rows.append((roco_id.strip(), caption))
        if split != "train" and len(rows) > options.eval_size:
            picked = set(random.Random(options.seed).sample(range(len(rows)), options.eval_size))
            options.counts[f"not_sampled_{split}"] += len(rows) - len(picked)
            rows = [r for i, r in enumerate(rows) if i in picked]
        for roco_id, caption in rows:
            yield Record(roco_id, base / "images" / f"{roco_id}.jpg", caption, split)
