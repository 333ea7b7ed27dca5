"""Task data: classification and VQA splits from the demo generator or from files.

Classification manifests (CSV/TSV/JSONL) give an image and either one column per label
(CheXpert style: 1, 0, -1 uncertain, blank = not mentioned = 0) or one labels column (class
names joined by a separator, or one class name for single-label tasks). VQA comes from a table
(image, question, answer, answer type) or the published VQA-RAD and SLAKE JSON layouts. Bad
rows are counted by reason and listed (file, row, reason), never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch.utils.data import Dataset

from vlp.data.demo import DemoDataset
from vlp.data.demo_tasks import FINDING_LABELS, demo_questions, finding_labels, task_split
from vlp.data.images import load_image
from vlp.data.manifest import BadRow, check_row_image, read_rows, split_indices
from vlp.data.sample import DataError, Pair
from vlp.plugins.base import Params

MAX_BAD_ROWS = 100
MAX_SPLIT = 1 << 32


def _existing(value: str | None) -> str | None:
    if value is not None and not Path(value).exists():
        raise ValueError(f"path does not exist: {value}")
    return value


# ----------------------------------------------------------------------------- configuration


class DemoClassData(Params):
    """The demo findings as a multi-label task (labels in vlp.data.demo_tasks.FINDING_LABELS)."""

    source: Literal["demo"] = "demo"
    train_size: int = Field(1000, ge=2, le=MAX_SPLIT)
    val_size: int = Field(200, ge=2, le=MAX_SPLIT)
    test_size: int = Field(400, ge=2, le=MAX_SPLIT)

    @property
    def class_names(self) -> list[str]:
        return list(FINDING_LABELS)

    @property
    def multi_label(self) -> bool:
        return True


class ManifestClassData(Params):
    """Classification files: `label_columns` (one per label) or `labels_column` + `classes`."""

    source: Literal["manifest"]
    train: str | None = None  # zero-shot needs only `test`
    val: str | None = None  # default: `val_fraction` of `train`, drawn with `seed`
    test: str
    image_root: str | None = None  # default: each file's folder
    format: Literal["csv", "tsv", "jsonl"] | None = None
    image_column: str = "image"
    id_column: str | None = None
    label_columns: list[str] | None = None  # multi-label, values 1 / 0 / -1 / blank
    labels_column: str | None = None  # class names; joined by `separator` if multi-label
    separator: str | None = None  # set: multi-label names list; unset: one class per row
    classes: list[str] | None = None  # with labels_column: the classes, in order
    uncertain: Literal["ignore", "positive", "negative"] = "ignore"  # policy for -1
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0

    @field_validator("train", "val", "test", "image_root")
    @classmethod
    def _paths_exist(cls, value: str | None) -> str | None:
        return _existing(value)

    @model_validator(mode="after")
    def _one_label_layout(self):
        if (self.label_columns is None) == (self.labels_column is None):
            raise ValueError("give exactly one of label_columns (one column per label) or "
                             "labels_column (class names)")
        if self.labels_column is not None and not self.classes:
            raise ValueError("labels_column needs `classes`: the class names, in order")
        if self.label_columns is not None and self.separator is not None:
            raise ValueError("separator applies to labels_column only")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class names must be unique")
        return self

    @property
    def class_names(self) -> list[str]:
        return list(self.label_columns or self.classes or [])

    @property
    def multi_label(self) -> bool:
        return self.label_columns is not None or self.separator is not None


ClassData = Annotated[DemoClassData | ManifestClassData, Field(discriminator="source")]


class DemoVQAData(Params):
    """Three questions per demo study (see vlp.data.demo_tasks.demo_questions)."""

    source: Literal["demo"] = "demo"
    train_size: int = Field(1000, ge=1, le=MAX_SPLIT)  # studies; 3 questions each
    test_size: int = Field(300, ge=1, le=MAX_SPLIT)


class ManifestVQAData(Params):
    """VQA files: a table (`layout: table`) or the VQA-RAD / SLAKE JSON layouts."""

    source: Literal["manifest"]
    layout: Literal["table", "vqa_rad", "slake"] = "table"
    train: str
    test: str | None = None  # vqa_rad without `test`: rows whose phrase_type starts "test"
    image_root: str | None = None  # default: each file's folder (SLAKE: its imgs/ folder)
    format: Literal["csv", "tsv", "jsonl"] | None = None  # table layout only
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str = "answer"
    answer_type_column: str = "answer_type"
    id_column: str | None = None
    language: str = "en"  # SLAKE: keep questions whose q_lang is this

    @field_validator("train", "test", "image_root")
    @classmethod
    def _paths_exist(cls, value: str | None) -> str | None:
        return _existing(value)

    @model_validator(mode="after")
    def _test_split(self):
        if self.test is None and self.layout != "vqa_rad":
            raise ValueError("`test` is required (only the vqa_rad layout splits one file)")
        return self


VQAData = Annotated[DemoVQAData | ManifestVQAData, Field(discriminator="source")]


# ----------------------------------------------------------------------------- splits


@dataclass
class BadRows:
    """Rows that could not be used, by reason, with the first MAX_BAD_ROWS listed."""

    counts: dict[str, int] = field(default_factory=dict)
    rows: list[tuple[str, int, str]] = field(default_factory=list)  # (file, row, reason)

    def add(self, path: object, row: int, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.rows) < MAX_BAD_ROWS:
            self.rows.append((str(path), row, reason))

    def merge(self, other: BadRows) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        self.rows.extend(other.rows[: MAX_BAD_ROWS - len(self.rows)])

    def to_dict(self) -> dict[str, object]:
        return {"skipped_rows": dict(sorted(self.counts.items())),
                "bad_rows": [list(r) for r in self.rows]}


def merged_bad_rows(splits: Iterable[ClassSplit | VQASplit]) -> BadRows:
    """The bad rows of several splits, each file counted once (subsets share their file's)."""
    out, seen = BadRows(), set()
    for split in splits:
        if id(split.bad) not in seen:
            seen.add(id(split.bad))
            out.merge(split.bad)
    return out


class _Images(Dataset[Pair]):
    """Item i: image i with text `texts[i]` (its question, or ''); picklable for workers."""

    def __init__(self, texts: list[str], paths: list[Path] | None = None, image_size: int = 0,
                 channels: int = 1, studies: DemoDataset | None = None,
                 owners: list[int] | None = None):
        self.texts, self.paths, self.image_size, self.channels = texts, paths, image_size, channels
        self.studies, self.owners = studies, owners

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> Pair:
        if self.studies is not None and self.owners is not None:  # demo: render the study
            image = self.studies[self.owners[index]].image
        else:
            assert self.paths is not None
            image = torch.from_numpy(np.ascontiguousarray(
                load_image(self.paths[index], self.channels, self.image_size)))
        return Pair(image=image, text=self.texts[index], sample_id=index)


@dataclass
class ClassSplit:
    """One classification split: images, their ids and labels, and the rows left out."""

    key: str  # names the images, so tasks share their frozen features
    images: Dataset[Pair]
    ids: list[str]
    labels: np.ndarray  # multi-label: (N, L) 0/1 with NaN = ignored; single: (N,) class index
    classes: list[str]
    multi_label: bool
    bad: BadRows = field(default_factory=BadRows)

    def subset(self, rows: np.ndarray, key: str) -> ClassSplit:
        from torch.utils.data import Subset

        return ClassSplit(key, Subset(self.images, rows.tolist()), [self.ids[i] for i in rows],
                          self.labels[rows], self.classes, self.multi_label, self.bad)


def _demo_class_split(data: DemoClassData, split: str, image_size: int, channels: int,
                      seed: int) -> ClassSplit:
    size = getattr(data, f"{split}_size")
    studies = task_split(split, size, image_size, seed, channels)
    labels = np.array([finding_labels(studies.findings(i)) for i in range(size)], np.float32)
    ids = [str(studies.offset + i) for i in range(size)]
    key = f"demo/{split}/seed={seed}/n={size}/{image_size}px/{channels}ch"
    return ClassSplit(key, studies, ids, labels, data.class_names, True)


_CHEXPERT = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": 0.0, "-1": -1.0, "-1.0": -1.0}


def _label_vector(values: dict[str, object], data: ManifestClassData) -> np.ndarray | float:
    """The row's labels, or raise BadRow (missing_label / unknown_label / bad_label)."""
    if data.label_columns is not None:
        out = []
        for column in data.label_columns:
            if column not in values:
                raise BadRow("missing_label", f"no {column!r} field")
            raw = values[column]
            cell = "" if raw is None else str(raw).strip()
            if cell not in _CHEXPERT:
                raise BadRow("bad_label", f"{column}={cell!r}: expected 1, 0, -1 or blank")
            value = _CHEXPERT[cell]
            if value < 0:
                value = {"ignore": np.nan, "positive": 1.0, "negative": 0.0}[data.uncertain]
            out.append(value)
        return np.array(out, np.float32)
    classes = data.classes or []
    column = data.labels_column or ""
    if column not in values or values[column] is None:
        raise BadRow("missing_label", f"no {column!r} field")
    cell = str(values[column]).strip()
    if data.separator is None:
        if cell not in classes:
            raise BadRow("unknown_label", f"{cell!r} is not one of the classes")
        return float(classes.index(cell))
    names = [n.strip() for n in cell.split(data.separator) if n.strip()]
    if unknown := [n for n in names if n not in classes]:
        raise BadRow("unknown_label", f"{unknown[0]!r} is not one of the classes")
    return np.array([float(c in names) for c in classes], np.float32)


def _read_class_file(data: ManifestClassData, path: Path, image_size: int, channels: int
                     ) -> ClassSplit:
    columns, records = read_rows(path, data.format)
    needed = [data.image_column, *(data.label_columns or [data.labels_column]),
              *([data.id_column] if data.id_column else [])]
    if missing := [c for c in needed if c not in columns]:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; columns "
                        f"found: {', '.join(map(repr, columns)) or 'none'}")
    root = Path(data.image_root) if data.image_root else path.parent
    bad, paths, ids, labels = BadRows(), [], [], []
    for row, _line, values, _problem in records:
        try:
            if values is None:
                raise BadRow("malformed_row", _problem)
            image = values.get(data.image_column)
            if not isinstance(image, str) or not image.strip():
                raise BadRow("missing_image", "empty image path")
            label = _label_vector(values, data)
            check_row_image(root / image.strip())
        except BadRow as exc:
            bad.add(path, row, exc.reason)
            continue
        paths.append(root / image.strip())
        ids.append(str(values[data.id_column]) if data.id_column else f"{path.name}:{row}")
        labels.append(label)
    key = f"manifest/{path.resolve()}/{root.resolve()}/{data.image_column}/{image_size}px/" \
          f"{channels}ch"
    images = _Images([""] * len(paths), paths, image_size, channels)
    array = np.array(labels, np.float32 if data.multi_label else np.int64)
    if data.multi_label:
        array = array.reshape(len(labels), len(data.class_names))
    return ClassSplit(key, images, ids, array, data.class_names, data.multi_label, bad)


