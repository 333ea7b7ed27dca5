"""The contract of a masker plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from vlp.plugins.base import Params, Plugin

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step
    from vlp.core.views import ViewOutput


class Masker(Plugin):
    """Derives a view from the step's batch with the view's own generator (index tensors, no
    copies of images where indices suffice). Runs at most once per step per view."""

    #: which parts the view has: {"image"}, {"text"} or both
    produces: ClassVar[frozenset[str]] = frozenset()
    #: which of those parts are masked (carry kept indices / token labels), for MIM and MLM
    masks: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Params, ctx: BuildContext):
        self.params = params
        self.ctx = ctx

    def __call__(self, step: Step, generator: torch.Generator
                 ) -> ViewOutput:  # pragma: no cover - abstract
        raise NotImplementedError
