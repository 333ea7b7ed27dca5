"""A run folder is never damaged by a mistake on the command line.

- `--out` naming a folder that already holds a run, without `--resume`, is refused.
- `--resume` continues the run's own recipe: a recipe (or `--set` values) that differs from the
  run's `recipe.yaml` is refused, listing each differing key with both values, so a run's folder
  always describes how all of its steps were trained. Start a new run to change a value. Only
  keys that change how a run is operated, not what it trains (OPERATIONAL), are applied: the
  run's recipe.yaml is updated and each change appended to `recipe_changes.jsonl`.
- Resuming a run that already reached `trainer.max_steps` (or the steps its budget planned,
  kept in its flops.json) says so and changes nothing.
The checks only read the folder and happen before anything is written to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from vlp.core.checkpoint import resolve_checkpoint
from vlp.core.errors import UserError
from vlp.core.recipe import Recipe, TrainerSpec, load_recipe
from vlp.files import write_text_atomic

RUN_FILES = ("recipe.yaml", "metrics.jsonl", "checkpoints")
OPERATIONAL = ("trainer.log_every", "trainer.ckpt_every", "trainer.keep_checkpoints",
               "trainer.tensorboard", "trainer.device", "trainer.diagnostics_every",
               "data.num_workers", "eval.batch_size")
Change = tuple[str, Any, Any]  # dotted key, value in the run's recipe.yaml, value now


class RunFinished(UserError):
    """The run to resume already reached max_steps; nothing was changed."""


def holds_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: list(value) if isinstance(value, tuple) else value}


def _as_this_version_reads_it(saved: Path) -> dict[str, Any]:
    """The run's recipe.yaml with this version's defaults filled in, so a run started by an
    older vlp (without a key added since) is not told its recipe changed; as written if this
    version no longer accepts it (every difference is then shown)."""
    try:
        return yaml.safe_load(yaml.safe_dump(load_recipe(saved).to_dict()))
    except UserError:
        return yaml.safe_load(saved.read_text()) or {}


def recipe_changes(run_dir: Path, recipe: Recipe) -> list[Change]:
    """(dotted key, value in the run's recipe.yaml, value now) for every difference."""
    saved = Path(run_dir) / "recipe.yaml"
    if not saved.is_file():
        return []
    before = _flat(_as_this_version_reads_it(saved))
    now = _flat(yaml.safe_load(yaml.safe_dump(recipe.to_dict())))
    missing = object()
    return [(key, before.get(key, "(unset)"), now.get(key, "(unset)"))
            for key in sorted({*before, *now}) if before.get(key, missing) != now.get(key, missing)]


def resumable_keys(trainer: TrainerSpec) -> set[str]:
    """Keys a resume may change: the operational ones, and max_steps under a budget (which
    planned the steps instead, in flops.json)."""
    budgeted = trainer.budget_flops is not None or trainer.budget_samples is not None
    return set(OPERATIONAL) | ({"trainer.max_steps"} if budgeted else set())


def check_run_folder(run_dir: Path, recipe: Recipe, resume: str | None,
                     max_steps: int | None = None) -> list[Change]:
    """Refuse what would damage `run_dir` (see the module docstring); reads, never writes.
    `max_steps`: the run's length, if a budget planned it (default: trainer.max_steps).
    Returns the operational changes a resume applies (record them with `record_changes`)."""
    run_dir = Path(run_dir)
    if not resume:
        if holds_run(run_dir):
            raise UserError(f"{run_dir} already holds a run; continue it with --resume latest, "
                            "or pass another --out")
        return []
    trainer = recipe.spec.trainer
    changes = recipe_changes(run_dir, recipe)
    refused = [change for change in changes if change[0] not in resumable_keys(trainer)]
    if refused:
        shown = "; ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in refused)
        raise UserError(f"--resume: the recipe differs from the run's {run_dir / 'recipe.yaml'} "
                        f"({shown}); a resumed run continues its own recipe: resume without "
                        "these changes, or start a new run with another --out")
    name = resolve_checkpoint(run_dir, resume).name  # step_0000123 (other names: not checked)
    step = int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else -1
    budgeted = "trainer.max_steps" in resumable_keys(trainer)
    planned = "steps planned by its budget" if budgeted else "trainer.max_steps"
    max_steps = trainer.max_steps if max_steps is None else max_steps
    if step >= max_steps:
        raise RunFinished(f"{run_dir} already finished at step {step} ({planned} {max_steps}); "
                          "nothing to resume, nothing changed")
    return changes


def record_changes(run_dir: Path, recipe: Recipe, changes: list[Change], step: int) -> None:
    """Write the resumed recipe as the run's recipe.yaml and append what changed, at which
    step, to recipe_changes.jsonl (rank 0, before the first resumed step)."""
    run_dir = Path(run_dir)
    with (run_dir / "recipe_changes.jsonl").open("a") as log:
        log.write(json.dumps({"step": step, "changes": {k: [old, new] for k, old, new in changes}})
                  + "\n")
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
