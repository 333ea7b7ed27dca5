"""`vlp sweep`: a tiny 3 variants x 2 seeds sweep runs, is really interrupted and resumes (the
finished run untouched, the interrupted one continued to the uninterrupted weights); bad sweep
files are refused before anything runs, naming the sweep file's lines."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import TINY_BASE
from safetensors.torch import load_file

from vlp.cli import main
from vlp.core.errors import UserError
from vlp.core.recipe import TrainerSpec, load_recipe
from vlp.core.trainer import train
from vlp.data.demo import demo_reports
from vlp.data.tokenize import train_tokenizer
from vlp.sweep.plan import RESUME, TRAIN, make_plan, state_of
from vlp.sweep.runner import command, run_plan
from vlp.sweep.spec import SweepError, load_sweep

STEPS = 20
FULL = """
_base_: tiny_base.yaml
model: {{tokenizer: {{path: {tok}}}}}
views: {{masked: {{masker: random_patches, ratio: 0.5}}}}
objectives:
  itc: {{weight: 1.0}}
  itc_masked: {{use: itc, weight: 1.0, image_view: masked}}
trainer: {{max_steps: 4, ckpt_every: 5, log_every: 1, threads: 1}}
"""
SWEEP = f"""
# three rows, two seeds, one budget
base: ../full.yaml
out: ../out
seeds: [0, 1]
set: {{data.train_size: 32}}
budgets:
  steps: {{steps: {STEPS}}}
variants:
  clip: {{recipe: ../clip.yaml}}
  full: {{}}
  half: {{set: {{objectives.itc_masked.weight: 0.5}}}}
jobs: 1
"""


def write_tree(root: Path, sweep: str = SWEEP) -> Path:
    """Recipes (a fixed tokenizer, so runs compare bit for bit) and sweeps/tiny.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    tok = root / "tokenizer.json"
    if not tok.exists():
        train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    (root / "tiny_base.yaml").write_text(TINY_BASE)
    (root / "full.yaml").write_text(FULL.format(tok=tok))
    (root / "clip.yaml").write_text("_base_: full.yaml\nobjectives: {itc_masked: {weight: 0}}\n")
    (root / "sweeps").mkdir(exist_ok=True)
    path = root / "sweeps" / "tiny.yaml"
    path.write_text(textwrap.dedent(sweep))
    return path


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory):
    """Run `vlp sweep` in a subprocess, SIGINT its process group while the second run trains,
    then finish the sweep (two at once) in this process; what each step saw is returned."""
    root = tmp_path_factory.mktemp("sweep")
    path = write_tree(root)
    out = root / "out"
    second = out / "steps" / "clip" / "seed_1"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlp", "sweep", str(path)], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not ((second / "metrics.jsonl").is_file()
               and (second / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal does
    first_output = proc.communicate(timeout=240)[0]
    first_code = proc.returncode
    sweep = load_sweep(path)
    plan = make_plan(sweep)
    states = {run.label: state_of(run, True)[0] for run in plan.runs}
    stopped_at = json.loads((second / "summary.json").read_text())["steps"]
    before = mtimes(out / "steps" / "clip" / "seed_0")
    assert main(["sweep", str(path), "--dry-run"]) == 0  # prints the states, runs nothing
    outcome = run_plan(plan, jobs=2)
    return types.SimpleNamespace(root=root, path=path, out=out, plan=plan, states=states,
                                 first_output=first_output, first_code=first_code,
                                 stopped_at=stopped_at, before=before, outcome=outcome)


def test_interrupted_sweep_stops_every_run_and_says_how_to_continue(interrupted_sweep):
    s = interrupted_sweep
    assert s.first_code == 128 + signal.SIGINT, s.first_output
    assert f"continue with: vlp sweep {s.path}" in s.first_output
    assert "[1/6] finished steps/clip/seed_0" in s.first_output
    assert "[2/6] stopped  steps/clip/seed_1 by SIGINT" in s.first_output
    assert s.states["steps/clip/seed_0"] == "skip"
    assert s.states["steps/clip/seed_1"] == RESUME  # it checkpointed when asked to stop
    assert [s.states[f"steps/{v}/seed_{i}"] for v in ("full", "half") for i in (0, 1)] == \
        [TRAIN] * 4
    assert 1 <= s.stopped_at < STEPS  # stopped early (completed by the second sweep)


def test_resumed_sweep_skips_finished_runs_and_resumes_the_interrupted_one(interrupted_sweep):
    s = interrupted_sweep
    assert s.outcome.skipped == ["steps/clip/seed_0"] and not s.outcome.failed
    assert sorted(s.outcome.finished) == sorted(r.label for r in s.plan.runs[1:])
    assert mtimes(s.out / "steps" / "clip" / "seed_0") == s.before  # not touched at all
    log = (s.out / "steps/clip/seed_1/train.log").read_text()
    starts = [ln for ln in log.splitlines() if ln.startswith("# vlp sweep ")]
    assert len(starts) == 2 and ": train: " in starts[0] and "--resume" not in starts[0]
    assert ": resume: " in starts[1] and starts[1].endswith("--resume latest")
    # the resumed run ends with the weights of the same run trained without a stop
    recipe = load_recipe(s.root / "clip.yaml", s.plan.runs[1].overrides)
    straight = train(recipe, out=s.root / "straight")
    name = f"checkpoints/step_{STEPS:07d}/model.safetensors"
    resumed, reference = load_file(s.out / "steps/clip/seed_1" / name), load_file(
        straight.run_dir / name)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in resumed)


