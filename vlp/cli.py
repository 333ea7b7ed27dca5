"""Command line: `vlp-train RECIPE`, `vlp recipe validate`, `vlp plugins [NAME]`,
`vlp eval RUN_DIR [--data MANIFEST]`, `vlp export RUN OUT --format ...`, `vlp embed`,
`vlp data shard MANIFEST OUT/` and `vlp data prepare KIND SRC OUT/`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from vlp.core.errors import Interrupted, RecipeError, UserError
from vlp.core.recipe import load_recipe
from vlp.plugins import KINDS, PluginError, list_entries, summary_of

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
                   help="skip held-out retrieval (at the end, and every trainer.eval_every steps)")
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return 0
    from vlp.core import distributed as D
    from vlp.core.progress import final_report
    from vlp.core.trainer import train
    from vlp.eval.evaluate import retrieval_of_run

    result = train(recipe, args.out, args.resume, stop_after=args.stop_after,
                   evaluate=None if args.no_eval else retrieval_of_run)
    if D.rank() == 0:
        print(final_report(result.summary), flush=True)
        if not args.no_eval and result.steps >= recipe.spec.trainer.max_steps:
            from vlp.eval.evaluate import evaluate_tasks

            # the recipe's downstream tasks, on the run as trained: nothing is rebuilt, and the
            # other ranks, already done, are not waited for
            _print_evaluation(evaluate_tasks(result.run))
    return 0


def _print_evaluation(summary: dict, file=None) -> list[str]:
    """Print the downstream table; return the names of tasks that failed (and say why)."""
    from vlp.eval.runner import table

    print(f"downstream tasks (details in {Path(summary['run']) / 'eval'}):", file=file)
    print(table(summary), file=file, flush=True)
    failed = [name for name, r in summary["results"].items() if "error" in r]
    for name in failed:
        print(f"error: task '{name}': {summary['results'][name]['error']}", file=sys.stderr)
    return failed


def _cmd_validate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: valid ({len(recipe.objectives)} objectives: "
          f"{', '.join(recipe.objectives)})")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from vlp.plugins.describe import describe, find_all, markdown

    if args.markdown:
        print(markdown(), end="")
        return 0
    if args.name:
        print("\n\n".join(describe(entry) for entry in find_all(args.name)))
        return 0
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
    from vlp.core.progress import phases_to
    from vlp.eval.evaluate import evaluate_run, evaluate_run_tasks

    if args.tasks is not None:  # another task list: its table is the result
        summary = evaluate_run_tasks(args.run_dir, args.checkpoint, args.device, args.tasks)
        return EXIT_BAD_INPUT if _print_evaluation(summary) else 0
    with phases_to(sys.stderr):  # stdout is the result
        metrics = evaluate_run(args.run_dir, args.checkpoint, args.device, args.data)
    print(json.dumps(metrics, indent=2), flush=True)
    if args.data is not None:
        return 0
    with phases_to(sys.stderr):  # and the recipe's downstream tasks again, table on stderr
        summary = evaluate_run_tasks(args.run_dir, args.checkpoint, args.device)
    return EXIT_BAD_INPUT if _print_evaluation(summary, sys.stderr) else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from vlp.eval.compare import compare

    markdown, files, notes = compare(args.runs, args.out, args.baseline)
    print(markdown, end="")
    print("wrote " + ", ".join(str(f) for f in files))
    for note in notes:  # run folders left out, plots skipped
        print(note, file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from vlp.core.progress import phases_to
    from vlp.export.formats import export_run

    with phases_to(sys.stderr):
        out = export_run(args.run_dir, args.out, args.format, args.checkpoint)
    print(f"wrote {args.format} export to {out}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from vlp.core.progress import phases_to
    from vlp.core.run import load_run
    from vlp.export.embed import embed_manifest

    what = [w.strip() for w in args.what.split(",") if w.strip()]
    with phases_to(sys.stderr):
        run = load_run(args.run_dir, args.checkpoint, args.device)
        out, rows, bad = embed_manifest(run, args.manifest, args.out, what)
    skipped = f"; bad rows skipped: {json.dumps(bad)}" if bad else ""
    print(f"wrote {', '.join(what)} embeddings of {rows} rows to {out}{skipped}")
    return 0


def _cmd_shard(args: argparse.Namespace) -> int:
    from vlp.data.manifest import ManifestDataset
    from vlp.data.shards import write_shards

    dataset = ManifestDataset(args.manifest, image_root=args.image_root,
                              image_column=args.image_column, text_column=args.text_column,
                              id_column=args.id_column, fmt=args.format)
    index = write_shards(dataset, args.out, args.shard_size, args.seed)
    print(f"{index['total']} samples in {len(index['shards'])} shards under {args.out}; "
          f"bad rows skipped: {json.dumps(index['skipped'])}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from vlp.data.prepare import Options, prepare

    options = Options(sections=tuple(args.sections.split(",")), val_fraction=args.val_fraction,
                      test_fraction=args.test_fraction, eval_size=args.eval_size,
                      seed=args.seed)
    report = prepare(args.kind, args.src, args.out, options, args.resize)
    print(f"{args.kind}: rows {json.dumps(report['rows'])}; dropped "
          f"{json.dumps(report['dropped'])}; manifests in {args.out}")
    return 0


def _data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="data set tools").add_subparsers(dest="action",
                                                                      required=True)
    shard = data.add_parser("shard", help="write a manifest's rows as webdataset tar shards")
    shard.add_argument("manifest", type=Path, help="manifest file (csv, tsv or jsonl)")
    shard.add_argument("out", type=Path, help="folder for shard-NNNNNN.tar and index.json")
    shard.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    shard.add_argument("--seed", type=int, default=0, help="row shuffle before sharding")
    shard.add_argument("--image-root", type=Path,
                       help="folder image paths are relative to (default: the manifest's)")
    shard.add_argument("--image-column", default="image", help="column of image paths")
    shard.add_argument("--text-column", default="text", help="column of reports")
    shard.add_argument("--id-column", help="column of sample ids (default: the row number)")
    shard.add_argument("--format", choices=["csv", "tsv", "jsonl"],
                       help="manifest format (default: from the suffix)")
    shard.set_defaults(func=_cmd_shard)
    from vlp.data.prepare import KINDS

    prep = data.add_parser("prepare", help="manifests from a data set's published layout "
                                           "(see docs/data-sources.md)")
    prep.add_argument("kind", choices=sorted(KINDS), help="which data set's layout SRC has")
    prep.add_argument("src", type=Path, help="the data set's folder, as published")
    prep.add_argument("out", type=Path, help="folder for train/val/test.jsonl")
    prep.add_argument("--resize", type=int, metavar="PX",
                      help="also write PNG copies with this shorter side under OUT/images")
    prep.add_argument("--sections", default="findings,impression",
                      help="report sections to keep (MIMIC-CXR, IU X-Ray)")
    prep.add_argument("--val-fraction", type=float, default=0.05,
                      help="hashed split where the data set has none")
    prep.add_argument("--test-fraction", type=float, default=0.05,
                      help="hashed test share where the data set has no split")
    prep.add_argument("--eval-size", type=int, default=2000,
                      help="ROCO held-out pairs per split (M3AE protocol)")
    prep.add_argument("--seed", type=int, default=0, help="seed of hashed splits and sampling")
    prep.set_defaults(func=_cmd_prepare)


def _main_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    p = argparse.ArgumentParser(prog="vlp", description="Medical vision-language pre-training.")
    p.add_argument("--version", action="version", version=f"vlp {version('vlp')}")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a recipe (same as vlp-train)",
                           parents=[_train_parser("vlp train")], add_help=False)
    train.set_defaults(func=_cmd_train)
    recipe = sub.add_parser("recipe", help="recipe tools").add_subparsers(dest="action",
                                                                         required=True)
    validate = recipe.add_parser("validate", help="check a recipe without building anything")
    _recipe_args(validate)
    validate.set_defaults(func=_cmd_validate)
    plugins = sub.add_parser("plugins", help="list installed plugins, or one plugin's parameters")
    plugins.add_argument("name", nargs="?",
                         help="a plugin name: print its parameters, types, defaults and docs")
    plugins.add_argument("--markdown", action="store_true",
                         help="print docs/plugins.md (every built-in plugin's parameters)")
    plugins.set_defaults(func=_cmd_plugins)
    ev = sub.add_parser("eval", help="held-out retrieval and the downstream tasks of a run folder")
    ev.add_argument("run_dir", type=Path, help="run folder written by vlp-train")
    ev.add_argument("--checkpoint", default="latest",
                    help="'latest', 'best', a step folder name (step_0000400) or a path")
    ev.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu', 'cuda:0'")
    ev.add_argument("--data", type=Path, metavar="MANIFEST",
                    help="evaluate on this manifest (a separate test set, read with the run's "
                         "data settings) instead of the run's held-out split")
    ev.add_argument("--tasks", type=Path, metavar="FILE.yaml",
                    help="run this task file (an eval: section on its own) instead")
    ev.set_defaults(func=_cmd_eval)
    cmp = sub.add_parser("compare", help="mean ± std over seeds of several runs' downstream "
                                         "results, variants as rows (docs/ablations.md)")
    cmp.add_argument("runs", type=Path, nargs="+", metavar="RUN_OR_SWEEP_DIR",
                     help="run folders, or folders to search for run folders (a sweep's output): "
                          "a sweep's runs group by budget and variant, others by recipe name")
    cmp.add_argument("--out", type=Path, default=Path("comparison"),
                     help="folder for results.md/.csv (out/<budget>/ for a sweep's runs), the "
                          "PNG plots and comparison.md/.csv, one row per run (default comparison/)")
    cmp.add_argument("--baseline", metavar="VARIANT",
                     help="the reference row for the within-seed-spread marks (default: the first "
                          "variant: the sweep's first, or the first run's recipe)")
    cmp.set_defaults(func=_cmd_compare)
    ex = sub.add_parser("export", help="write a run's encoders for timm, transformers or open_clip")
    ex.add_argument("run_dir", type=Path, help="run folder written by vlp-train")
    ex.add_argument("out", type=Path, help="folder to write the export to")
    ex.add_argument("--format", required=True, choices=("timm", "hf", "open_clip"),
                    help="timm: image encoder for timm.create_model('local-dir:OUT'); hf: text "
                         "encoder + tokenizer for transformers' AutoModel/AutoTokenizer; "
                         "open_clip: both towers for open_clip.create_model('local-dir:OUT')")
    ex.add_argument("--checkpoint", default="latest",
                    help="'latest', 'best', a step folder name (step_0000400) or a path")
    ex.set_defaults(func=_cmd_export)
    em = sub.add_parser("embed", help="embed a manifest's images and/or reports with a run")
    em.add_argument("run_dir", type=Path, help="run folder written by vlp-train")
    em.add_argument("manifest", type=Path,
                    help="CSV/TSV/JSONL manifest, read with the run's data settings")
    em.add_argument("out", type=Path, help="output file: .safetensors or .parquet")
    em.add_argument("--what", default="image,text",
                    help="comma-separated: image, text or both (default: image,text)")
    em.add_argument("--checkpoint", default="latest",
                    help="'latest', 'best', a step folder name (step_0000400) or a path")
    em.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu', 'cuda:0'")
    em.set_defaults(func=_cmd_embed)
    _data_parser(sub)
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
    except (UserError, DataError, FileNotFoundError, PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = _main_parser().parse_args(argv)
    return _run(args.func, args)


def train_main(argv: list[str] | None = None) -> int:
    return _run(_cmd_train, _train_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
