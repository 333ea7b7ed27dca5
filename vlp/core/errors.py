"""Errors a user can act on: each names where the problem is and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe: where it was written, the dotted key, and why."""

    where: str  # "file.yaml:12", "file.yaml" or "--set a.b=c"
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key or '<root>'}: {self.reason}"


class UserError(Exception):
    """A mistake in input the user controls: the CLI prints it in one message, no traceback."""


class RecipeError(UserError):
    """A recipe is invalid; raised before any model is built."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"invalid recipe ({n} problem{'s' if n > 1 else ''}):"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class TaskFileError(RecipeError):
    """A task file (`vlp eval --tasks`) is invalid; raised before any model is built."""

    def __str__(self) -> str:
        return "invalid task file" + super().__str__()[len("invalid recipe"):]


class CheckpointError(UserError):
    """A checkpoint is missing or does not fit the model of the recipe."""


class NonFiniteLoss(UserError):
    """A loss became NaN or infinite; the run stopped and kept its last good checkpoint."""