def test_sweep_writes_the_layout_and_the_manifest(interrupted_sweep):
    s = interrupted_sweep
    manifest = json.loads((s.out / "sweep.json").read_text())
    assert manifest["variants"] == ["clip", "full", "half"] and manifest["seeds"] == [0, 1]
    assert manifest["baseline"] == "clip"
    assert manifest["budgets"] == {"steps": {"kind": "steps", "value": STEPS}}
    labels = [f"steps/{v}/seed_{i}" for v in ("clip", "full", "half") for i in (0, 1)]
    assert [Path(r["folder"]).relative_to(s.out).as_posix() for r in manifest["runs"]] == labels
    for run in manifest["runs"]:
        folder = Path(run["folder"])
        record = json.loads((folder / "sweep_run.json").read_text())
        assert record == {k: run[k] for k in record} and set(record) == {
            "sweep", "budget", "variant", "seed", "recipe", "overrides"}
        assert record["sweep"] == str(s.path.resolve())
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["steps"] == summary["max_steps"] == STEPS
        assert (folder / "eval" / "summary.json").is_file()
        saved = load_recipe(folder / "recipe.yaml")  # each run trained what its row says
        assert saved.spec.seed == record["seed"] and saved.spec.data.train_size == 32
        weights = {n: r.weight for n, r in saved.objectives.items()}
        assert weights == {"clip": {"itc": 1.0}, "full": {"itc": 1.0, "itc_masked": 1.0},
                           "half": {"itc": 1.0, "itc_masked": 0.5}}[record["variant"]]
    half = next(r for r in manifest["runs"] if r["variant"] == "half")
    assert half["overrides"] == ["data.train_size=32", "objectives.itc_masked.weight=0.5",
                                 f"seed={half['seed']}", f"trainer.max_steps={STEPS}"]