def class_splits(data: DemoClassData | ManifestClassData, names: tuple[str, ...],
                 image_size: int, channels: int, seed: int = 0) -> dict[str, ClassSplit]:
    """The requested splits ("train", "val", "test") of a classification task."""
    if isinstance(data, DemoClassData):
        return {n: _demo_class_split(data, n, image_size, channels, seed) for n in names}
    out: dict[str, ClassSplit] = {}
    if "test" in names:
        out["test"] = _read_class_file(data, Path(data.test), image_size, channels)
    if "train" in names or "val" in names:
        if data.train is None:
            raise DataError("this task trains: its data needs a `train` file")
        train = _read_class_file(data, Path(data.train), image_size, channels)
        if data.val is not None:
            out["train"] = train
            out["val"] = _read_class_file(data, Path(data.val), image_size, channels)
        else:
            rest, held = split_indices(len(train.ids), data.val_fraction, data.seed)
            tag = f"/val_fraction={data.val_fraction}/seed={data.seed}"
            out["train"] = train.subset(np.array(rest, np.int64), train.key + tag + "/train")
            out["val"] = train.subset(np.array(held, np.int64), train.key + tag + "/val")
    return {n: out[n] for n in names}


# ----------------------------------------------------------------------------- VQA


@dataclass(frozen=True)
class VQASample:
    sample_id: str
    question: str
    answer: str  # normalised: stripped, lower case
    answer_type: str  # "closed" or "open"


