"""IU X-Ray / OpenI (NLM): chest X-ray reports as XML with the PNG images they name.

Reads, under SRC:
- every `*.xml` report (NLMCXR_reports.tgz extracts to `ecgen-radiology/1.xml`, ...): the
  `AbstractText` elements labelled FINDINGS and IMPRESSION (the chosen sections, joined), the
  report id `uId/@id`, and each `parentImage/@id` it shows;
- the images `{parentImage id}.png` anywhere under SRC (NLMCXR_png.tgz).
Each image of a report is a row with the report's id as its study, so the frontal and lateral
views of one study are never each other's negatives. There is no official split: studies are
split by a hash of their id (Options.val_fraction, test_fraction).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from vlp.data.prepare import Options, Record, hashed_split, image_index


def records(src: Path, options: Options) -> Iterator[Record]:
    images = image_index(src)
    seen: set[str] = set()
    for path in sorted(src.rglob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            options.drop("unreadable_report")
            continue
        uid = root.find("uId")
        study = uid.get("id", "") if uid is not None else path.stem
        if study in seen:
            options.drop("duplicate_study")
            continue
        seen.add(study)
        parts = {(e.get("Label") or "").lower(): " ".join((e.text or "").split())
                 for e in root.iter("AbstractText")}
        text = " ".join(parts[name] for name in options.sections if parts.get(name))
        shown = [e.get("id", "") for e in root.iter("parentImage")]
        if not text:
            options.drop("empty_sections")
            continue
        if not shown:
            options.drop("no_image")
            continue
        split = hashed_split(study, options)
        for image_id in shown:
            found = images.get(f"{image_id}.png")
            yield Record(study, found or src / f"{image_id}.png", text, split)
