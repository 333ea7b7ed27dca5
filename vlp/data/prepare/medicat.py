"""MedICaT (allenai/medicat): figures of PubMed Central papers with their captions.

Reads, under SRC:
- the release's JSON-lines file(s) `*.jsonl` at SRC's top level (e.g.
  s2_full_figures_oa_nonroco_combined_medcat_context_v1.jsonl): fields `pdf_hash`, `fig_uri`
  and `s2_caption` (and `radiology`, when only radiology figures are wanted);
- the figures `figures/{pdf_hash}_{fig_uri}`.
The study is the paper (pdf_hash), so figures of one paper share a split (hashed by paper).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vlp.data.prepare import Options, Record, hashed_split
from vlp.data.sample import DataError


def records(src: Path, options: Options) -> Iterator[Record]:
    files = sorted(src.glob("*.jsonl"))
    if not files:
        raise DataError(f"{src}: no *.jsonl (MedICaT's caption file)")
    seen: set[tuple[str, str]] = set()
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key = (str(entry["pdf_hash"]), str(entry["fig_uri"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                options.drop("malformed_row")
                continue
            if key in seen:
                options.drop("duplicate_figure")
                continue
            seen.add(key)
            caption = " ".join(str(entry.get("s2_caption") or "").split())
            if not caption:
                options.drop("empty_text")
                continue
            yield Record(key[0], src / "figures" / f"{key[0]}_{key[1]}", caption,
                         hashed_split(key[0], options))
