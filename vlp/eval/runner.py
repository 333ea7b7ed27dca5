"""Runs a list of downstream tasks on a trained run and writes <run>/eval/.

Per task: `<task>.json` (every metric beside its baseline, the data rows left out, encoder
passes, seconds) and `<task>.predictions.csv` (one row per evaluated sample); `summary.json`
gathers them. A task whose data is wrong or whose optional library is missing is reported
and the others still run: nothing already trained is lost.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlp.core.checkpoint import write_json
from vlp.core.errors import UserError
from vlp.core.recipe import EvalSpec, Resolved, tasks_to_dict
from vlp.data.sample import DataError
from vlp.eval.context import TaskContext
from vlp.eval.features import FrozenFeatures
from vlp.eval.metrics import EXTRAS, MissingExtra

if TYPE_CHECKING:
    from vlp.core.run import Run


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def _missing_extra(requires: tuple[str, ...]) -> str | None:
    for module in requires:
        if importlib.util.find_spec(module) is None:
            dist, extra = EXTRAS[module]
            return f"needs {dist}, which is not installed: pip install -e '.[{extra}]'"
    return None


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def run_tasks(run: Run, spec: EvalSpec, tasks: dict[str, Resolved]) -> dict[str, Any]:
    """Run `tasks` in order on `run`'s model; write and return the summary."""
    out = run.run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    data = run.recipe.spec.data
    features = FrozenFeatures(run.model, run.collate, run.device, spec.batch_size,
                              data.num_workers)
    ctx = TaskContext(run.model, run.collate, run.device, features, data.image_size,
                      data.channels, data.seed, run.data.val, tuple(spec.ks), data.num_workers)
    results: dict[str, Any] = {}
    for name, resolved in tasks.items():
        task = resolved.cls(resolved.params, name)
        before, start = dict(features.passes), time.perf_counter()
        record: dict[str, Any] = {"task": name, "plugin": resolved.plugin,
                                  "params": resolved.params.model_dump(mode="json")}
        problem = _missing_extra(resolved.cls.requires)
        try:
            if problem:
                raise MissingExtra(problem)
            result = task.run(ctx)
        except (DataError, UserError) as exc:  # the task's data or set-up, not a plugin bug
            record["error"] = str(exc)
            results[name] = record
            write_json(out / f"{name}.json", record)
            continue
        record.update({
            "n": result.n,
            "metrics": {k: {**m.to_dict(), "value": _finite(m.value)}
                        for k, m in result.metrics.items()},
            "metric_order": list(result.metrics),  # the JSON's keys are sorted
            **result.data,
            "passes": {k: v - before.get(k, 0) for k, v in features.passes.items()
                       if v != before.get(k, 0)},
            "seconds": round(time.perf_counter() - start, 2),
        })
        write_json(out / f"{name}.json", record)
        _write_csv(out / f"{name}.predictions.csv", result.predictions)
        results[name] = record
    summary = {"run": str(run.run_dir), "recipe": run.recipe.source, "order": list(results),
               "tasks_config": tasks_to_dict(spec, tasks), "results": results,
               "feature_passes": features.pass_counts()}
    write_json(out / "summary.json", summary)
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"


def table(summary: dict[str, Any]) -> str:
    """The downstream results as a Markdown table: task, metric, value, baseline."""
    lines = ["| task | metric | value | baseline |", "|---|---|---|---|"]
    for name in summary["order"]:  # the JSON's keys are sorted; this is the task order
        record = summary["results"][name]
        if "error" in record:
            lines.append(f"| {name} | skipped | {record['error']} | |")
            continue
        for metric, m in record["metrics"].items():
            if "/" in metric:
                continue  # per-label detail stays in the JSON
            base = "" if m["baseline"] is None else f"{_fmt(m['baseline'])} ({m['baseline_kind']})"
            lines.append(f"| {name} | {metric} | {_fmt(m['value'])} | {base} |")
    return "\n".join(lines)
