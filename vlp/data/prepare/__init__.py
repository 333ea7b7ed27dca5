"""`vlp data prepare KIND SRC OUT`: vlp manifests from the published layout of a data set.

Each adapter module (one per data set) reads only the files its docstring names and yields
`Record`s; this module checks the images, drops duplicates, counts every dropped row by reason
and writes OUT/train.jsonl, OUT/val.jsonl, OUT/test.jsonl (columns image, text, study) and
OUT/prepare_report.json. With `resize`, a pre-resized PNG copy of every image is written under
OUT/images/ (shorter side = resize; 16-bit grey keeps its depth) and the manifests point there.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlp.data.images import DecodeError, check_image, decode_image
from vlp.data.sample import DataError
from vlp.files import write_text_atomic

KINDS = {"mimic_cxr": "mimic_cxr", "iu_xray": "iu_xray", "openi": "iu_xray", "roco": "roco",
         "medicat": "medicat", "pmc_oa": "pmc_oa"}
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Record:
    """One candidate row: the study it belongs to, its image file, report text and split."""

    study: str
    image: Path
    text: str
    split: str


@dataclass
class Options:
    """Adapter choices; the defaults follow the papers that use each data set."""

    sections: tuple[str, ...] = ("findings", "impression")  # MIMIC-CXR / IU X-Ray report parts
    val_fraction: float = 0.05  # hashed split by study, where the data set has none
    test_fraction: float = 0.05
    eval_size: int = 2000  # ROCO (M3AE protocol): val and test pairs sampled from each split
    seed: int = 0
    counts: Counter = field(default_factory=Counter)  # dropped rows by reason

    def drop(self, reason: str) -> None:
        self.counts[reason] += 1


def hashed_split(study: str, options: Options) -> str:
    """A split fixed by the study id alone (all images of one study land together)."""
    digest = hashlib.blake2b(f"{options.seed}:{study}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0 ** 64
    if u < options.test_fraction:
        return "test"
    return "val" if u < options.test_fraction + options.val_fraction else "train"


def image_index(root: Path) -> dict[str, Path]:
    """Image files under `root` by file name (one walk; adapters look names up)."""
    return {p.name: p for p in sorted(root.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def resized_copy(src: Path, dst: Path, size: int) -> None:
    """A PNG whose shorter side is `size` (never enlarged); 16-bit for grey images."""
    pixels = decode_image(src)
    h, w = pixels.shape[:2]
    scale = min(1.0, size / min(h, w))
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if pixels.ndim == 2:
        grey = Image.fromarray(pixels).resize(new, Image.Resampling.BILINEAR)
        out = Image.fromarray((np.clip(np.asarray(grey), 0, 1) * 65535).round()
                              .astype(np.uint16))
    else:
        out = Image.fromarray((pixels * 255).round().astype(np.uint8)).resize(
            new, Image.Resampling.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst)


def write_manifests(records: Iterable[Record], out: Path, options: Options,
                    resize: int | None = None) -> dict[str, int]:
    """Check and write the records; returns the rows written per split."""
    out.mkdir(parents=True, exist_ok=True)
    seen: set[Path] = set()
    rows: dict[str, list[str]] = {s: [] for s in SPLITS}
    for record in records:
        if record.image in seen:
            options.drop("duplicate_image")
            continue
        try:
            check_image(record.image)
        except DecodeError as exc:
            options.drop(exc.reason)
            continue
        seen.add(record.image)
        image = str(record.image.resolve())
        if resize:
            copy = Path("images") / record.split / f"{len(seen):08d}_{record.image.stem}.png"
            try:
                resized_copy(record.image, out / copy, resize)
            except DecodeError as exc:
                options.drop(exc.reason)
                continue
            image = str(copy)
        rows[record.split].append(json.dumps({"image": image, "text": record.text,
                                              "study": record.study}))
    for split, lines in rows.items():
        write_text_atomic(out / f"{split}.jsonl", "".join(line + "\n" for line in lines))
    return {split: len(lines) for split, lines in rows.items()}


def prepare(kind: str, src: Path, out: Path, options: Options | None = None,
            resize: int | None = None) -> dict[str, object]:
    """Run the adapter `kind` on `src`; writes the manifests and prepare_report.json."""
    if kind not in KINDS:
        raise DataError(f"unknown data set kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    options = options or Options()
    module = importlib.import_module(f"vlp.data.prepare.{KINDS[kind]}")
    adapter: Callable[[Path, Options], Iterator[Record]] = module.records
    written = write_manifests(adapter(src, options), out, options, resize)
    report = {"kind": kind, "source": str(src), "rows": written,
              "dropped": dict(sorted(options.counts.items()))}
    write_text_atomic(out / "prepare_report.json", json.dumps(report, indent=2) + "\n")
    return report
