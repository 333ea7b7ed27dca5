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


def one_line(exc: BaseException) -> str:
    """An exception's message in one line: a heading ending in ':' (as in PyTorch's state-dict
    report) is joined to its first item, and further items are counted."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    if len(lines) > 1 and lines[0].endswith(":"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return f"{lines[0]} {lines[1]}{more}"
    return lines[0]


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


class ParamError(ValueError):
    """Raised by a plugin's constructor when one of its params does not fit the model built
    around it; the recipe error then names that param's dotted key (or, with `absolute`, the
    recipe key `param` itself, e.g. `data.image_size`)."""

    def __init__(self, param: str, reason: str, absolute: bool = False):
        super().__init__(reason)
        self.param, self.absolute = param, absolute


class Interrupted(UserError):
    """SIGINT or SIGTERM ended the run after a step; its checkpoint was written."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for a signal's end
