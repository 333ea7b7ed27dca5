"""PNG plots of `vlp compare` over variants and seeds (matplotlib, the `plots` extra):
downstream.png (metric per variant, mean ± std and each seed), losses.png (per-objective loss
curves, mean ± std over seeds, against steps and, where every run has flops.json, training
FLOPs) and gradients.png (per-objective gradient norms and cosines, from gradients.jsonl)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlp.eval.metrics import require

if TYPE_CHECKING:
    from vlp.eval.compare import Variant

Curve = dict[int, float]  # step -> value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none if it is missing); a line cut short by a crash
    is left out."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def curves(path: Path, prefix: str) -> dict[str, Curve]:
    """{key without `prefix`: {step: value}} of the finite values whose key starts with
    `prefix` in a metrics.jsonl or gradients.jsonl."""
    found: dict[str, Curve] = {}
    for record in read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        for key, value in record.items():
            if key.startswith(prefix) and isinstance(value, (int, float)) and math.isfinite(value):
                found.setdefault(key[len(prefix):], {})[int(record["step"])] = float(value)
    return found


def mean_curve(seeds: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps every seed logged, mean, sample std over seeds; 0 for one seed)."""
    steps = sorted(set.intersection(*(set(c) for c in seeds))) if seeds else []
    values = np.array([[c[s] for s in steps] for c in seeds], dtype=float)
    if not steps:
        values = np.zeros((len(seeds), 0))
    std = values.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(len(steps))
    return np.array(steps), values.mean(axis=0), std


def _pyplot() -> Any:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _grid(plt: Any, panels: int, width: float = 3.4, height: float = 2.8, ncols: int = 4):
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    return fig, list(axes.flat)


def downstream(columns: list[str], variants: list[Variant], baseline: Variant, path: Path
               ) -> Path:
    """One panel per metric: each variant's mean with ± std error bars, its seeds as dots,
    the baseline's mean as a dashed line."""
    plt = _pyplot()
    fig, axes = _grid(plt, len(columns))
    positions = range(len(variants))
    for ax, column in zip(axes, columns):
        for i, variant in enumerate(variants):
            spread = variant.metrics[column]
            if spread.mean is None:
                continue
            offsets = np.linspace(-0.12, 0.12, spread.n) if spread.n > 1 else np.zeros(1)
            ax.scatter(i + 0.25 + offsets, spread.values, s=9, color="0.3", zorder=3)
            ax.errorbar(i, spread.mean, yerr=spread.std or 0.0, fmt="o", capsize=4,
                        color=f"C{i % 10}")
        if baseline.metrics[column].mean is not None:
            ax.axhline(baseline.metrics[column].mean, ls="--", lw=0.8, color="0.5")
        ax.set_xticks(list(positions), [v.label for v in variants], rotation=30, ha="right",
                      fontsize=7)
        ax.set_title(column, fontsize=8)
    fig.suptitle(f"mean ± std over seeds (dots: seeds; dashed: baseline {baseline.label})",
                 fontsize=8)
    return _save(fig, path)


def losses(variants: list[Variant], path: Path) -> Path | None:
    """One panel per objective, variants as lines (mean over seeds, ± std shaded where n > 1)
    against the step; a second row against training FLOPs (step * flops_per_step) where every
    run has flops.json: what an equal-compute comparison reads. None when no run logged a
    loss (no metrics.jsonl)."""
    plt = _pyplot()
    per_run = {v.label: [curves(run / "metrics.jsonl", "loss/") for run in v.runs]
               for v in variants}
    objectives = list(dict.fromkeys(o for runs in per_run.values() for c in runs for o in c))
    if not objectives:
        return None
    with_flops = all(v.compute["flops_per_step"].n == len(v.runs) for v in variants)
    xs = [("step", None)] + ([("training FLOPs", "flops_per_step")] if with_flops else [])
    fig, axes = plt.subplots(len(xs), len(objectives), figsize=(3.8 * len(objectives), 3 * len(xs)),
                             squeeze=False)
    for row, (xlabel, scale_key) in zip(axes, xs):
        for ax, objective in zip(row, objectives):
            for i, variant in enumerate(variants):
                seeds = [c[objective] for c in per_run[variant.label] if objective in c]
                if not seeds:
                    continue
                steps, mean, std = mean_curve(seeds)
                x = steps * (variant.compute[scale_key].mean if scale_key else 1)
                ax.plot(x, mean, color=f"C{i % 10}", label=f"{variant.label} (n={len(seeds)})")
                if len(seeds) > 1:
                    ax.fill_between(x, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2)
            ax.set(title=f"loss/{objective}", xlabel=xlabel, ylabel="loss")
        row[0].legend(fontsize=7)
    return _save(fig, path)


