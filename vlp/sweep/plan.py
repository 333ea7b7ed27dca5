"""From a sweep file to its runs: every recipe loaded and validated before anything runs (a bad
override points at the sweep file's line), FLOP budgets counted once (OUT/<budget>/budget.json),
each run's folder OUT/<budget>/<variant>/seed_<seed>/ and what it needs (train, resume, ...),
and run folders an edited sweep would change refused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlp.core.errors import Problem, RecipeError, UserError
from vlp.core.flops import read_record
from vlp.core.recipe import Recipe, close_name, validate
from vlp.core.runfolder import holds_run, recipe_changes, resumable_keys
from vlp.core.yamlio import absolute_paths, apply_override, load_with_bases
from vlp.files import write_text_atomic
from vlp.sweep.spec import Sweep, SweepError

RUN_RECORD = "sweep_run.json"  # in each run folder: what the sweep asked of it (the contract)
BUDGET_RECORD = "budget.json"  # in OUT/<budget>/ of a flops_of budget: the number counted
BUDGET_KEYS = {"steps": "trainer.max_steps", "flops": "trainer.budget_flops",
               "samples": "trainer.budget_samples"}


def yaml_value(value: Any) -> str:
    """`value` as one line of YAML, read back the same by `--set KEY=VALUE`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


@dataclass(frozen=True)
class Override:
    """One `--set` of a run, and where the sweep file wrote it."""

    key: str  # recipe key
    value: Any
    where: str  # "sweep.yaml:12"
    shown: str  # the sweep file's key, e.g. variants.no_itc.set.objectives.itc.weight

    @property
    def assignment(self) -> str:
        return f"{self.key}={yaml_value(self.value)}"


def _absolute(key: str, value: Any, folder: Path) -> Any:
    """A path-valued key (data.path, ...) read from the sweep file's folder, kept absolute."""
    nested: dict = {}
    node = nested
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    absolute_paths(nested, folder)
    for part in parents:
        nested = nested[part]
    return nested[leaf]


def set_overrides(sweep: Sweep, variant: str) -> list[Override]:
    """The sweep's `set`, then the variant's own."""
    sections = [("set", sweep.spec.set),
                (f"variants.{variant}.set", sweep.spec.variants[variant].set)]
    return [Override(key, _absolute(key, value, sweep.folder), sweep.where(f"{prefix}.{key}"),
                     f"{prefix}.{key}")
            for prefix, assignments in sections for key, value in assignments.items()]


def seed_override(sweep: Sweep, seed: int) -> Override:
    shown = f"seeds.{sweep.spec.seeds.index(seed)}"
    return Override("seed", seed, sweep.where(shown), shown)


@dataclass(frozen=True)
class Budget:
    """A budget as the runs get it: one recipe key and its value."""

    name: str
    kind: str  # steps, flops or samples
    value: int | float
    shown: str  # the sweep key that sets it
    counted: dict[str, Any] | None = None  # flops_of: the budget.json record

    def override(self, sweep: Sweep) -> Override:
        return Override(BUDGET_KEYS[self.kind], self.value, sweep.where(self.shown), self.shown)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, **(self.counted or {})}


def direct_budget(sweep: Sweep, name: str) -> Budget | None:
    """A budget given as a number (None for flops_of, which is counted)."""
    spec = sweep.spec.budgets[name]
    if spec.flops_of is not None:
        return None
    kind = next(k for k in ("flops", "samples", "steps") if getattr(spec, k) is not None)
    return Budget(name, kind, getattr(spec, kind), f"budgets.{name}.{kind}")


def _shown(problem: Problem, sweep: Sweep, overrides: list[Override]) -> Problem:
    """A problem the sweep file wrote names the sweep file's key, not the recipe's."""
    if not problem.where.startswith(sweep.source + ":"):
        return problem
    for o in reversed(overrides):  # the last override of a key is the one in effect
        if problem.key == o.key or problem.key.startswith(o.key + "."):
            return Problem(problem.where, o.shown + problem.key[len(o.key):], problem.reason)
        if o.key.startswith(problem.key + "."):  # a parent the override created
            return Problem(problem.where, o.shown, problem.reason)
    return problem