@dataclass
class VQASplit:
    samples: list[VQASample]
    images: Dataset[Pair]  # item i: sample i's image with its question as the text
    bad: BadRows = field(default_factory=BadRows)
    filtered: int = 0  # rows of another language (SLAKE), left out by configuration


def _normal(answer: object) -> str:
    return " ".join(str(answer).lower().split())


def _demo_vqa_split(data: DemoVQAData, split: str, image_size: int, channels: int,
                    seed: int) -> VQASplit:
    size = getattr(data, f"{split}_size")
    studies = task_split(split, size, image_size, seed, channels)
    samples, owners = [], []
    for i in range(size):
        sid = studies.offset + i
        for k, q in enumerate(demo_questions(studies.findings(i), seed, sid)):
            samples.append(VQASample(f"{sid}:{k}", q.question, q.answer, q.answer_type))
            owners.append(i)
    images = _Images([s.question for s in samples], studies=studies, owners=owners)
    return VQASplit(samples, images)


# (image, question, answer, answer type, id, phrase type, language) fields of each layout
_LAYOUT_FIELDS = {"vqa_rad": ("image_name", "question", "answer", "answer_type", "qid",
                              "phrase_type", None),
                  "slake": ("img_name", "question", "answer", "answer_type", "qid", None,
                            "q_lang")}


