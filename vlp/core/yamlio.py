"""Safe YAML loading that remembers where each key was written.

PyYAML reads `1e-4` as a string and silently keeps the last of duplicate keys; this loader reads
it as a float and rejects duplicates. Every dotted key maps to "file:line" (or the `--set` that
wrote it) so that validation errors can point at the source.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from vlp.core.errors import Problem, RecipeError

Provenance = dict[str, str]  # dotted key -> "file:line" or "--set ..."


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-4) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


MAX_NODES = 200_000  # aliases may repeat a subtree; more than this many nodes is an alias bomb


def _record(node: yaml.Node, path: tuple[str, ...], source: str, prov: Provenance,
            ancestors: tuple[int, ...] = (), count: list[int] | None = None) -> None:
    """Walk the composed node tree: note each key's line, reject duplicate keys, aliases that
    contain themselves (a recursive structure no recipe can mean) and alias bombs."""
    count = [0] if count is None else count
    count[0] += 1
    if count[0] > MAX_NODES:  # name the top-level key whose value expanded this far
        top = path[0] if path else ""
        raise RecipeError([Problem(prov.get(top, f"{source}:{node.start_mark.line + 1}"), top,
                                   f"aliases expand to more than {MAX_NODES} values")])
    if id(node) in ancestors:
        raise RecipeError([Problem(f"{source}:{node.start_mark.line + 1}", _dotted(path),
                                   "recursive alias: this value contains itself")])
    ancestors = (*ancestors, id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise RecipeError([Problem(f"{source}:{line}", _dotted((*path, key)),
                                           f"duplicate key (first written on line {seen[key]})")])
            seen[key] = line
            prov[_dotted((*path, key))] = f"{source}:{line}"
            _record(value_node, (*path, key), source, prov, ancestors, count)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            prov[_dotted((*path, str(i)))] = f"{source}:{item.start_mark.line + 1}"
            _record(item, (*path, str(i)), source, prov, ancestors, count)


def parse_yaml(text: str, source: str) -> tuple[Any, Provenance]:
    """Parse YAML text safely; returns the data and where each dotted key came from."""
    prov: Provenance = {}
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            _record(node, (), source, prov)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        reason = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([Problem(where, "", f"not valid YAML: {reason}")]) from None
    return data, prov


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are a RecipeError naming the line and byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError([Problem(f"{path}:{line}", "", f"not UTF-8 text: byte "
                                   f"0x{raw[exc.start]:02x} at column {column} (save the file "
                                   "as UTF-8)")]) from None


REPLACE_KEY = "_replace_"
# Keys holding file paths: a relative value is read from the folder of the file that wrote it
# (a `--set` value from the working directory) and kept absolute, so a run folder works anywhere.
PATH_KEYS = ("data.path", "data.val_path", "data.image_root", "model.tokenizer.path",
             "model.image_encoder.weights")
# A data section naming another `source` replaces the base's, keeping only these shared keys.
SHARED_ON_SOURCE_SWITCH = ("image_size", "channels", "max_text_len", "num_workers", "seed",
                           "min_val_size")


def absolute_paths(data: dict, folder: Path, only: str | None = None) -> None:
    """Make the PATH_KEYS values in `data` absolute, relative ones read from `folder`."""
    for key in PATH_KEYS if only is None else [k for k in PATH_KEYS if k == only]:
        *parents, leaf = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value:
            path = Path(value).expanduser()  # ~/x is absolute once expanded
            node[leaf] = str(path if path.is_absolute() else (folder / path).resolve())


def switch_source(base: dict, top: dict, prov: Provenance) -> dict:
    """`base` with a data section that names another source replaced, shared keys kept."""
    base_data, top_data = base.get("data"), top.get("data")
    if not (isinstance(base_data, dict) and isinstance(top_data, dict)
            and "source" in top_data and top_data.get("source") != base_data.get("source")):
        return base
    kept = {k: v for k, v in base_data.items() if k in SHARED_ON_SOURCE_SWITCH}
    for stale in [k for k in prov if k.startswith("data.")
                  and k.split(".")[1] not in SHARED_ON_SOURCE_SWITCH]:
        del prov[stale]
    return {**base, "data": kept}


def deep_merge(base: dict, top: dict) -> dict:
    """`top` over `base`: mappings merge key by key, anything else is replaced.

    A mapping in `top` holding `_replace_: true` replaces the base's mapping instead of merging.
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and value.get(REPLACE_KEY) is True:
            out[key] = deep_merge({}, {k: v for k, v in value.items() if k != REPLACE_KEY})
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_with_bases(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, Provenance]:
    """Load a recipe file, resolving `_base_` (a path or list of paths relative to the file)."""
    path = Path(path)
    source = str(path)
    if path.resolve() in _chain:
        raise RecipeError([Problem(source, "_base_", "circular _base_ inheritance")])
    if not path.is_file():
        raise RecipeError([Problem(source, "", "file not found")])
    data, prov = parse_yaml(read_utf8(path), source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([Problem(source, "", "a recipe must be a mapping of keys to values")])
    absolute_paths(data, path.parent)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    merged_prov: Provenance = {}
    for i, base in enumerate(bases):
        where = prov.get(f"_base_.{i}") or prov.get("_base_", source)
        if not isinstance(base, str):
            raise RecipeError([Problem(where, "_base_", "expected a file path")])
        if not (path.parent / base).is_file():
            raise RecipeError([Problem(where, "_base_", f"base recipe not found: {base} "
                                       f"(looked for {path.parent / base})")])
        base_data, base_prov = load_with_bases(path.parent / base, (*_chain, path.resolve()))
        merged = deep_merge(merged, base_data)
        merged_prov.update(base_prov)
    for key in prov:
        if key.split(".")[-1] == REPLACE_KEY:  # drop the base's provenance under a replacement
            parent = key.rsplit(".", 1)[0]
            for stale in [k for k in merged_prov if k.startswith(parent + ".")]:
                del merged_prov[stale]
    merged = switch_source(merged, data, merged_prov)
    merged_prov.update({k: v for k, v in prov.items() if not k.startswith("_base_")})
    return deep_merge(merged, data), merged_prov


def apply_override(data: dict, prov: Provenance, assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML."""
    where = f"--set {assignment}"
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError([Problem(where, key, "expected KEY=VALUE, e.g. trainer.max_steps=100")])
    value, _ = parse_yaml(raw, where)
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError([Problem(where, _dotted(tuple(parts[: depth + 1])),
                                       f"is a {type(child).__name__}, not a mapping; cannot set "
                                       f"'{parts[depth + 1]}' inside it")])
        node = child
    node[parts[-1]] = value
    absolute_paths(data, Path.cwd(), only=key)  # a path given on the command line
    for k in [k for k in prov if k == key or k.startswith(key + ".")]:
        del prov[k]
    prov[key] = where


def where_of(prov: Provenance, key: str, default: str) -> str:
    """Source of `key`, or of its closest written parent (a missing key points at its parent)."""
    parts = key.split(".")
    while parts:
        found = prov.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return default
