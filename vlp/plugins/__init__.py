"""Plugin discovery (entry points) and the base classes every plugin derives from."""

from vlp.plugins.base import Params, Plugin, summary_of
from vlp.plugins.registry import KINDS, PluginEntry, PluginError, find, list_entries, load

__all__ = ["KINDS", "Params", "Plugin", "PluginEntry", "PluginError", "find", "list_entries",
           "load", "summary_of"]
