"""What every plugin has: a name, a one-line summary (its docstring) and a pydantic Params model."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for plugin parameters: unknown keys are errors and values are validated."""

    # a docstring under a field is its description (`vlp plugins NAME`, docs/plugins.md)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)


class Plugin:
    """Mixin for plugin classes; `Params` validates the recipe entry's parameters."""

    Params: ClassVar[type[Params]] = Params


def summary_of(obj: object) -> str:
    """First line of a plugin's docstring: what `vlp plugins` prints."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
