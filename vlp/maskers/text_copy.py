"""A second, unchanged view of the report: its own text-encoder pass, so its own dropout draw
(the noise SimCSE contrasts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vlp.core.views import TextView, ViewOutput
from vlp.maskers.base import Masker

if TYPE_CHECKING:
    from vlp.core.step import Step


class TextCopy(Masker):
    """The report unchanged, as a view of its own (a second encoder pass, other dropout)."""

    produces = frozenset({"text"})

    def __call__(self, step: Step, generator: torch.Generator) -> ViewOutput:
        return ViewOutput(text=TextView(step.batch.input_ids, step.batch.attention_mask))
