"""`vlp compare` over seeds: mean ± std tables equal a hand computation from the run folders,
the within-spread mark follows its rule on both sides of the boundary, the CSV round-trips,
plots are drawn (losses over FLOPs, gradients), and run folders group by sweep or recipe."""

from __future__ import annotations

import csv
import importlib.util
import json
import statistics
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_BASE

import vlp.eval.plots
from vlp.cli import main
from vlp.core.checkpoint import write_json
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.eval.compare import Spread, aggregate, variant_order, within_spread
from vlp.eval.evaluate import evaluate_tasks
from vlp.eval.metrics import Metric, MissingExtra
from vlp.eval.plots import mean_curve

MEAN_R, AUROC = "retrieval/mean_R", "zero_shot/macro_auroc"


def make_run(folder: Path, values: dict[str, float | None], recipe: str = "recipes/clip.yaml",
             sweep_run: dict | None = None, flops: tuple[int, int] | None = None,
             losses: dict[str, list[float]] | None = None) -> Path:
    """A run folder with eval/summary.json in the runner's format (values: "task/metric" ->
    value; each task also gets a per-label metric, which the tables leave out), and optionally
    sweep_run.json, flops.json ((flops_per_step, steps)) and metrics.jsonl (loss curves)."""
    results: dict[str, dict] = {}
    for column, value in values.items():
        task, metric = column.split("/")
        record = results.setdefault(task, {"task": task, "plugin": task, "params": {}, "n": 24,
                                           "metrics": {}, "metric_order": []})
        record["metrics"][metric] = Metric(value, 50.0, "chance").to_dict()
        record["metrics"][f"{metric}/label_a"] = Metric(99.0, 50.0, "chance").to_dict()
        record["metric_order"] += [metric, f"{metric}/label_a"]
    (folder / "eval").mkdir(parents=True)  # as the runner does
    write_json(folder / "eval" / "summary.json",
               {"run": str(folder), "recipe": recipe, "order": list(results),
                "tasks_config": {}, "results": results, "feature_passes": {}})
    if sweep_run is not None:
        write_json(folder / "sweep_run.json", {"sweep": "/abs/sweep.yaml", "recipe": recipe,
                                               "overrides": [], **sweep_run})
    if flops is not None:
        per_step, steps = flops
        write_json(folder / "flops.json", {
            "flops_per_step": per_step, "steps": steps, "total_flops": per_step * steps,
            "budget": {"kind": "steps", "value": steps}, "counted_on": "first batch"})
    if losses is not None:
        lines = [{"step": i + 1, "loss": sum(v[i] for v in losses.values()),
                  **{f"loss/{name}": v[i] for name, v in losses.items()}}
                 for i in range(len(next(iter(losses.values()))))]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


# 3 variants x 3 seeds of known numbers; the second variant lacks AUROC in one seed (task failed)
SEEDS = {
    "clip": [{MEAN_R: 30.0, AUROC: 0.61}, {MEAN_R: 32.5, AUROC: 0.64},
             {MEAN_R: 31.0, AUROC: 0.58}],
    "no_mlm": [{MEAN_R: 28.0, AUROC: 0.70}, {MEAN_R: 35.5, AUROC: None},
               {MEAN_R: 30.25, AUROC: 0.66}],
    "full": [{MEAN_R: 40.0, AUROC: 0.75}, {MEAN_R: 41.0, AUROC: 0.77},
             {MEAN_R: 39.5, AUROC: 0.76}],
}
FLOPS = {"clip": 1000, "no_mlm": 2500, "full": 4000}


@pytest.fixture
def seed_runs(tmp_path) -> dict[str, list[Path]]:
    curve = [3.0, 2.5, 2.2, 2.0]
    return {variant: [make_run(tmp_path / variant / f"seed_{seed}", values,
                               flops=(FLOPS[variant], 100 + seed),
                               losses={"itc": [v + 0.1 * seed for v in curve],
                                       "mlm": [2 * v for v in curve]})
                      for seed, values in enumerate(runs)]
            for variant, runs in SEEDS.items()}