def gradients(variants: list[Variant], path: Path) -> Path | None:
    """Per variant (a row): a panel per shared part with each objective's gradient norm over
    steps (mean over seeds, log scale), and a heatmap of the mean pairwise cosine (objective
    pairs x parts, over steps and seeds). None when no run has gradients.jsonl."""
    found = {v.label: [run / "gradients.jsonl" for run in v.runs
                       if (run / "gradients.jsonl").is_file()] for v in variants}
    found = {label: files for label, files in found.items() if files}
    if not found:
        return None
    plt = _pyplot()
    norms = {label: [curves(f, "norm/") for f in files] for label, files in found.items()}
    cosines = {label: [curves(f, "cos/") for f in files] for label, files in found.items()}
    parts = list(dict.fromkeys(k.split("/")[-1] for runs in norms.values() for c in runs
                               for k in c))
    fig, axes = plt.subplots(len(found), len(parts) + 1, squeeze=False,
                             figsize=(3.6 * (len(parts) + 1), 2.9 * len(found)))
    for row, label in zip(axes, found):
        for ax, part in zip(row, parts):
            keys = dict.fromkeys(k for c in norms[label] for k in c if k.endswith(f"/{part}"))
            for j, key in enumerate(keys):
                steps, mean, _ = mean_curve([c[key] for c in norms[label] if key in c])
                ax.plot(steps, mean, color=f"C{j % 10}", label=key.split("/")[0])
            if keys:
                ax.set_yscale("log")
                ax.legend(fontsize=7)
            ax.set(title=f"{label}: |grad| on {part}", xlabel="step")
            ax.title.set_fontsize(8)
        _cosine_heatmap(row[-1], label, cosines[label], parts)
    return _save(fig, path)


def _cosine_heatmap(ax: Any, label: str, runs: list[dict[str, Curve]], parts: list[str]
                    ) -> None:
    """Objective pairs x parts: the mean cosine over steps and seeds ("cos/<a>/<b>/<part>";
    n/a where every value was null, e.g. a part one of the two objectives does not reach)."""
    keys = list(dict.fromkeys(k for c in runs for k in c))
    pairs = list(dict.fromkeys("·".join(k.split("/")[:2]) for k in keys))
    if not pairs:
        ax.axis("off")
        ax.set_title(f"{label}: one objective, no cosines", fontsize=8)
        return
    grid = np.full((len(pairs), len(parts)), np.nan)
    for key in keys:
        first, second, part = key.split("/")
        if part in parts:
            values = [v for c in runs for v in c.get(key, {}).values()]
            grid[pairs.index(f"{first}·{second}"), parts.index(part)] = np.mean(values)
    ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                fontsize=7)
    ax.set_xticks(range(len(parts)), parts, fontsize=7)
    ax.set_yticks(range(len(pairs)), pairs, fontsize=7)
    ax.set_title(f"{label}: mean cosine of gradients", fontsize=8)


def plot_variants(columns: list[str], variants: list[Variant], baseline: Variant, out: Path
                  ) -> list[Path]:
    """Write the plots under `out`; returns the files written (losses.png where runs logged
    losses, downstream.png where there are metrics, gradients.png where runs have
    gradients.jsonl)."""
    written = [losses(variants, out / "losses.png"),
               downstream(columns, variants, baseline, out / "downstream.png") if columns else None,
               gradients(variants, out / "gradients.png")]
    return [path for path in written if path is not None]
