"""PMC-OA (axiong/pmc_oa): sub-figures of PubMed Central papers with their sub-captions.

Reads, under SRC:
- `train.jsonl`, `valid.jsonl`, `test.jsonl` (the official split) if present, else
  `pmc_oa.jsonl` (split by a hash of the paper id): fields `image` and `caption` (and
  `pmcid`, else the paper id is the image name's part before the first `_`);
- the images, by the `image` file name, anywhere under SRC (images.zip extracted there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vlp.data.prepare import Options, Record, hashed_split, image_index
from vlp.data.sample import DataError

OFFICIAL = {"train.jsonl": "train", "valid.jsonl": "val", "test.jsonl": "test"}


def records(src: Path, options: Options) -> Iterator[Record]:
    official = [(src / name, split) for name, split in OFFICIAL.items() if (src / name).is_file()]
    listed = official or [(src / "pmc_oa.jsonl", None)]
    if not listed[0][0].is_file():
        raise DataError(f"{src}: neither train/valid/test.jsonl nor pmc_oa.jsonl found")
    images = image_index(src)
    for path, split in listed:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                name = str(entry["image"])
            except (json.JSONDecodeError, KeyError, TypeError):
                options.drop("malformed_row")
                continue
            caption = " ".join(str(entry.get("caption") or "").split())
            if not caption:
                options.drop("empty_text")
                continue
            paper = str(entry.get("pmcid") or name.split("_")[0])
            image = images.get(Path(name).name, src / name)
            yield Record(paper, image, caption, split or hashed_split(paper, options))