def _table(markdown: str) -> list[dict[str, str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_means_and_stds_equal_a_hand_computation(seed_runs, tmp_path):
    markdown, files, _ = aggregate(seed_runs, tmp_path / "out")
    assert (tmp_path / "out" / "results.md").read_text() == markdown
    rows = {r["variant"]: r for r in _table(markdown)}
    assert list(rows) == ["clip", "no_mlm", "full"]  # the groups' order
    assert "retrieval/mean_R/label_a" not in _table(markdown)[0]
    for variant, runs in SEEDS.items():
        row = rows[variant]
        assert row["n"] == "3" and row["steps"] == "101"  # mean of 100, 101, 102
        total = statistics.mean(FLOPS[variant] * (100 + s) for s in range(3))
        assert row["total FLOPs"] == f"{total:.3g}"
        mean_r = [r[MEAN_R] for r in runs]
        assert row[MEAN_R].startswith(
            f"{statistics.mean(mean_r):.1f} ± {statistics.stdev(mean_r):.1f}")
        auroc = [r[AUROC] for r in runs if r[AUROC] is not None]
        assert row[AUROC].startswith(
            f"{statistics.mean(auroc):.3f} ± {statistics.stdev(auroc):.3f}")
    assert rows["no_mlm"][AUROC].endswith("(n=2)") and "(n=" not in rows["clip"][AUROC]
    for line in _csv(tmp_path / "out" / "results.csv"):
        runs = SEEDS[line["variant"]]
        for column in (MEAN_R, AUROC):
            values = [r[column] for r in runs if r[column] is not None]
            assert float(line[f"{column}/mean"]) == pytest.approx(statistics.mean(values), 1e-12)
            assert float(line[f"{column}/std"]) == pytest.approx(statistics.stdev(values), 1e-12)
            assert int(line[f"{column}/n"]) == len(values)
        assert line["is_baseline"] == str(int(line["variant"] == "clip"))
    assert "Baseline: clip." in markdown


def _spread_runs(root: Path, seeds: dict[str, list[float]]) -> dict[str, list[Path]]:
    return {variant: [make_run(root / variant / str(i), {MEAN_R: v}) for i, v in enumerate(vs)]
            for variant, vs in seeds.items()}


def test_within_spread_mark_on_both_sides_of_the_boundary(tmp_path):
    # baseline 3 ± 2 (values 1, 3, 5); every variant has std exactly 2, so the boundary is a
    # difference of exactly 4: |7 - 3| = 4 is within (<=), |7.25 - 3| = 4.25 is not
    groups = _spread_runs(tmp_path, {"base": [1.0, 3.0, 5.0], "inside": [4.5, 6.5, 8.5],
                                     "at": [5.0, 7.0, 9.0], "beyond": [5.25, 7.25, 9.25],
                                     "single": [3.0], "below": [-2.0, 0.0, 2.0]})
    markdown, _, _ = aggregate(groups, tmp_path / "out")
    cells = {r["variant"]: r[MEAN_R] for r in _table(markdown)}
    assert cells == {"base": "3.0 ± 2.0", "inside": "6.5 ± 2.0 ≈", "at": "7.0 ± 2.0 ≈",
                     "beyond": "7.2 ± 2.0", "single": "3.0", "below": "0.0 ± 2.0 ≈"}
    marks = {r["variant"]: r[f"{MEAN_R}/within_spread"]
             for r in _csv(tmp_path / "out" / "results.csv")}
    # the baseline is the reference, one seed has no spread: neither is judged
    assert marks == {"base": "", "inside": "1", "at": "1", "beyond": "0", "single": "",
                     "below": "1"}
    assert "≈: within the seed spread of the baseline" in markdown
    # another baseline moves the reference: 7.25 ± 2 against 7 ± 2 is within
    markdown, _, _ = aggregate(groups, tmp_path / "out2", baseline="at")
    cells = {r["variant"]: r[MEAN_R] for r in _table(markdown)}
    assert cells["beyond"] == "7.2 ± 2.0 ≈" and cells["at"] == "7.0 ± 2.0"
    assert cells["base"] == "3.0 ± 2.0 ≈" and "Baseline: at." in markdown
    assert within_spread(Spread((4.0, 8.0)), Spread((1.0, 1.0))) is False  # std 0 counts
    with pytest.raises(Exception, match="baseline 'nope' is not a variant"):
        aggregate(groups, tmp_path / "out3", baseline="nope")


def test_csv_round_trips_the_numbers(seed_runs, tmp_path):
    aggregate(seed_runs, tmp_path / "out")
    lines = {r["variant"]: r for r in _csv(tmp_path / "out" / "results.csv")}
    for variant in seed_runs:
        mean_r = Spread(tuple(SEEDS[variant][i][MEAN_R] for i in range(3)))
        assert float(lines[variant][f"{MEAN_R}/mean"]) == mean_r.mean  # exactly: full precision
        assert float(lines[variant][f"{MEAN_R}/std"]) == mean_r.std
        total = Spread(tuple(float(FLOPS[variant] * (100 + s)) for s in range(3)))
        assert float(lines[variant]["total_flops"]) == total.mean
        assert float(lines[variant]["flops_per_step"]) == FLOPS[variant]
    single = aggregate({"one": [seed_runs["clip"][0]]}, tmp_path / "one")[0]
    line = _csv(tmp_path / "one" / "results.csv")[0]
    assert line[f"{MEAN_R}/std"] == "" and line[f"{MEAN_R}/n"] == "1"  # n = 1: std blank
    assert _table(single)[0][MEAN_R] == "30.0"


def test_mean_curve_over_the_steps_every_seed_logged():
    steps, mean, std = mean_curve([{1: 1.0, 2: 2.0, 3: 5.0}, {1: 3.0, 2: 6.0}])
    assert steps.tolist() == [1, 2] and mean.tolist() == [2.0, 4.0]
    assert std.tolist() == pytest.approx([statistics.stdev([1, 3]), statistics.stdev([2, 6])])
    assert mean_curve([{1: 1.0}])[2].tolist() == [0.0]


def _image(path: Path):
    image = pytest.importorskip("matplotlib.image").imread(path)
    assert path.stat().st_size > 5000 and image[..., :3].std() > 0.05  # drawn, not blank
    return image


def _gradients(run: Path, scale: float) -> None:
    lines = [{"step": step,
              "norm/itc/image_encoder": scale * step, "norm/mlm/image_encoder": 4.0 * step,
              "norm/itc/text_encoder": 0.5, "norm/mlm/text_encoder": 1.5,
              "cos/itc/mlm/image_encoder": -0.4, "cos/itc/mlm/text_encoder": None}
             for step in (2, 4, 6)]
    (run / "gradients.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines)
                                         + '{"step": 8, "norm/it')  # a line cut by a crash


def test_plots_are_drawn_with_flops_and_gradients(seed_runs, tmp_path):
    pytest.importorskip("matplotlib")
    for seed, run in enumerate(seed_runs["full"]):
        _gradients(run, 1.0 + seed)
    _, files, skipped = aggregate(seed_runs, tmp_path / "out")
    assert skipped is None
    names = [f.name for f in files]
    assert names == ["results.md", "results.csv", "losses.png", "downstream.png",
                     "gradients.png"]
    losses = _image(tmp_path / "out" / "losses.png")
    assert losses.shape[:2] == (600, 2 * 380)  # 2 rows (step, FLOPs) x 2 objectives
    _image(tmp_path / "out" / "downstream.png")
    assert _image(tmp_path / "out" / "gradients.png").shape[:2] == (290, 3 * 360)  # 1 variant
    # one run without flops.json: no FLOPs row; no gradients.jsonl: no gradients.png
    (seed_runs["clip"][1] / "flops.json").unlink()
    for run in seed_runs["full"]:
        (run / "gradients.jsonl").unlink()
    markdown, files, _ = aggregate(seed_runs, tmp_path / "again")
    assert [f.name for f in files][-1] == "downstream.png"
    assert _table(markdown)[0]["steps"] == "101 (n=2)"  # mean of 100 and 102
    assert _image(tmp_path / "again" / "losses.png").shape[0] == 300


def test_missing_matplotlib_skips_plots_and_keeps_the_tables(seed_runs, tmp_path, monkeypatch):
    def missing(module):
        raise MissingExtra("needs matplotlib, which is not installed: pip install -e '.[plots]'")
    monkeypatch.setattr(vlp.eval.plots, "require", missing)
    _, files, skipped = aggregate(seed_runs, tmp_path / "out")
    assert [f.name for f in files] == ["results.md", "results.csv"]
    assert skipped.startswith("plots skipped: matplotlib needs matplotlib") and \
        "pip install -e '.[plots]'" in skipped


def test_variant_order_reads_a_sweep_manifest():
    assert variant_order({"variants": {"b": {}, "a": {}}}) == ["b", "a"]
    assert variant_order({"variants": [{"name": "b", "set": []}, {"name": "a"}]}) == ["b", "a"]
    assert variant_order({"variants": ["b", "a"]}) == ["b", "a"]
    assert variant_order(None) == []


def test_cli_groups_sweep_runs_by_budget_and_variant_and_others_by_recipe(tmp_path, capsys):
    sweep = tmp_path / "sweep_out"
    sweep.mkdir()
    write_json(sweep / "sweep.json", {"variants": [{"name": "full"}, {"name": "clip"}]})
    numbers = {"clip": [10.0, 14.0], "full": [20.0, 21.0]}
    for budget in ("steps", "flops"):
        for variant, values in numbers.items():
            for seed, value in enumerate(values):
                make_run(sweep / budget / variant / f"seed_{seed}",
                         {MEAN_R: value + (budget == "flops")},
                         sweep_run={"budget": budget, "variant": variant, "seed": seed})
    unfinished = sweep / "steps" / "clip" / "seed_2"  # trained, not yet evaluated
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text("seed: 2\n")
    (unfinished / "sweep_run.json").write_text("{}")
    assert main(["compare", str(sweep), "--out", str(tmp_path / "cmp")]) == 0
    out, err = capsys.readouterr()
    assert f"left out {unfinished}: no eval/summary.json" in err
    assert "## budget flops" in out and "## budget steps" in out
    for budget in ("steps", "flops"):
        rows = _table((tmp_path / "cmp" / budget / "results.md").read_text())
        assert [r["variant"] for r in rows] == ["full", "clip"]  # the manifest's order
        shift = int(budget == "flops")
        assert [r[MEAN_R] for r in rows] == [
            f"{20.5 + shift:.1f} ± {statistics.stdev([20, 21]):.1f}",
            f"{12.0 + shift:.1f} ± {statistics.stdev([10, 14]):.1f}"]
        assert "Baseline: full." in (tmp_path / "cmp" / budget / "results.md").read_text()
    per_run = _csv(tmp_path / "cmp" / "comparison.csv")
    assert {r["run"] for r in per_run} >= {"steps/clip/seed_0", "flops/full/seed_1"}
    assert len(per_run) == 8
    assert out.index("## budget flops") < out.index("## budget steps")  # alphabetical here

    # the manifest's budget order and baseline, also when one budget's folder is named
    (sweep / "sweep.json").write_text(json.dumps(  # unsorted keys, as the sweep writes it
        {"variants": ["full", "clip"], "baseline": "clip", "budgets": {"steps": {}, "flops": {}}}))
    assert main(["compare", str(sweep), "--out", str(tmp_path / "cmp2")]) == 0
    out, _ = capsys.readouterr()
    assert out.index("## budget steps") < out.index("## budget flops")
    assert main(["compare", str(sweep / "flops"), "--out", str(tmp_path / "cmp3")]) == 0
    text = (tmp_path / "cmp3" / "flops" / "results.md").read_text()
    assert [r["variant"] for r in _table(text)] == ["full", "clip"] and "Baseline: clip." in text

    hand = [make_run(tmp_path / "hand" / name, {MEAN_R: value}, recipe=recipe)
            for name, value, recipe in [("a", 30.0, "recipes/clip.yaml"),
                                        ("b", 40.0, "/abs/recipes/mpma.yaml"),
                                        ("c", 34.0, "recipes/clip.yaml")]]
    args = ["compare", *map(str, hand), "--out", str(tmp_path / "hand_cmp")]
    assert main([*args, "--baseline", "mpma"]) == 0
    rows = _table((tmp_path / "hand_cmp" / "results.md").read_text())
    assert [(r["variant"], r["n"]) for r in rows] == [("clip", "2"), ("mpma", "1")]
    assert rows[0][MEAN_R].startswith(f"32.0 ± {statistics.stdev([30, 34]):.1f}")
    assert "Baseline: mpma." in capsys.readouterr().out
    # a folder of hand runs (searched) groups the same way
    assert main(["compare", str(tmp_path / "hand"), "--out", str(tmp_path / "hand_cmp2")]) == 0
    assert _table((tmp_path / "hand_cmp2" / "results.md").read_text()) == [
        {**r, MEAN_R: r[MEAN_R].replace(" ≈", "")} for r in rows]  # first variant: baseline
    assert main([*args, "--baseline", "nope"]) == 2
    assert "--baseline 'nope' is not a variant" in capsys.readouterr().err
    (hand[0] / "sweep_run.json").write_text('{"budget": "steps"}')
    assert main(args) == 2
    assert "sweep_run.json: needs 'budget', 'variant' and 'seed'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "empty_dir_missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "no run folder under it has eval/summary.json" in capsys.readouterr().err


def test_a_real_tiny_run_goes_through_aggregate(tmp_path):
    (tmp_path / "tiny_base.yaml").write_text(TINY_BASE)
    (tmp_path / "itc.yaml").write_text(textwrap.dedent("""
        _base_: tiny_base.yaml
        objectives: {itc: {weight: 1.0}}
        trainer: {max_steps: 3}
        eval: {batch_size: 16, tasks: {retrieval: {}}}
    """))
    result = train(load_recipe(tmp_path / "itc.yaml"), out=tmp_path / "run")
    summary = evaluate_tasks(result.run)
    markdown, files, _ = aggregate({"itc": [result.run_dir]}, tmp_path / "out")
    row = _table(markdown)[0]
    value = summary["results"]["retrieval"]["metrics"]["mean_R"]["value"]
    assert row["variant"] == "itc" and row["n"] == "1" and row[MEAN_R] == f"{value:.1f}"
    if (result.run_dir / "flops.json").is_file():  # FLOP counting (its own branch) landed
        flops = json.loads((result.run_dir / "flops.json").read_text())
        assert row["steps"] == f"{flops['steps']:g}"
    if importlib.util.find_spec("matplotlib") is not None:  # the `test` extra has it
        assert [f.name for f in files][2:] == ["losses.png", "downstream.png"]
        _image(tmp_path / "out" / "losses.png")  # the run's real loss curve
