"""Paired masking: one view holding a masked image and a masked report of the same samples.

Both parts are made by existing maskers (named with their own parameters), so one forward pass
of the masked pair can serve image and report reconstruction alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError, model_validator

from vlp.core.views import ViewOutput
from vlp.maskers.base import Masker
from vlp.plugins import PluginError
from vlp.plugins import load as load_plugin
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.context import BuildContext
    from vlp.core.step import Step


def _part(spec: dict[str, Any], part: str) -> tuple[type[Masker], Params]:
    """Resolve `{masker: name, ...params}` to the masker class and its validated params."""
    spec = dict(spec)
    name = spec.pop("masker", None)
    if not isinstance(name, str):
        raise ValueError(f"{part}: needs 'masker: <name>'")
    try:
        cls = load_plugin("masker", name)
    except PluginError as exc:
        raise ValueError(f"{part}.masker: {exc}") from None
    if part not in cls.produces:
        raise ValueError(f"{part}.masker: '{name}' makes no {part} view")
    try:
        return cls, cls.Params.model_validate(spec)
    except ValidationError as exc:
        reasons = "; ".join(f"{part}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                            for e in exc.errors())
        raise ValueError(reasons) from None


class Paired(Masker):
    """Mask a sample's image patches and report tokens together (paired masking)."""

    produces = frozenset({"image", "text"})
    masks = frozenset({"image", "text"})

    class Params(Params):
        image: dict[str, Any] = {"masker": "random_patches", "ratio": 0.75}
        """Image masker and its parameters, e.g. {masker: random_patches, ratio: 0.75}."""
        text: dict[str, Any] = {"masker": "mlm_tokens", "ratio": 0.15}
        """Text masker and its parameters, e.g. {masker: mlm_tokens, ratio: 0.15}."""

        @model_validator(mode="after")
        def _parts_are_valid(self):
            _part(self.image, "image")
            _part(self.text, "text")
            return self

    def __init__(self, params: Params, ctx: BuildContext):
        super().__init__(params, ctx)
        (icls, iparams), (tcls, tparams) = _part(params.image, "image"), _part(params.text, "text")
        self.image_masker, self.text_masker = icls(iparams, ctx), tcls(tparams, ctx)

    def __call__(self, step: Step, generator: torch.Generator) -> ViewOutput:
        return ViewOutput(image=self.image_masker(step, generator).image,
                          text=self.text_masker(step, generator).text)
