"""MIMIC-CXR (PhysioNet): frontal chest X-rays with their free-text reports.

Reads, under SRC:
- `mimic-cxr-2.0.0-metadata.csv` (or `.csv.gz`; MIMIC-CXR-JPG): columns dicom_id, subject_id,
  study_id, ViewPosition. Only frontal views (PA, AP) are kept.
- `mimic-cxr-2.0.0-split.csv` (or `.csv.gz`): columns dicom_id, split (train/validate/test).
- images `files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg` (MIMIC-CXR-JPG) or `.dcm`
  (MIMIC-CXR DICOM), whichever exists.
- reports `files/p{subject[:2]}/p{subject}/s{study}.txt` (from mimic-cxr-reports.zip, or the
  DICOM release, extracted into SRC), split into sections at upper-case headings such as
  FINDINGS: and IMPRESSION:; the text is the chosen sections joined.
One frontal image per study is kept (the first by dicom_id); the rest count as duplicate_study.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from vlp.data.prepare import Options, Record
from vlp.data.sample import DataError

FRONTAL = ("PA", "AP")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
HEADING = re.compile(r"^\s*([A-Z][A-Z /&-]+):", re.MULTILINE)


def sections(report: str) -> dict[str, str]:
    """Report sections by lower-case heading ('findings', 'impression', ...)."""
    found = list(HEADING.finditer(report))
    out: dict[str, str] = {}
    for match, following in zip(found, [*found[1:], None]):
        end = following.start() if following else len(report)
        body = " ".join(report[match.end():end].split())
        name = match.group(1).strip().lower()
        out[name] = f"{out[name]} {body}".strip() if name in out else body
    return out


def report_text(report: str, wanted: tuple[str, ...]) -> str:
    parts = sections(report)
    return " ".join(parts[name] for name in wanted if parts.get(name))


def _csv(src: Path, stem: str) -> list[dict[str, str]]:
    for name, opener in ((f"{stem}.csv", open), (f"{stem}.csv.gz", gzip.open)):
        if (src / name).is_file():
            with opener(src / name, "rt", newline="") as fh:
                return list(csv.DictReader(fh))
    raise DataError(f"{src}: neither {stem}.csv nor {stem}.csv.gz found")


def records(src: Path, options: Options) -> Iterator[Record]:
    split_of = {r["dicom_id"]: SPLIT_NAMES.get(r["split"], "") for r in
                _csv(src, "mimic-cxr-2.0.0-split")}
    chosen: dict[str, dict[str, str]] = {}
    for row in sorted(_csv(src, "mimic-cxr-2.0.0-metadata"), key=lambda r: r["dicom_id"]):
        if row.get("ViewPosition", "") not in FRONTAL:
            options.drop("not_frontal")
        elif not split_of.get(row["dicom_id"]):
            options.drop("no_split")
        elif row["study_id"] in chosen:
            options.drop("duplicate_study")
        else:
            chosen[row["study_id"]] = row
    for study, row in chosen.items():
        subject = row["subject_id"]
        folder = src / "files" / f"p{subject[:2]}" / f"p{subject}"
        report = folder / f"s{study}.txt"
        if not report.is_file():
            options.drop("missing_report")
            continue
        text = report_text(report.read_text(encoding="utf-8", errors="replace"),
                           options.sections)
        if not text:
            options.drop("empty_sections")
            continue
        image = folder / f"s{study}" / f"{row['dicom_id']}.jpg"
        if not image.is_file() and image.with_suffix(".dcm").is_file():
            image = image.with_suffix(".dcm")
        yield Record(study, image, text, split_of[row["dicom_id"]])
