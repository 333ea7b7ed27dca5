"""Image-report pairs listed in a manifest file (CSV, TSV or JSON lines).

Rows are checked once, at construction: bad rows are skipped and counted by reason (or, with
``strict=True``, the first one raises), so a data set never fails halfway through training.
Row numbers are 1-based data rows: the CSV/TSV header and blank lines are not counted.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vlp.data.images import DecodeError, check_image, load_image
from vlp.data.sample import DataError, Pair, UnreadableSample

FORMATS = ("csv", "tsv", "jsonl")
REASONS = ("missing_image", "unreadable_image", "empty_text", "malformed_row")
MAX_BAD_ROWS = 100
_SUFFIX_FORMAT = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
                  ".ndjson": "jsonl"}


@dataclass(frozen=True)
class _Record:
    """One data row as read: ``values`` is None when the row could not be parsed."""

    row: int  # 1-based data row
    line: int  # 1-based line of the file where the row ends
    values: dict[str, object] | None
    problem: str = ""


@dataclass(frozen=True)
class _Entry:
    """A checked row: the image file, the report and the sample id."""

    row: int
    image: Path
    text: str
    sample_id: int
    group: str | None = None  # patient or study the row belongs to


class _BadRow(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def stable_id(value: object) -> int:
    """Integers in [0, 2**63) (and their canonical decimal strings, as CSV cells hold them) are
    kept as is; any other value maps to a stable 63-bit int: 8 bytes of blake2b of its text."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63:
        return value
    text = str(value)
    if text.isascii() and text.isdigit() and str(int(text)) == text and int(text) < 1 << 63:
        return int(text)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def infer_format(path: Path, fmt: str | None) -> str:
    """``fmt`` if given, else the format the file suffix names."""
    if fmt is None:
        fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: cannot infer the manifest format from the suffix "
                             f"{path.suffix!r}; pass fmt as one of {FORMATS}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r}; expected one of {FORMATS}")
    return fmt


def _bad_byte(texts: list[str]) -> str:
    """A problem naming the first byte that is not UTF-8 (read as a lone surrogate), or ''."""
    for field, text in enumerate(texts, start=1):
        for column, char in enumerate(text, start=1):
            if "\udc80" <= char <= "\udcff":
                within = f"field {field}, character" if len(texts) > 1 else "character"
                return f"not UTF-8: byte 0x{ord(char) - 0xDC00:02x} at {within} {column}"
    return ""


def _read_delimited(path: Path, delimiter: str) -> tuple[list[str], list[_Record]]:
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next((row for row in reader if row), None)
        if header is None:
            raise DataError(f"{path}: empty manifest, no header row")
        header = [name.strip() for name in header]
        records: list[_Record] = []
        try:
            for fields in reader:
                if not fields:
                    continue
                n = len(records) + 1
                if problem := _bad_byte(fields):
                    records.append(_Record(n, reader.line_num, None, problem))
                elif len(fields) != len(header):
                    problem = f"expected {len(header)} fields, found {len(fields)}"
                    records.append(_Record(n, reader.line_num, None, problem))
                else:
                    records.append(_Record(n, reader.line_num, dict(zip(header, fields,
                                                                        strict=True))))
        except csv.Error as exc:
            raise DataError(f"{path}: data row {len(records) + 1} (1-based, header excluded; "
                            f"line {reader.line_num}): {exc}") from exc
    return header, records


