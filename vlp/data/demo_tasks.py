"""Downstream tasks on the demo data, from each study's known findings (nothing downloaded).

Classification: seven finding labels per study (multi-label). VQA: yes/no questions (one about
a finding the study shows, one about a finding it lacks, so "yes" and "no" are balanced) and
one open question about where or what a present finding is. Task studies come from the demo
generator at offsets far beyond any pre-training split, so they never overlap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlp.data.demo import DemoDataset, Findings

FINDING_LABELS = ("opacity", "effusion", "nodule", "cardiomegaly", "pneumothorax", "device",
                  "normal")
TASK_OFFSET = 1 << 40  # demo item index where task studies start
SPLIT_STRIDE = 1 << 32  # room for up to 2**32 studies per split
SPLITS = ("train", "val", "test")
_QUESTION_STREAM = 7


def task_split(split: str, size: int, image_size: int, seed: int = 0, in_chans: int = 1
               ) -> DemoDataset:
    """The demo studies of one task split; the same split and seed always give the same ones."""
    offset = TASK_OFFSET + SPLITS.index(split) * SPLIT_STRIDE
    return DemoDataset(size, image_size=image_size, seed=seed, in_chans=in_chans, offset=offset)


def finding_labels(findings: Findings) -> tuple[int, ...]:
    """0/1 for each of FINDING_LABELS."""
    present = {
        "opacity": findings.opacity is not None,
        "effusion": findings.effusion is not None,
        "nodule": findings.nodule is not None,
        "cardiomegaly": findings.heart != "normal",
        "pneumothorax": findings.pneumothorax is not None,
        "device": findings.device is not None,
        "normal": findings.is_normal,
    }
    return tuple(int(present[label]) for label in FINDING_LABELS)


_CLOSED = {
    "opacity": "Is there an airspace opacity?",
    "effusion": "Is there a pleural effusion?",
    "nodule": "Is there a pulmonary nodule?",
    "cardiomegaly": "Is the heart enlarged?",
    "pneumothorax": "Is there a pneumothorax?",
    "device": "Is there a support device?",
    "normal": "Is this a normal study?",
}


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    answer_type: str  # "closed" (yes/no) or "open"


def _open_questions(f: Findings) -> list[Question]:
    """Questions with a non-yes/no answer, asked only where the finding is present."""
    out = [Question("How large is the heart?",
                    {"normal": "normal", "mild": "mildly enlarged",
                     "marked": "markedly enlarged"}[f.heart], "open")]
    if f.effusion:
        out.append(Question("Which side is the effusion on?", f.effusion.side, "open"))
    if f.pneumothorax:
        out.append(Question("Which side is the pneumothorax on?", f.pneumothorax, "open"))
    if f.opacity:
        out.append(Question("Which side is the opacity on?", f.opacity.side, "open"))
        out.append(Question("In which zone is the opacity?", f.opacity.zone, "open"))
    if f.nodule:
        out.append(Question("Which side is the nodule on?", f.nodule.side, "open"))
    if f.device:
        out.append(Question("What device is present?", f.device.kind, "open"))
    return out


def demo_questions(findings: Findings, seed: int, index: int) -> list[Question]:
    """Three questions about one study: a "yes", a "no" and an open one, drawn per study."""
    rng = np.random.Generator(np.random.PCG64([seed, index, _QUESTION_STREAM]))
    labels = dict(zip(FINDING_LABELS, finding_labels(findings)))
    present = [k for k, v in labels.items() if v]
    absent = [k for k, v in labels.items() if not v]
    opens = _open_questions(findings)
    return [Question(_CLOSED[present[int(rng.integers(len(present)))]], "yes", "closed"),
            Question(_CLOSED[absent[int(rng.integers(len(absent)))]], "no", "closed"),
            opens[int(rng.integers(len(opens)))]]