def test_dry_run_lists_every_run_as_skipped_when_done(interrupted_sweep, capsys):
    assert main(["sweep", str(interrupted_sweep.path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and out.count("  skip     steps/") == 6


def test_sweep_tables_equal_a_hand_computation_from_the_run_folders(interrupted_sweep):
    """results.csv: per variant, the mean and sample std over seeds of every metric equal
    statistics.mean/stdev of the values in the run folders' eval/summary.json."""
    from vlp.sweep.runner import aggregate_budgets

    aggregate_budgets(interrupted_sweep.plan)
    table = (interrupted_sweep.out / "steps" / "results.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| ")]
    assert [r for r in rows if r in ("clip", "full", "half")] == ["clip", "full", "half"]
    with open(interrupted_sweep.out / "steps" / "results.csv") as file:
        csv_rows = {row["variant"]: row for row in csv.DictReader(file)}
    checked = 0
    for variant in ("clip", "full", "half"):
        values: dict[str, list[float]] = {}
        for seed in (0, 1):
            folder = interrupted_sweep.out / "steps" / variant / f"seed_{seed}"
            results = json.loads((folder / "eval" / "summary.json").read_text())["results"]
            for task, record in results.items():
                for metric, entry in record["metrics"].items():
                    if "/" not in metric:  # per-label entries are not columns
                        values.setdefault(f"{task}/{metric}", []).append(entry["value"])
        assert values
        for column, seen in values.items():
            row = csv_rows[variant]
            assert float(row[f"{column}/mean"]) == pytest.approx(statistics.mean(seen), abs=1e-9)
            assert float(row[f"{column}/std"]) == pytest.approx(statistics.stdev(seen), abs=1e-9)
            assert int(row[f"{column}/n"]) == 2
            checked += 1
    assert checked >= 3 * 7  # every retrieval metric of every row


def test_run_killed_after_its_last_checkpoint_is_evaluated_not_resumed(interrupted_sweep,
                                                                      tmp_path):
    """Stopped between the final checkpoint and summary.json: resuming would have nothing to
    do (and write no summary) on every later sweep, so it is evaluated instead."""
    run = interrupted_sweep.plan.runs[0]
    copy = dataclasses.replace(run, folder=tmp_path / "run")
    shutil.copytree(run.folder, copy.folder)
    (copy.folder / "summary.json").unlink()
    shutil.rmtree(copy.folder / "eval")
    assert state_of(copy, True)[0] == "evaluate"
    assert state_of(copy, False)[0] == "skip"
    (copy.folder / "checkpoints" / "latest").write_text("step_0000005")  # an earlier one
    assert state_of(copy, True)[0] == RESUME


def test_edited_sweep_refuses_the_folders_it_would_change(interrupted_sweep):
    s = interrupted_sweep
    edited = s.path.with_name("edited.yaml")  # another file, same out: same runs
    edited.write_text(s.path.read_text().replace("objectives.itc_masked.weight: 0.5",
                                                 "objectives.itc_masked.weight: 0.25"))
    with pytest.raises(UserError) as caught:
        make_plan(load_sweep(edited))
    message = str(caught.value)
    assert "2 run folders hold runs made with other settings" in message
    assert "out/steps/half/seed_0: overrides: ['data.train_size=32', " \
           "'objectives.itc_masked.weight=0.5'" in message
    assert "objectives.itc_masked.weight=0.25" in message and "another `out:`" in message
    assert "steps/full/" not in message and "steps/clip/" not in message
    # the same sweep file at another path is the same sweep: nothing refused
    s.path.with_name("copy.yaml").write_text(s.path.read_text())
    assert len(make_plan(load_sweep(s.path.with_name("copy.yaml")), write=False).runs) == 6


def test_a_bad_sweep_file_lists_every_problem_with_its_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default out: runs/sweeps/<stem>
    path = write_tree(tmp_path, """
        base: ../full.yaml
        seed: [0, 1]
        jobs: 0
        budgets:
          steps: {steps: 12, flops: 1.0e9}
          equal: {flops_of: clipp, steps: 10}
        variants:
          clip: {recipe: ../nothere.yaml}
          full: {sett: {a: 1}}
          half: {set: {seed: 3}}
        baseline: ful
    """)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: {path}: invalid sweep (8 problems):" in err
    for line in (
            "3: seed: unknown key (expected one of: base, baseline, budgets, eval, jobs, out, "
            "seeds, set, variants); did you mean `seeds`?",
            "4: jobs: Input should be greater than or equal to 1 (got 0)",
            "6: budgets.steps.steps: steps with flops: the budget decides the steps",
            "7: budgets.equal.flops_of: no variant named 'clipp' (variants: clip, full, half); "
            "did you mean `clip`?",
            "9: variants.clip.recipe: recipe not found: ../nothere.yaml",
            "10: variants.full.sett: unknown key (expected one of: recipe, set); did you mean "
            "`set`?",
            "11: variants.half.set.seed: set per run by the sweep's `seeds`; remove it here",
            "12: baseline: no variant named 'ful' (variants: clip, full, half); did you mean "
            "`full`?"):
        assert f"  {path}:{line}" in err, line
    assert not (tmp_path / "runs").exists()


def test_bad_overrides_point_at_the_sweep_file_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default out: runs/sweeps/<stem>
    path = write_tree(tmp_path, """
        base: ../full.yaml
        set:
          data.train_size: 4
        budgets: {steps: {steps: 3}}
        variants:
          clip: {recipe: ../clip.yaml}
          no_itc:
            set:
              objectives.itcc.weight: 0
          half:
            set:
              objectives.itc_masked.weightt: 0.5
              optim:
                lr: -1
    """)
    with pytest.raises(SweepError) as caught:
        make_plan(load_sweep(path), write=False)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:4: set.data.train_size: 4 is smaller than trainer.batch_size (8)",
        f"{path}:10: variants.no_itc.set.objectives.itcc.weight: the recipe has no objective "
        "'itcc' (it has: itc, itc_masked), so a weight of 0 switches nothing off; did you mean "
        "`itc`?",
        f"{path}:15: variants.half.set.optim.lr: Input should be greater than 0 (got -1)",
        f"{path}:13: variants.half.set.objectives.itc_masked.weightt: unknown key (expected one "
        "of: image_view, init_temperature, max_logit_scale, text_view, use, weight); did you "
        "mean `weight`?"]
    assert not (tmp_path / "runs").exists()


FLOPS_SWEEP = """
base: ../full.yaml
out: ../out
seeds: [3, 4]
budgets:
  equal: {flops_of: clip, steps: 7}
  samples: {samples: 40}
variants:
  clip: {recipe: ../clip.yaml}
  full: {}
"""


def _fake_flops(calls: list, per_step: int) -> types.ModuleType:
    module = types.ModuleType("vlp.core.flops")

    def step_flops(recipe):
        calls.append(recipe)
        return per_step
    module.step_flops = step_flops
    return module


def test_flops_of_is_counted_once_and_kept_for_the_resumed_sweep(tmp_path, monkeypatch):
    from vlp.sweep.plan import _counting_overrides, counted_budget, load_run_recipe

    path = write_tree(tmp_path, FLOPS_SWEEP)
    sweep = load_sweep(path)
    calls: list = []
    monkeypatch.setitem(sys.modules, "vlp.core.flops", _fake_flops(calls, 1000))
    variant, overrides = _counting_overrides(sweep, "equal")
    recipe = load_run_recipe(sweep, sweep.recipe_of(variant), overrides)
    budget = counted_budget(sweep, "equal", recipe, overrides, write=True)
    # the FLOPs of one step of clip (its first seed), times the steps
    assert [(c.name, c.spec.seed, c.spec.trainer.max_steps, list(c.objectives)) for c in calls] \
        == [("clip", 3, 7, ["itc"])]
    assert budget.value == 7000 and budget.override(sweep).assignment == \
        "trainer.budget_flops=7000"
    record = json.loads((sweep.out / "equal" / "budget.json").read_text())
    assert record["flops_per_step"] == 1000 and record["budget_flops"] == 7000
    # a later sweep reads the number back: the runs keep the budget they started with
    monkeypatch.setitem(sys.modules, "vlp.core.flops", _fake_flops(calls, 999))
    assert counted_budget(sweep, "equal", recipe, overrides, write=True).value == 7000
    assert len(calls) == 1
    # ...unless the budget was redefined: refused, saying what changed
    path.write_text(path.read_text().replace("steps: 7", "steps: 8"))
    sweep = load_sweep(path)
    variant, overrides = _counting_overrides(sweep, "equal")
    with pytest.raises(UserError, match=r"counted for another definition of budget 'equal' "
                                        r"\(steps: 7 then, 8 now"):
        counted_budget(sweep, "equal", load_run_recipe(sweep, sweep.recipe_of(variant),
                                                       overrides), overrides, write=True)


@pytest.mark.skipif("budget_flops" not in TrainerSpec.model_fields,
                    reason="needs trainer.budget_flops (branch i12-budget)")
def test_flops_of_budget_plans_every_run_with_the_counted_number(tmp_path, monkeypatch):
    path = write_tree(tmp_path, FLOPS_SWEEP)
    calls: list = []
    monkeypatch.setitem(sys.modules, "vlp.core.flops", _fake_flops(calls, 1000))
    plan = make_plan(load_sweep(path), write=False)
    assert len(calls) == 1 and len(plan.runs) == 8
    assert [r.overrides[-1] for r in plan.runs] == ["trainer.budget_flops=7000"] * 4 + [
        "trainer.budget_samples=40"] * 4
    assert all(plan.recipes[r.label].spec.trainer.budget_flops == 7000 for r in plan.runs[:4])
    assert not (tmp_path / "out").exists()


def test_child_command_is_vlp_train_with_the_runs_overrides(tmp_path):
    plan = make_plan(load_sweep(write_tree(tmp_path)), write=False)
    run = plan.runs[0]
    assert command(run, TRAIN, True) == [
        sys.executable, "-m", "vlp", "train", str(tmp_path / "clip.yaml"), "--out",
        str(run.folder), "--set", "data.train_size=32", "--set", "seed=0", "--set",
        f"trainer.max_steps={STEPS}"]
    assert command(run, RESUME, False)[-3:] == ["--resume", "latest", "--no-eval"]
    assert command(run, "evaluate", True) == [sys.executable, "-m", "vlp", "eval",
                                              str(run.folder)]


@pytest.mark.parametrize("value", [0, 0.5, 1e-4, 3.0e13, "yes", "a: b", "", [1, "x"],
                                   {"a": {"b": 1}}, None, True])
def test_override_values_read_back_as_written(value):
    from vlp.core.yamlio import parse_yaml
    from vlp.sweep.plan import yaml_value

    assert parse_yaml(yaml_value(value), "--set")[0] == value
