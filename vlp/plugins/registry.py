"""Finds plugins through importlib.metadata entry points and loads them lazily.

The package's built-ins use the same entry points as third-party packages, so there is one path.
A name offered by two distributions is an error naming both; a plugin that fails to import breaks
only the recipes that name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

KINDS: dict[str, str] = {
    "objective": "vlp.objectives",
    "masker": "vlp.maskers",
    "image_encoder": "vlp.image_encoders",
    "text_encoder": "vlp.text_encoders",
    "fusion": "vlp.fusions",
    "task": "vlp.tasks",
}


class PluginError(Exception):
    """A plugin cannot be found or loaded; the message says which and why."""


@dataclass
class PluginEntry:
    """One advertised plugin: where it comes from and, once loaded, its class or load error."""

    kind: str
    name: str
    target: str
    distribution: str
    version: str
    others: list[str] = field(default_factory=list)  # other distributions offering the same name
    _loaded: object | None = None
    _error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version} ({self.target})"

    def load(self) -> type:
        if self.others:
            raise PluginError(
                f"{self.kind} '{self.name}' is offered by more than one distribution: "
                + ", ".join([self.label, *self.others])
                + "; uninstall one of them"
            )
        if self._loaded is None and self._error is None:
            try:
                self._loaded = EntryPoint(self.name, self.target, KINDS[self.kind]).load()
            except Exception as exc:  # any import-time failure is the plugin's, reported per use
                self._error = f"{type(exc).__name__}: {exc}"
        if self._error is not None:
            raise PluginError(f"{self.kind} '{self.name}' from {self.label} failed to load: "
                              f"{self._error}")
        return self._loaded  # type: ignore[return-value]

    @property
    def error(self) -> str | None:
        """The load error, or None if it loads (loads it)."""
        try:
            self.load()
        except PluginError as exc:
            return str(exc)
        return None


_cache: dict[str, dict[str, PluginEntry]] = {}


def _discover(kind: str) -> dict[str, PluginEntry]:
    found: dict[str, PluginEntry] = {}
    seen: set[tuple[str, str, str]] = set()
    for ep in entry_points(group=KINDS[kind]):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else "?"
        key = (ep.name, ep.value, dist)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        entry = PluginEntry(kind, ep.name, ep.value, dist, version)
        if ep.name in found:
            found[ep.name].others.append(entry.label)
        else:
            found[ep.name] = entry
    return found


def list_entries(kind: str) -> dict[str, PluginEntry]:
    """All plugins of one kind by name (discovered once per process, not imported)."""
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind '{kind}' (expected one of {', '.join(KINDS)})")
    if kind not in _cache:
        _cache[kind] = _discover(kind)
    return _cache[kind]


def refresh() -> None:
    """Forget discovered plugins, e.g. after installing a package in the running process."""
    _cache.clear()


def find(kind: str, name: str) -> PluginEntry:
    """The entry for `name`, or a PluginError listing the names that exist."""
    entries = list_entries(kind)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none installed"
        raise PluginError(f"unknown {kind} '{name}' (installed: {known})")
    return entries[name]


def load(kind: str, name: str) -> type:
    """Import and return the plugin class for `name`."""
    return find(kind, name).load()
