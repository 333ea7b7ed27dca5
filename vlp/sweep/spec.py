"""The sweep file: pydantic models as strict as the recipe's, read with the recipe's safe YAML
loader, every problem reported at once as FILE:LINE: key: reason (docs/ablations.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlp.core.errors import Problem, RecipeError
from vlp.core.recipe import close_name, merge_misspellings, validation_problems
from vlp.core.yamlio import Provenance, parse_yaml, read_utf8, where_of

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # budget and variant names are folder names
#: recipe keys a sweep sets per run itself: its `set` sections may not
PER_RUN_KEYS = {"seed": "seeds", "trainer.max_steps": "budgets",
                "trainer.budget_flops": "budgets", "trainer.budget_samples": "budgets"}


class SweepError(RecipeError):
    """A sweep file (or a recipe it makes) is invalid; raised before any run starts."""

    def __str__(self) -> str:
        return "invalid sweep" + super().__str__()[len("invalid recipe"):]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)


class BudgetSpec(_Strict):
    """One budget: `steps` (trainer.max_steps), `flops` (trainer.budget_flops), `samples`
    (trainer.budget_samples), or `flops_of` a variant at `steps` steps."""

    steps: int | None = Field(None, gt=0)
    flops: float | None = Field(None, gt=0)
    samples: int | None = Field(None, gt=0)
    flops_of: str | None = None


class VariantSpec(_Strict):
    """One row of the table: the base recipe (or `recipe`) with `set` on top."""

    recipe: str | None = None  # relative to the sweep file; default: the sweep's `base`
    set: dict[str, Any] = {}


class SweepSpec(_Strict):
    base: str  # the recipe every variant starts from, relative to the sweep file
    out: str | None = None  # relative to the sweep file; default runs/sweeps/<stem>
    seeds: list[int] = Field([0], min_length=1)
    set: dict[str, Any] = {}  # dotted keys, like --set, for every variant
    budgets: dict[str, BudgetSpec] = Field(min_length=1)
    variants: dict[str, VariantSpec] = Field(min_length=1)  # in table order
    baseline: str | None = None  # default: the first variant
    jobs: int = Field(1, ge=1)  # runs at once
    eval: bool = True  # the recipe's evaluation after training (false: vlp train --no-eval)


_SECTIONS = {"budgets": BudgetSpec, "variants": VariantSpec}


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file with its paths resolved."""

    path: Path  # as given (messages)
    spec: SweepSpec
    provenance: Provenance
    out: Path

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def folder(self) -> Path:
        return self.path.resolve().parent

    @property
    def baseline(self) -> str:
        return self.spec.baseline or next(iter(self.spec.variants))

    def recipe_of(self, variant: str) -> Path:
        return (self.folder / (self.spec.variants[variant].recipe or self.spec.base)).resolve()

    def where(self, key: str) -> str:
        return where_of(self.provenance, key, self.source)


def _check_shallow(data: dict, prov: Provenance, source: str, problems: list[Problem]) -> dict:
    """Top-level keys; budgets and variants are checked entry by entry afterwards."""
    shallow = {k: v for k, v in data.items() if k not in _SECTIONS}
    placeholders = {k: {"_": {}} for k in _SECTIONS if k in data}  # valid entries, for now
    try:
        SweepSpec.model_validate({**shallow, **placeholders})
    except ValidationError as exc:
        problems.extend(validation_problems(exc, "", prov, source, SweepSpec))
    valid = {}
    for name, model in _SECTIONS.items():
        entries = data.get(name)
        if entries is None:
            continue
        where = where_of(prov, name, source)
        if not isinstance(entries, dict) or not entries:
            problems.append(Problem(where, name, "expected a mapping of names to entries"))
            continue
        valid[name] = {}
        for entry, raw in entries.items():
            key = f"{name}.{entry}"
            if not NAME.match(str(entry)):
                problems.append(Problem(where_of(prov, key, source), key,
                                        "a name is a folder name: letters, digits, _ . - only"))
            try:
                valid[name][str(entry)] = model.model_validate({} if raw is None else raw)
            except ValidationError as exc:
                problems.extend(validation_problems(exc, key, prov, source, model))
    return valid