def _point_at_sweep(prov: dict[str, str], sweep: Sweep, o: Override) -> None:
    """After `apply_override`: the key (its parts, parents it created) was written in the
    sweep file, at the lines the sweep file has for them."""
    for key in [k for k in prov if k == o.key or k.startswith(o.key + ".")]:
        del prov[key]
    parts = o.key.split(".")
    for depth in range(1, len(parts)):
        prov.setdefault(".".join(parts[:depth]), o.where)
    prov[o.key] = o.where
    for key, where in sweep.provenance.items():
        if key.startswith(o.shown + "."):
            prov[o.key + key[len(o.shown):]] = where


def shown_path(path: Path) -> str:
    """A path as messages show it: relative to the working directory when below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _switched_off_nothing(data: dict, before: list[str], overrides: list[Override]
                          ) -> list[Problem]:
    """An override giving weight 0 to an objective the recipe does not have switches nothing
    off (a misspelt name, in a leave-one-out row): a problem, with the names it has."""
    objectives = data.get("objectives") if isinstance(data.get("objectives"), dict) else {}
    problems = []
    for o in overrides:
        parts = o.key.split(".")
        if parts[0] != "objectives" or len(parts) < 2 or parts[1] in before:
            continue
        entry = objectives.get(parts[1])
        if isinstance(entry, dict) and entry.get("weight") == 0:
            guess = close_name(parts[1], before)
            problems.append(Problem(o.where, o.shown, (
                f"the recipe has no objective '{parts[1]}' (it has: {', '.join(before)}), so a "
                "weight of 0 switches nothing off" + (f"; did you mean `{guess}`?" if guess
                                                      else ""))))
    return problems


def load_run_recipe(sweep: Sweep, recipe: Path, overrides: list[Override]) -> Recipe:
    """What `vlp train RECIPE --set ...` of the run will validate, validated here, each
    problem the sweep file wrote pointing at its line (SweepError)."""
    source = shown_path(recipe)
    data, prov = load_with_bases(Path(source))  # (a RecipeError: the recipe file's own)
    objectives = data.get("objectives")
    before = [str(n) for n in objectives] if isinstance(objectives, dict) else []
    for o in overrides:
        try:
            apply_override(data, prov, o.assignment)
        except RecipeError as exc:
            raise SweepError([Problem(o.where, o.shown, p.reason)
                              for p in exc.problems]) from None
        _point_at_sweep(prov, sweep, o)
    problems = _switched_off_nothing(data, before, overrides)
    try:
        validated = validate(data, prov, source)
    except RecipeError as exc:
        problems += [_shown(p, sweep, overrides) for p in exc.problems]
    if problems:
        raise SweepError(problems)
    return validated


@dataclass(frozen=True)
class PlannedRun:
    budget: str
    variant: str
    seed: int
    recipe: Path
    overrides: tuple[str, ...]
    folder: Path
    budget_kind: str

    @property
    def label(self) -> str:
        return f"{self.budget}/{self.variant}/seed_{self.seed}"

    def record(self, sweep: Sweep) -> dict[str, Any]:
        """sweep_run.json (the contract between the sweep and `vlp compare`)."""
        return {"sweep": str(sweep.path.resolve()), "budget": self.budget,
                "variant": self.variant, "seed": self.seed, "recipe": str(self.recipe),
                "overrides": list(self.overrides)}


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    budgets: dict[str, Budget]
    runs: list[PlannedRun]
    recipes: dict[str, Recipe]  # run label -> its validated recipe

    def manifest(self) -> dict[str, Any]:
        """OUT/sweep.json."""
        spec = self.sweep.spec
        return {"sweep": str(self.sweep.path.resolve()), "out": str(self.sweep.out),
                "budgets": {n: b.describe() for n, b in self.budgets.items()},
                "variants": list(spec.variants), "seeds": list(spec.seeds),
                "baseline": self.sweep.baseline, "eval": spec.eval,
                "runs": [{**r.record(self.sweep), "folder": str(r.folder)} for r in self.runs]}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))  # a problem of every seed and budget, once


def _counting_overrides(sweep: Sweep, name: str) -> tuple[str, list[Override]]:
    """The recipe whose step a flops_of budget counts: that variant, the first seed."""
    spec = sweep.spec.budgets[name]
    steps = Override("trainer.max_steps", spec.steps, sweep.where(f"budgets.{name}.steps"),
                     f"budgets.{name}.steps")
    return spec.flops_of, [*set_overrides(sweep, spec.flops_of),
                           seed_override(sweep, sweep.spec.seeds[0]), steps]


def counted_budget(sweep: Sweep, name: str, recipe: Recipe, overrides: list[Override],
                   write: bool) -> Budget:
    """A flops_of budget: `vlp.core.flops.step_flops` of the variant's recipe times the steps,
    counted once and kept in OUT/<name>/budget.json, which later sweeps read back (a budget.json
    counted for another definition is refused: the sweep file was edited)."""
    spec = sweep.spec.budgets[name]
    wanted = {"flops_of": spec.flops_of, "steps": spec.steps,
              "recipe": str(sweep.recipe_of(spec.flops_of)),
              "overrides": [o.assignment for o in overrides]}
    path = sweep.out / name / BUDGET_RECORD
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [k for k in wanted if saved.get(k) != wanted[k]]
        if changed:
            shown = "; ".join(f"{k}: {saved.get(k)!r} then, {wanted[k]!r} now" for k in changed)
            raise UserError(f"{path} was counted for another definition of budget '{name}' "
                            f"({shown}); restore the sweep file, or move {path.parent} away "
                            "(it holds that budget's runs) to count and run it again")
        return Budget(name, "flops", saved["budget_flops"], f"budgets.{name}.flops_of", saved)
    from vlp.core.flops import step_flops

    per_step = int(step_flops(recipe))
    record = {**wanted, "flops_per_step": per_step, "budget_flops": per_step * spec.steps,
              "counted_with": "vlp.core.flops.step_flops (one training step, all ranks)"}
    if write:
        write_json(path, record)
    return Budget(name, "flops", record["budget_flops"], f"budgets.{name}.flops_of", record)


def _runs_of(sweep: Sweep, budget: Budget, recipes: dict[str, Recipe],
             problems: list[Problem]) -> list[PlannedRun]:
    """Every variant x seed of one budget, each recipe validated (problems collected)."""
    runs = []
    for variant in sweep.spec.variants:
        recipe_path = sweep.recipe_of(variant)
        for seed in sweep.spec.seeds:
            overrides = [*set_overrides(sweep, variant), seed_override(sweep, seed),
                         budget.override(sweep)]
            run = PlannedRun(budget.name, variant, seed, recipe_path,
                             tuple(o.assignment for o in overrides),
                             sweep.out / budget.name / variant / f"seed_{seed}", budget.kind)
            try:
                recipes[run.label] = load_run_recipe(sweep, recipe_path, overrides)
            except RecipeError as exc:
                problems.extend(exc.problems)
            runs.append(run)
    return runs


def make_plan(sweep: Sweep, write: bool = True) -> Plan:
    """Validate every run's recipe, count flops_of budgets (written to budget.json unless
    `write` is false), and refuse run folders the sweep file no longer describes."""
    problems: list[Problem] = []
    recipes: dict[str, Recipe] = {}
    budgets: dict[str, Budget] = {}
    runs: dict[str, list[PlannedRun]] = {}
    counting: dict[str, tuple[Recipe, list[Override]]] = {}
    for name in sweep.spec.budgets:  # first all that needs no counting, then count
        budget = direct_budget(sweep, name)
        if budget is not None:
            budgets[name] = budget
            runs[name] = _runs_of(sweep, budget, recipes, problems)
            continue
        variant, overrides = _counting_overrides(sweep, name)
        try:
            counting[name] = (load_run_recipe(sweep, sweep.recipe_of(variant), overrides),
                              overrides)
        except RecipeError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SweepError(_unique(problems))
    for name, (recipe, overrides) in counting.items():
        budgets[name] = counted_budget(sweep, name, recipe, overrides, write)
        runs[name] = _runs_of(sweep, budgets[name], recipes, problems)
    if problems:
        raise SweepError(_unique(problems))
    ordered = [run for name in sweep.spec.budgets for run in runs[name]]
    refuse_edited([(run, recipes[run.label]) for run in ordered], sweep)
    return Plan(sweep, {n: budgets[n] for n in sweep.spec.budgets}, ordered, recipes)


def _differences(run: PlannedRun, recipe: Recipe, sweep: Sweep) -> str | None:
    """What in `run.folder` the sweep now asks differently, or None."""
    record_path = run.folder / RUN_RECORD
    if not holds_run(run.folder):  # nothing trained there yet: nothing to keep
        return None
    if not record_path.is_file():
        return "it holds a run this sweep did not start (no sweep_run.json)"
    saved, now = json.loads(record_path.read_text()), run.record(sweep)
    changed = [f"{k}: {saved.get(k)!r} then, {now[k]!r} now" for k in now
               if k != "sweep" and saved.get(k) != now[k]]  # a moved sweep file is the same
    if not changed and (run.folder / "recipe.yaml").is_file():
        ignored = resumable_keys(recipe.spec.trainer)  # what the child's resume accepts
        changed = [f"recipe {key}: {old!r} in its recipe.yaml, {new!r} now"
                   for key, old, new in recipe_changes(run.folder, recipe) if key not in ignored]
    return "; ".join(changed) or None


def refuse_edited(runs: list[tuple[PlannedRun, Recipe]], sweep: Sweep) -> None:
    """UserError naming every run folder whose run the sweep (or a recipe) no longer describes;
    nothing has run yet."""
    edited = [(run, why) for run, recipe in runs
              if (why := _differences(run, recipe, sweep)) is not None]
    if not edited:
        return
    lines = [f"  {shown_path(run.folder)}: {why}" for run, why in edited]
    raise UserError(
        f"{sweep.source}: {len(edited)} run folder{'s' if len(edited) > 1 else ''} hold runs "
        "made with other settings than the sweep file (or its recipes) now asks:\n"
        + "\n".join(lines) + "\nrestore the sweep file as it was, or give the changed sweep "
        "another `out:` (or move those folders away) to run it anew")


# ----------------------------------------------------------------------------- run states

FINISHED, EVALUATE, RESUME, RESTART, TRAIN = "skip", "evaluate", "resume", "restart", "train"


def _last_checkpoint_is_final(folder: Path) -> bool:
    """The latest checkpoint is of the run's last planned step (flops.json): it trained to the
    end even if it was stopped before writing summary.json (resuming it has nothing to do)."""
    pointer, record = folder / "checkpoints" / "latest", read_record(folder)
    if not pointer.is_file() or record is None:
        return False
    name = pointer.read_text().strip()
    step = name[len("step_"):]
    return name.startswith("step_") and step.isdigit() and int(step) >= int(record["steps"])


def state_of(run: PlannedRun, evaluate: bool) -> tuple[str, str]:
    """(what the run needs, why), read from its folder:
    skip      summary.json says steps == max_steps and (with eval) eval/summary.json exists
    evaluate  trained to the end but not evaluated (vlp eval)
    resume    a checkpoint exists (vlp train --resume latest)
    restart   a run without a checkpoint (killed before its first one): trained from step 0
    train     a new run"""
    summary_path = run.folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    done = bool(summary) and summary.get("steps") == summary.get("max_steps")
    done = done or _last_checkpoint_is_final(run.folder)  # killed before summary.json
    if done and (not evaluate or (run.folder / "eval" / "summary.json").is_file()):
        return FINISHED, f"finished at step {summary.get('steps', 'its last')}"
    if done:
        return EVALUATE, f"trained to step {summary.get('steps', 'its last')}, not evaluated"
    pointer = run.folder / "checkpoints" / "latest"
    if pointer.is_file():
        return RESUME, f"from checkpoint {pointer.read_text().strip()}"
    if holds_run(run.folder):
        return RESTART, "no checkpoint (stopped before its first): again from step 0"
    return TRAIN, "new"


