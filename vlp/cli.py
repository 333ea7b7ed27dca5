"""Command line: `vlp-train RECIPE`, `vlp recipe validate`, `vlp plugins`, `vlp eval RUN_DIR`,
`vlp compare RUN...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from vlp.core.errors import Interrupted, RecipeError, UserError
from vlp.core.recipe import load_recipe
from vlp.plugins import KINDS, list_entries, summary_of

EXIT_BAD_INPUT = 2


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set trainer.max_steps=100 (repeatable)")


def _train_parser(prog: str = "vlp-train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a recipe.")
    _recipe_args(p)
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<time>/)")
    p.add_argument("--resume", metavar="CKPT",
                   help="'latest' or a checkpoint folder of the run in --out")
    p.add_argument("--stop-after", type=int, metavar="STEP",
                   help="stop at this step with a checkpoint (continue with --resume latest)")
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved recipe and exit")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the downstream tasks (the recipe's eval: section) at the end")
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return 0
    from vlp.core import distributed as D
    from vlp.core.trainer import train
    from vlp.eval.evaluate import evaluate_tasks

    result = train(recipe, args.out, args.resume, stop_after=args.stop_after,
                   evaluate=None if args.no_eval else evaluate_tasks)
    if D.rank() == 0:
        print(f"run folder: {result.run_dir}")
        losses = {k: round(v, 4) for k, v in result.last_metrics.items() if k.startswith("loss")}
        print(f"step {result.steps}: {json.dumps(losses)}")
        if result.evaluation:
            _print_evaluation(result.evaluation)
    return 0


def _print_evaluation(summary: dict) -> None:
    from vlp.eval.runner import table

    print(f"downstream tasks (details in {Path(summary['run']) / 'eval'}):")
    print(table(summary))


def _cmd_validate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: valid ({len(recipe.objectives)} objectives: "
          f"{', '.join(recipe.objectives)})")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    rows = []
    for kind in KINDS:
        for name, entry in sorted(list_entries(kind).items()):
            error = entry.error
            summary = f"BROKEN: {error}" if error else summary_of(entry.load())
            rows.append((kind, name, f"{entry.distribution} {entry.version}", summary))
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from vlp.eval.evaluate import evaluate_run

    summary = evaluate_run(args.run_dir, args.checkpoint, args.device, args.tasks)
    _print_evaluation(summary)
    failed = [name for name, r in summary["results"].items() if "error" in r]
    for name in failed:
        print(f"error: task '{name}': {summary['results'][name]['error']}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from vlp.eval.compare import compare

    markdown, files, skipped = compare(args.runs, args.out)
    print(markdown, end="")
    print("wrote " + ", ".join(str(f) for f in files))
    if skipped:
        print(skipped, file=sys.stderr)
    return 0


def _main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlp", description="Medical vision-language pre-training.")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a recipe (same as vlp-train)",
                           parents=[_train_parser("vlp train")], add_help=False)
    train.set_defaults(func=_cmd_train)
    recipe = sub.add_parser("recipe", help="recipe tools").add_subparsers(dest="action",
                                                                         required=True)
    validate = recipe.add_parser("validate", help="check a recipe without building anything")
    _recipe_args(validate)
    validate.set_defaults(func=_cmd_validate)
    sub.add_parser("plugins", help="list installed plugins").set_defaults(func=_cmd_plugins)
    ev = sub.add_parser("eval", help="run a run folder's downstream tasks again, or others")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--tasks", type=Path, metavar="FILE.yaml",
                    help="a task file (an eval: section on its own) instead of the recipe's")
    ev.add_argument("--checkpoint", default="latest")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_cmd_eval)
    cmp = sub.add_parser("compare", help="one table of several runs' downstream results")
    cmp.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--out", type=Path, default=Path("comparison"),
                     help="folder for comparison.md/.csv and the PNG plots (default comparison/)")
    cmp.set_defaults(func=_cmd_compare)
    return p


def _run(func, args: argparse.Namespace) -> int:
    """Run a command; user errors print one clear message and exit 2, without a traceback."""
    from vlp.core.runfolder import RunFinished
    from vlp.data.sample import DataError

    try:
        return func(args)
    except RunFinished as exc:  # nothing to do is not a failure
        print(str(exc), file=sys.stderr)
        return 0
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except RecipeError as exc:
        source = getattr(args, "tasks", None) or getattr(args, "recipe", None) or args.run_dir
        print(f"error: {source}: {exc}", file=sys.stderr)
    except (UserError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = _main_parser().parse_args(argv)
    return _run(args.func, args)


def train_main(argv: list[str] | None = None) -> int:
    return _run(_cmd_train, _train_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
