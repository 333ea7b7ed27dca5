"""The error an export raises when a run's parts have no counterpart in the target format."""

from vlp.core.errors import UserError


class ExportError(UserError):
    """The run cannot be written in the requested format; the message says why."""