def _read_jsonl(path: Path) -> tuple[list[str], list[_Record]]:
    columns: dict[str, None] = {}
    records: list[_Record] = []
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            n = len(records) + 1
            if problem := _bad_byte([line]):
                records.append(_Record(n, line_no, None, problem))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                records.append(_Record(n, line_no, None, f"invalid JSON: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                records.append(_Record(n, line_no, None, "expected a JSON object"))
                continue
            columns.update(dict.fromkeys(obj))
            records.append(_Record(n, line_no, obj))
    return list(columns), records


def _read_manifest(path: Path, fmt: str) -> tuple[list[str], list[_Record]]:
    """The column names (header, or every key seen in JSONL) and the data rows; a row with
    bytes that are not UTF-8 is a malformed row, the others are kept."""
    if fmt == "jsonl":
        return _read_jsonl(path)
    return _read_delimited(path, "\t" if fmt == "tsv" else ",")


def manifest_problems(path: Path, fmt: str | None, image_column: str, text_column: str,
                      id_column: str | None, group_column: str | None = None
                      ) -> list[tuple[str | None, str]]:
    """What a recipe check can find without opening an image: (recipe key under `data.`, or
    None for the file's own key; reason) for unknown columns and a manifest without rows."""
    try:
        columns, records = _read_manifest(path, infer_format(path, fmt))
    except (ValueError, DataError) as exc:
        return [(None, str(exc))]
    found = ", ".join(repr(c) for c in columns) or "none"
    problems: list[tuple[str | None, str]] = [
        (key, f"{path} has no column {name!r} (columns found: {found})")
        for key, name in (("image_column", image_column), ("text_column", text_column),
                          ("id_column", id_column), ("group_column", group_column))
        if name is not None and name not in columns]
    if not records:
        problems.append((None, f"{path} holds no data rows"))
    return problems


def _check_image(path: Path) -> None:
    try:
        check_image(path)
    except DecodeError as exc:  # no pixel data, unsupported compression, ... are unreadable
        reason = "missing_image" if exc.reason == "missing_image" else "unreadable_image"
        raise _BadRow(reason, str(exc)) from exc


class ManifestDataset(Dataset[Pair]):
    """Pairs from a manifest; image paths are relative to ``image_root`` (default: its folder).

    After construction: ``num_rows`` data rows were read, ``len(self)`` of them are usable,
    ``skipped`` counts the rest by reason and ``bad_rows`` lists (row, reason), at most 100.
    A row's checks run in the order malformed_row, empty_text, missing_image, unreadable_image.
    """

    def __init__(self, path: str | Path, image_root: str | Path | None = None,
                 image_column: str = "image", text_column: str = "text",
                 id_column: str | None = None, image_size: int = 224, in_chans: int = 1,
                 strict: bool = False, fmt: str | None = None, group_column: str | None = None):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.path = Path(path)
        self.format = infer_format(self.path, fmt)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.image_column, self.text_column, self.id_column = image_column, text_column, id_column
        self.group_column = group_column
        self.image_size, self.in_chans, self.strict = image_size, in_chans, strict
        columns, records = _read_manifest(self.path, self.format)
        self._check_columns(columns)
        self.num_rows = len(records)
        self.skipped: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.bad_rows: list[tuple[int, str]] = []
        self.bad_row_details: list[str] = []  # "file: data row r (...; line l): reason: why"
        self._entries: list[_Entry] = []
        for record in records:
            try:
                self._entries.append(self._entry(record))
            except _BadRow as bad:
                self._reject(record, bad)
        self.texts: list[str] = [e.text for e in self._entries]
        self.groups: list[str | None] = [e.group for e in self._entries]

    def _check_columns(self, columns: list[str]) -> None:
        wanted = [self.image_column, self.text_column]
        wanted += [c for c in (self.id_column, self.group_column) if c is not None]
        missing = [name for name in wanted if name not in columns]
        if missing:
            found = ", ".join(repr(c) for c in columns) or "none"
            raise DataError(f"{self.path}: missing column(s) {', '.join(map(repr, missing))}; "
                            f"columns found: {found}")

    def _where(self, record: _Record) -> str:
        header = "header excluded" if self.format != "jsonl" else "blank lines not counted"
        return f"{self.path}: data row {record.row} (1-based, {header}; line {record.line})"

    def _field(self, values: dict[str, object], column: str) -> object:
        if column not in values:
            raise _BadRow("malformed_row", f"no {column!r} field")
        return values[column]

    def _entry(self, record: _Record) -> _Entry:
        if record.values is None:
            raise _BadRow("malformed_row", record.problem)
        image = self._field(record.values, self.image_column)
        text = self._field(record.values, self.text_column)
        if not isinstance(image, str) or not isinstance(text, str | None):
            raise _BadRow("malformed_row", "image path and text must be strings")
        sample_id = record.row
        if self.id_column is not None:
            raw_id = self._field(record.values, self.id_column)
            if raw_id is None or str(raw_id).strip() == "":
                raise _BadRow("malformed_row", f"empty {self.id_column!r}")
            sample_id = stable_id(raw_id.strip() if isinstance(raw_id, str) else raw_id)
        group = None
        if self.group_column is not None:
            raw_group = self._field(record.values, self.group_column)
            if raw_group is None or str(raw_group).strip() == "":
                raise _BadRow("malformed_row", f"empty {self.group_column!r}")
            group = str(raw_group).strip()
        if text is None or not text.strip():
            raise _BadRow("empty_text", "empty report text")
        if not image.strip():
            raise _BadRow("missing_image", "empty image path")
        image_path = self.image_root / image.strip()  # an absolute path replaces the root
        _check_image(image_path)
        return _Entry(record.row, image_path, text, sample_id, group)

    def _reject(self, record: _Record, bad: _BadRow) -> None:
        if self.strict:
            raise DataError(f"{self._where(record)}: {bad.reason}: {bad.detail}")
        self.skipped[bad.reason] += 1
        if len(self.bad_rows) < MAX_BAD_ROWS:
            self.bad_rows.append((record.row, bad.reason))
            self.bad_row_details.append(f"{self._where(record)}: {bad.reason}: {bad.detail}")

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, index: int) -> _Entry:
        """The checked row behind item `index` (its image path, report and id)."""
        return self._entries[index]

    def __getitem__(self, index: int) -> Pair:
        entry = self._entries[index]
        try:
            image = load_image(entry.image, self.in_chans, self.image_size)
        except DecodeError as exc:  # removed, truncated or undecodable after the check: the
            # loader replaces the row and counts it by the decoder's reason (no_pixel_data, ...)
            detail = (f"image file not found: {entry.image}" if exc.reason == "missing_image"
                      else f"cannot decode image {entry.image}: {exc.detail}")
            raise UnreadableSample(str(self.path), entry.row, exc.reason, detail) from exc
        return Pair(image=torch.from_numpy(np.ascontiguousarray(image)), text=entry.text,
                    sample_id=entry.sample_id)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) split of range(n), each sorted; both non-empty when n >= 2."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 or n < 2 else min(max(round(n * val_fraction), 1), n - 1)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def read_rows(path: Path, fmt: str | None = None
              ) -> tuple[list[str], list[tuple[int, int, dict[str, object] | None, str]]]:
    """Column names and (row, line, values or None, problem) of any manifest, for other readers
    (e.g. downstream task files); rows numbered as in ManifestDataset."""
    columns, records = _read_manifest(path, infer_format(path, fmt))
    return columns, [(r.row, r.line, r.values, r.problem) for r in records]


# For other readers of image files (downstream task manifests): the same row check.
BadRow = _BadRow
check_row_image = _check_image  # raises BadRow(missing_image | unreadable_image)

def split_groups(groups: list[str], val_fraction: float, seed: int
                 ) -> tuple[list[int], list[int]]:
    """(train, val) indices where every group (patient, study) lies on one side only.

    Groups are drawn in a seeded random order into the held-out side until it holds about
    `val_fraction` of the rows; both sides non-empty when there are at least two groups.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    names = sorted(members)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(names))
    target = len(groups) * val_fraction
    held: list[int] = []
    for taken, position in enumerate(order):
        if held and (len(held) >= target or taken == len(names) - 1):
            break
        held.extend(members[names[position]])
    held_set = set(held)
    return [i for i in range(len(groups)) if i not in held_set], sorted(held)
