"""Layers import one way: data and plugins below core; eval and cli on top; no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "vlp"

# a module of the left layer may not import (even lazily, even for typing) any on the right
FORBIDDEN = {
    "vlp.seeding": ("vlp.",),
    "vlp.plugins": ("vlp.core", "vlp.data", "vlp.eval", "vlp.cli", "vlp.tasks", "vlp.sweep"),
    "vlp.data": ("vlp.core", "vlp.eval", "vlp.cli", "vlp.tasks", "vlp.objectives",
                 "vlp.encoders", "vlp.maskers", "vlp.sweep"),
    "vlp.core": ("vlp.eval", "vlp.cli", "vlp.tasks", "vlp.sweep"),
    "vlp.objectives": ("vlp.eval", "vlp.cli", "vlp.tasks", "vlp.sweep"),
    "vlp.encoders": ("vlp.eval", "vlp.cli", "vlp.tasks", "vlp.sweep"),
    "vlp.maskers": ("vlp.eval", "vlp.cli", "vlp.tasks", "vlp.sweep"),
    "vlp.eval": ("vlp.cli", "vlp.sweep"),  # the sweep (beside cli) is on top of eval
    "vlp.sweep": ("vlp.cli",),
}
TYPING_ONLY_OK = {"vlp.data": ("vlp.core.recipe",)}  # the recipe's data sections, for hints


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside `if TYPE_CHECKING:`) for every import in the file."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, id(node) in typing_only))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, id(node) in typing_only) for alias in node.names)
    return found


def test_lower_layers_never_import_upper_ones():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        for layer, banned in FORBIDDEN.items():
            if name != layer and not name.startswith(layer + "."):
                continue
            for imported, typing_only in imports(path):
                allowed = typing_only and imported in TYPING_ONLY_OK.get(layer, ())
                if imported.startswith(banned) and not allowed:
                    wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_the_checker_sees_a_lazy_import():
    source = PACKAGE / "cli.py"
    assert any(m == "vlp.eval.evaluate" for m, _ in imports(source))  # imported inside a function