def _json_rows(path: Path) -> list[tuple[int, dict[str, object] | None, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file: {exc}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of question objects")
    return [(i + 1, obj if isinstance(obj, dict) else None, "expected a JSON object")
            for i, obj in enumerate(data)]


def _read_vqa_file(data: ManifestVQAData, path: Path, image_size: int, channels: int,
                   keep: Callable[[str], bool] = lambda phrase: True) -> VQASplit:
    """One VQA file of any layout; `keep` selects rows by VQA-RAD phrase_type."""
    if data.layout == "table":
        fields = (data.image_column, data.question_column, data.answer_column,
                  data.answer_type_column, data.id_column, None, None)
        columns, records = read_rows(path, data.format)
        rows = [(row, values, problem) for row, _line, values, problem in records]
        if missing := [c for c in fields[:4] if c not in columns]:
            raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                            f"columns found: {', '.join(map(repr, columns)) or 'none'}")
        default_root = path.parent
    else:
        fields = _LAYOUT_FIELDS[data.layout]
        rows = _json_rows(path)
        default_root = path.parent / "imgs" if data.layout == "slake" else path.parent
    image_f, question_f, answer_f, type_f, id_f, phrase_f, lang_f = fields
    root = Path(data.image_root) if data.image_root else default_root
    bad, samples, paths, filtered = BadRows(), [], [], 0
    for row, values, problem in rows:
        try:
            if values is None:
                raise BadRow("malformed_row", problem)
            if phrase_f and not keep(str(values.get(phrase_f, ""))):
                continue
            if lang_f and str(values.get(lang_f, "")) != data.language:
                filtered += 1
                continue
            image, question = values.get(image_f), values.get(question_f)
            answer, kind = values.get(answer_f), _normal(values.get(type_f, ""))
            if not isinstance(image, str) or not image.strip():
                raise BadRow("missing_image", "empty image path")
            if not isinstance(question, str) or not question.strip():
                raise BadRow("empty_question", "empty question")
            if answer is None or not _normal(answer):
                raise BadRow("empty_answer", "empty answer")
            if kind not in ("open", "closed"):
                raise BadRow("bad_answer_type", f"answer type {kind!r} (open or closed)")
            check_row_image(root / image.strip())
        except BadRow as exc:
            bad.add(path, row, exc.reason)
            continue
        sid = str(values[id_f]) if id_f and values.get(id_f) is not None else f"{path.name}:{row}"
        samples.append(VQASample(sid, question.strip(), _normal(answer), kind))
        paths.append(root / image.strip())
    images = _Images([s.question for s in samples], paths, image_size, channels)
    return VQASplit(samples, images, bad, filtered)


def vqa_splits(data: DemoVQAData | ManifestVQAData, image_size: int, channels: int,
               seed: int = 0) -> tuple[VQASplit, VQASplit]:
    """(train, test) of a VQA task."""
    if isinstance(data, DemoVQAData):
        return (_demo_vqa_split(data, "train", image_size, channels, seed),
                _demo_vqa_split(data, "test", image_size, channels, seed))
    train_path = Path(data.train)
    if data.test is None:  # the public VQA-RAD file: test rows are phrase_type test_*
        return (_read_vqa_file(data, train_path, image_size, channels,
                               lambda phrase: not phrase.startswith("test")),
                _read_vqa_file(data, train_path, image_size, channels,
                               lambda phrase: phrase.startswith("test")))
    return (_read_vqa_file(data, train_path, image_size, channels),
            _read_vqa_file(data, Path(data.test), image_size, channels))
