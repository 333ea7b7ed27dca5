"""`vlp compare`: downstream results of several runs in the shape of the papers' ablation tables.

Runs are grouped into variants (a sweep's (budget, variant) from sweep_run.json, otherwise the
recipe's name), and every `task/metric` is reported as mean ± sample std over a variant's runs
(its seeds), variants as rows, in Markdown and CSV, with differences from the baseline that are
within the seed spread marked; PNG plots come from vlp.eval.plots (matplotlib). One row per run
(comparison.md/.csv) is written too.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlp.core.errors import UserError
from vlp.eval.metrics import MissingExtra

WITHIN_SPREAD = "≈"
LEGEND = (f"{WITHIN_SPREAD}: within the seed spread of the baseline, "
          "|mean − baseline mean| ≤ std + baseline std (the two mean ± std intervals overlap); "
          "judged only where both have n ≥ 2. Cells are mean ± sample std (n − 1) over the "
          "row's n seeds; std is blank for n = 1; (n=k): the metric exists in k of the row's runs.")


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "eval" / "summary.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no eval/summary.json (run `vlp eval {run_dir}` first)")
    return json.loads(path.read_text())


def _optional_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """A run's downstream metrics as {"task/metric": value} in task order; per-label metrics
    (a "/" in the metric's name) stay in the JSON, failed tasks have none."""
    values: dict[str, float | None] = {}
    for task in summary["order"]:
        record = summary["results"][task]
        metrics = record.get("metrics", {})
        for metric in record.get("metric_order", sorted(metrics)):
            if "/" not in metric:
                values[f"{task}/{metric}"] = metrics[metric]["value"]
    return values


# ----------------------------------------------------------------------------- one row per run


def sweep_tag(run_dir: Path) -> dict[str, Any] | None:
    """The run's sweep_run.json (budget, variant, seed), or None for a run outside a sweep."""
    tag = _optional_json(Path(run_dir) / "sweep_run.json")
    if tag is not None and not all(k in tag for k in ("budget", "variant", "seed")):
        raise UserError(f"{run_dir / 'sweep_run.json'}: needs 'budget', 'variant' and 'seed'")
    return tag


def _label(summary: dict[str, Any], run_dir: Path, taken: set[str]) -> str:
    tag = sweep_tag(run_dir)
    if tag is not None:
        return f"{tag['budget']}/{tag['variant']}/seed_{tag['seed']}"
    label = Path(summary.get("recipe", run_dir.name)).stem
    return label if label not in taken else f"{label} ({run_dir.name})"


def comparison(run_dirs: list[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    """(metric columns "task/metric", one row per run)."""
    columns: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        summary = load_summary(run_dir)
        metrics = run_metrics(summary)
        columns.update(dict.fromkeys(metrics))
        rows.append({"run": _label(summary, run_dir, {r["run"] for r in rows}), **metrics})
    return list(columns), rows


def _decimals(value: float) -> int:
    return 3 if abs(value) < 1 else 1


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{_decimals(value)}f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    return _markdown_table(["run", *columns],
                           [[r["run"], *(_cell(r.get(c)) for c in columns)] for r in rows])


def _csv_text(fieldnames: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    return _csv_text(["run", *columns], rows)


# ----------------------------------------------------------------------------- over seeds


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (n - 1 in the denominator) of a metric's values."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return math.fsum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        """None for fewer than 2 values: one seed says nothing about the spread."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (self.n - 1))


def within_spread(variant: Spread, baseline: Spread) -> bool | None:
    """True when |mean - baseline mean| <= std + baseline std (the mean ± std intervals
    overlap); None (not judged) when either side has fewer than 2 values."""
    if variant.std is None or baseline.std is None:
        return None
    return abs(variant.mean - baseline.mean) <= variant.std + baseline.std


def _finite_values(values: list[float | None]) -> tuple[float, ...]:
    return tuple(v for v in values if v is not None and math.isfinite(v))


@dataclass(frozen=True)
class Variant:
    """One row: a variant's runs (one per seed), their metrics and training compute."""

    label: str
    runs: tuple[Path, ...]
    metrics: dict[str, Spread]
    compute: dict[str, Spread]  # "steps", "flops_per_step", "total_flops" from flops.json

    @classmethod
    def of(cls, label: str, runs: list[Path], per_run: list[dict[str, float | None]],
           columns: list[str]) -> Variant:
        """`per_run`: each run's run_metrics; compute from each run's flops.json, if any."""
        flops = [f for f in (_optional_json(run / "flops.json") for run in runs) if f]
        return cls(label, tuple(runs),
                   {c: Spread(_finite_values([m.get(c) for m in per_run])) for c in columns},
                   {k: Spread(tuple(float(f[k]) for f in flops if k in f))
                    for k in ("steps", "flops_per_step", "total_flops")})


def variants_of(groups: dict[str, list[Path]]) -> tuple[list[str], list[Variant]]:
    """(metric columns "task/metric", one Variant per group in the groups' order)."""
    empty = [label for label, runs in groups.items() if not runs]
    if empty:
        raise UserError(f"variant(s) without run folders: {', '.join(empty)}")
    per_run = {label: [run_metrics(load_summary(run)) for run in runs]
               for label, runs in groups.items()}
    columns: dict[str, None] = {}
    for metrics in (m for ms in per_run.values() for m in ms):
        columns.update(dict.fromkeys(metrics))
    return list(columns), [Variant.of(label, list(runs), per_run[label], list(columns))
                           for label, runs in groups.items()]


def _spread_cell(spread: Spread, row_n: int, mark: bool | None) -> str:
    if spread.mean is None:
        return ""
    digits = _decimals(max(abs(spread.mean), spread.std or 0.0))
    text = f"{spread.mean:.{digits}f}"
    if spread.std is not None:
        text += f" ± {spread.std:.{digits}f}"
    if mark:
        text += f" {WITHIN_SPREAD}"
    return text + (f" (n={spread.n})" if spread.n < row_n else "")


def _compute_cells(variant: Variant) -> list[str]:
    """Mean steps and total FLOPs over the runs with flops.json ((n=k): k of the row's runs)."""
    cells = []
    for key, form in (("steps", "g"), ("total_flops", ".3g")):
        spread = variant.compute[key]
        cells.append("" if spread.mean is None else f"{spread.mean:{form}}"
                     + (f" (n={spread.n})" if spread.n < len(variant.runs) else ""))
    return cells


def results_markdown(columns: list[str], variants: list[Variant], baseline: Variant) -> str:
    """The table (variants as rows, mean ± std cells, within-spread marks) and its legend."""
    with_compute = any(v.compute["steps"].n for v in variants)
    header = ["variant", "n", *(["steps", "total FLOPs"] if with_compute else []), *columns]
    rows = []
    for variant in variants:
        marks = {c: None if variant is baseline
                 else within_spread(variant.metrics[c], baseline.metrics[c]) for c in columns}
        rows.append([variant.label, str(len(variant.runs)),
                     *(_compute_cells(variant) if with_compute else []),
                     *(_spread_cell(variant.metrics[c], len(variant.runs), marks[c])
                       for c in columns)])
    compute = (" steps and total FLOPs: means over the runs' flops.json."
               if with_compute else "")
    return (_markdown_table(header, rows) + f"\nBaseline: {baseline.label}. {LEGEND}{compute}\n")


def results_rows(columns: list[str], variants: list[Variant], baseline: Variant
                 ) -> tuple[list[str], list[dict[str, Any]]]:
    """CSV fields and rows: per metric separate mean, std, n and within_spread columns
    (1/0, blank where not judged), full precision."""
    fields = ["variant", "is_baseline", "n", "steps", "flops_per_step", "total_flops"]
    for column in columns:
        fields += [f"{column}/mean", f"{column}/std", f"{column}/n", f"{column}/within_spread"]
    rows = []
    for variant in variants:
        row: dict[str, Any] = {"variant": variant.label, "is_baseline": int(variant is baseline),
                               "n": len(variant.runs)}
        row.update({k: s.mean for k, s in variant.compute.items()})
        for column in columns:
            spread = variant.metrics[column]
            mark = None if variant is baseline else within_spread(spread, baseline.metrics[column])
            row.update({f"{column}/mean": spread.mean, f"{column}/std": spread.std,
                        f"{column}/n": spread.n,
                        f"{column}/within_spread": None if mark is None else int(mark)})
        rows.append(row)
    return fields, rows


def aggregate(groups: dict[str, list[Path]], out: Path, baseline: str | None = None
              ) -> tuple[str, list[Path], str | None]:
    """Write out/results.md, out/results.csv and the PNG plots for `groups` (variant label ->
    its run folders, one per seed, in row order); returns (Markdown table, files written, why
    plots were skipped or None). `baseline` (default: the first group) is the reference row."""
    if not groups:
        raise UserError("nothing to aggregate: no variants")
    baseline = next(iter(groups)) if baseline is None else baseline
    if baseline not in groups:
        raise UserError(f"baseline '{baseline}' is not a variant (variants: "
                        f"{', '.join(groups)})")
    columns, variants = variants_of(groups)
    reference = variants[list(groups).index(baseline)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = results_markdown(columns, variants, reference)
    (out / "results.md").write_text(markdown)
    (out / "results.csv").write_text(_csv_text(*results_rows(columns, variants, reference)))
    files = [out / "results.md", out / "results.csv"]
    from vlp.eval.plots import plot_variants

    try:
        files += plot_variants(columns, variants, reference, out)
    except MissingExtra as exc:
        return markdown, files, f"plots skipped: matplotlib {exc}"
    return markdown, files, None


# ----------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class Found:
    """What `vlp compare` found under its arguments."""

    runs: list[Path]  # run folders with eval/summary.json, each once
    order: list[str]  # the variant order of the sweeps' manifests (sweep.json)
    unevaluated: list[Path]  # run folders under them that have no eval/summary.json (yet)
    budgets: list[str] = field(default_factory=list)  # the manifests' budget order
    baseline: str | None = None  # the manifests' baseline, where they name one and agree


def _is_run_folder(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "sweep_run.json").is_file()


def run_folders(paths: list[Path]) -> Found:
    """The run folders `paths` name: a run folder, or any folder, searched for run folders
    with eval/summary.json (those without are listed, not silently dropped)."""
    runs: dict[Path, None] = {}
    order: dict[str, None] = {}
    unevaluated: dict[Path, None] = {}
    for path in map(Path, paths):
        if (path / "eval" / "summary.json").is_file():
            runs[path.resolve()] = None
            continue
        if not path.is_dir():
            raise UserError(f"{path}: no such run or sweep folder")
        found = sorted(p.parent.parent.resolve() for p in path.rglob("eval/summary.json"))
        if not found:
            raise UserError(f"{path}: no run folder under it has eval/summary.json "
                            f"(run `vlp eval RUN_DIR` on each first)")
        runs.update(dict.fromkeys(found))
        unevaluated.update(dict.fromkeys(
            sorted(p.parent for p in path.rglob("recipe.yaml") if _is_run_folder(p.parent)
                   and not (p.parent / "eval" / "summary.json").is_file())))
    manifests = [m for m in map(_optional_json, _manifest_paths(list(runs))) if m]
    for manifest in manifests:
        order.update(dict.fromkeys(variant_order(manifest)))
    budgets = dict.fromkeys(str(b) for m in manifests for b in m.get("budgets", {}))
    baselines = {m["baseline"] for m in manifests if m.get("baseline")}
    return Found(list(runs), list(order), list(unevaluated), list(budgets),
                 baselines.pop() if len(baselines) == 1 else None)


def _manifest_paths(runs: list[Path]) -> list[Path]:
    """The sweep.json of every sweep the runs belong to (OUT/<budget>/<variant>/seed_N/)."""
    paths = {run.parents[2] / "sweep.json": None for run in runs
             if sweep_tag(run) is not None and len(run.parents) > 2}
    return [path for path in paths if path.is_file()]


def variant_order(manifest: dict[str, Any] | None) -> list[str]:
    """The variant names a sweep manifest lists, in its order ("variants" as a mapping, a list
    of names, or a list of records with "name")."""
    variants = (manifest or {}).get("variants", [])
    if isinstance(variants, dict):
        return [str(name) for name in variants]
    return [str(v["name"] if isinstance(v, dict) else v) for v in variants
            if not isinstance(v, dict) or "name" in v]


def group_runs(run_dirs: list[Path], order: list[str] | None = None
               ) -> dict[str | None, dict[str, list[Path]]]:
    """budget -> variant -> run folders. A sweep's runs (sweep_run.json) group by (budget,
    variant), in `order` where listed; other runs under budget None by recipe name."""
    budgets: dict[str | None, dict[str, list[Path]]] = {}
    for run in run_dirs:
        tag = sweep_tag(run)
        if tag is not None:
            budget, variant = str(tag["budget"]), str(tag["variant"])
        else:
            budget, variant = None, Path(load_summary(run)["recipe"]).stem
        budgets.setdefault(budget, {}).setdefault(variant, []).append(Path(run))
    rank = {name: i for i, name in enumerate(order or [])}
    return {budget: dict(sorted(groups.items(), key=lambda item: rank.get(item[0], len(rank))))
            for budget, groups in budgets.items()}


def compare(paths: list[Path], out: Path, baseline: str | None = None
            ) -> tuple[str, list[Path], list[str]]:
    """The tables of `vlp compare`: per budget the variants over seeds (results.md/.csv and
    plots, in out/ for runs outside a sweep and out/<budget>/ for a sweep's), and one row per
    run in out/comparison.md/.csv. Returns (Markdown, files written, notes: run folders left
    out for lack of eval/summary.json, why plots were skipped)."""
    found = run_folders(paths)
    budgets = group_runs(found.runs, found.order)
    rank = {name: i for i, name in enumerate(found.budgets)}  # the sweep file's budget order
    budgets = dict(sorted(budgets.items(), key=lambda item: rank.get(item[0], len(rank))))
    if baseline is None and all(found.baseline in groups for groups in budgets.values()):
        baseline = found.baseline  # the sweep's `baseline:` (None: each table's first row)
    if baseline is not None:
        lacking = [str(b) for b, groups in budgets.items() if baseline not in groups]
        if lacking:
            raise UserError(f"--baseline '{baseline}' is not a variant of budget(s) "
                            f"{', '.join(lacking)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns, rows = comparison(found.runs)
    (out / "comparison.md").write_text(to_markdown(columns, rows))
    (out / "comparison.csv").write_text(to_csv(columns, rows))
    files, texts = [out / "comparison.md", out / "comparison.csv"], []
    notes = [f"left out {run}: no eval/summary.json (run `vlp eval {run}`)"
             for run in found.unevaluated]
    for budget, groups in budgets.items():
        markdown, written, skipped = aggregate(groups, out if budget is None else out / budget,
                                               baseline)
        texts.append(markdown if budget is None else f"## budget {budget}\n\n{markdown}")
        files += written
        if skipped and skipped not in notes:
            notes.append(skipped)
    return "\n".join(texts), files, notes