def _check_values(spec: SweepSpec, variants: list[str], prov: Provenance, source: str,
                  folder: Path, problems: list[Problem]) -> None:
    """Checks across entries (of those valid on their own, so that all problems are found at
    once): files exist, names named exist, per-run keys left alone."""
    def add(key: str, reason: str) -> None:
        problems.append(Problem(where_of(prov, key, source), key, reason))


    def unknown_variant(key: str, name: str) -> None:
        guess = close_name(name, variants)
        add(key, f"no variant named {name!r} (variants: {', '.join(variants)})"
            + (f"; did you mean `{guess}`?" if guess else ""))

    recipes = [("base", spec.base)] if isinstance(getattr(spec, "base", None), str) else []
    recipes += [(f"variants.{n}.recipe", v.recipe) for n, v in spec.variants.items() if v.recipe]
    for key, value in recipes:
        if not (folder / value).is_file():
            add(key, f"recipe not found: {value} (looked for {folder / value})")
    if spec.baseline is not None and spec.baseline not in spec.variants:
        unknown_variant("baseline", spec.baseline)
    if len(set(spec.seeds)) != len(spec.seeds):
        add("seeds", "each seed once")
    for index, seed in enumerate(spec.seeds):
        if seed < 0:
            add(f"seeds.{index}", f"a seed is >= 0 (got {seed})")
    for name, budget in spec.budgets.items():
        key = f"budgets.{name}"
        kinds = [k for k in ("flops", "samples", "flops_of") if getattr(budget, k) is not None]
        if len(kinds) > 1:
            add(key, f"one budget each: {' and '.join(kinds)} given")
        elif budget.flops_of is not None and budget.steps is None:
            add(key, "flops_of needs steps: the FLOPs of that variant at this many steps")
        elif not kinds and budget.steps is None:
            add(key, "expected steps, flops, samples, or flops_of with steps")
        elif kinds and kinds[0] != "flops_of" and budget.steps is not None:
            add(f"{key}.steps", f"steps with {kinds[0]}: the budget decides the steps")
        if budget.flops_of is not None and budget.flops_of not in spec.variants:
            unknown_variant(f"{key}.flops_of", budget.flops_of)
    sets = [("set", spec.set)] + [(f"variants.{n}.set", v.set) for n, v in spec.variants.items()]
    for prefix, assignments in sets:
        for dotted in assignments:
            key = f"{prefix}.{dotted}"
            if not dotted or any(not part for part in str(dotted).split(".")):
                add(key, "expected a dotted recipe key, e.g. objectives.itc.weight")
            elif dotted in PER_RUN_KEYS:
                add(key, f"set per run by the sweep's `{PER_RUN_KEYS[dotted]}`; remove it here")


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file (not yet the recipes it makes: vlp.sweep.plan)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SweepError([Problem(source, "", "file not found")])
    try:
        data, prov = parse_yaml(read_utf8(path), source)
    except RecipeError as exc:
        raise SweepError(exc.problems) from None
    if not isinstance(data, dict):
        raise SweepError([Problem(source, "", "a sweep file is a mapping of keys to values "
                                  "(base, seeds, budgets, variants, ...)")])
    problems: list[Problem] = []
    valid = _check_shallow(data, prov, source, problems)
    if problems:  # the cross checks still run on what is valid
        bad = {p.key.split(".")[0] for p in problems}
        spec = SweepSpec.model_construct(**{k: v for k, v in data.items() if k not in bad
                                            and k in SweepSpec.model_fields
                                            and k not in _SECTIONS}, **valid)
    else:
        spec = SweepSpec.model_validate({**data, **valid})
    folder = path.resolve().parent
    variants = [str(n) for n in data["variants"]] if isinstance(data.get("variants"), dict) \
        else []
    _check_values(spec, variants, prov, source, folder, problems)
    if problems:
        raise SweepError(merge_misspellings(problems))
    out = folder / spec.out if spec.out else Path("runs") / "sweeps" / path.stem
    return Sweep(path, spec, prov, out.resolve())
