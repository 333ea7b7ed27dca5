"""`vlp compare`: one table of several runs' downstream results (recipes as rows, task metrics as
columns, the shape of the papers' tables), as Markdown and CSV, and PNG plots (matplotlib)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from vlp.core.errors import UserError
from vlp.eval.metrics import MissingExtra, require


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "eval" / "summary.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no eval/summary.json (run `vlp eval {run_dir}` first)")
    return json.loads(path.read_text())


def _label(summary: dict[str, Any], run_dir: Path, taken: set[str]) -> str:
    label = Path(summary.get("recipe", run_dir.name)).stem
    return label if label not in taken else f"{label} ({run_dir.name})"


def comparison(run_dirs: list[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    """(metric columns "task/metric", one row per run); per-label metrics are left out."""
    columns: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        summary = load_summary(run_dir)
        row: dict[str, Any] = {"run": _label(summary, run_dir, {r["run"] for r in rows})}
        for task in summary["order"]:
            record = summary["results"][task]
            metrics = record.get("metrics", {})
            for metric in record.get("metric_order", sorted(metrics)):
                if "/" not in metric:
                    columns[f"{task}/{metric}"] = None
                    row[f"{task}/{metric}"] = metrics[metric]["value"]
        rows.append(row)
    return list(columns), rows


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"


def to_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([r["run"], *(_cell(r.get(c)) for c in columns)]) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run", *columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _losses(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        for key, value in record.items():
            if key.startswith("loss/"):
                curves.setdefault(key[len("loss/"):], []).append((record["step"], value))
    return curves


def plot(run_dirs: list[Path], columns: list[str], rows: list[dict[str, Any]], out: Path
         ) -> list[Path]:
    """losses.png (per-objective loss curves, one panel per run) and downstream.png (one bar
    panel per metric); needs matplotlib (the `plots` extra)."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, len(run_dirs), figsize=(4 * len(run_dirs), 3), squeeze=False)
    for ax, run_dir, row in zip(axes[0], run_dirs, rows):
        for name, curve in _losses(run_dir).items():
            ax.plot([s for s, _ in curve], [v for _, v in curve], label=name)
        ax.set(title=row["run"], xlabel="step", ylabel="loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=100)
    plt.close(fig)
    written.append(out / "losses.png")
    if columns:
        ncols = min(4, len(columns))
        nrows = math.ceil(len(columns) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows),
                                 squeeze=False)
        for ax, column in zip(axes.flat, columns):
            values = [r.get(column) for r in rows]
            ax.bar(range(len(rows)), [0 if v is None else v for v in values])
            ax.set_xticks(range(len(rows)), [r["run"] for r in rows], rotation=30, fontsize=7)
            ax.set_title(column, fontsize=8)
        for ax in list(axes.flat)[len(columns):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "downstream.png", dpi=100)
        plt.close(fig)
        written.append(out / "downstream.png")
    return written


def compare(run_dirs: list[Path], out: Path) -> tuple[str, list[Path], str | None]:
    """Write comparison.md, comparison.csv and the plots under `out`; returns (Markdown table,
    files written, why plots were skipped or None)."""
    columns, rows = comparison(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(columns, rows)
    (out / "comparison.md").write_text(markdown)
    (out / "comparison.csv").write_text(to_csv(columns, rows))
    files = [out / "comparison.md", out / "comparison.csv"]
    try:
        files += plot(run_dirs, columns, rows, out)
    except MissingExtra as exc:
        return markdown, files, f"plots skipped: matplotlib {exc}"
    return markdown, files, None
