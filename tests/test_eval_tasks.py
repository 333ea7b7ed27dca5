"""Downstream tasks on a trained run: features encoded once, VQA learning, output files,
errors for bad task files and data, a third-party task, and `vlp compare`."""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_BASE

import vlp.core.model
from vlp.cli import main, train_main
from vlp.core.recipe import load_recipe, load_task_file
from vlp.core.run import load_run
from vlp.core.trainer import train
from vlp.eval.evaluate import evaluate_tasks

pytest.importorskip("sklearn")

TASKS = """
batch_size: 8
tasks:
  retrieval: {}
  zero_shot:
    data: {source: demo, test_size: 24}
    prompts:
      opacity: {positive: [opacity], negative: [no opacity]}
      effusion: {positive: [pleural effusion], negative: [no pleural effusion]}
      nodule: {positive: [nodule], negative: [no nodule]}
      cardiomegaly: {positive: [cardiomegaly], negative: [heart size is normal]}
      pneumothorax: {positive: [pneumothorax], negative: [no pneumothorax]}
      device: {positive: [catheter], negative: [no device]}
      normal: {positive: [normal chest], negative: [abnormal chest]}
  linear_probe:
    data: {source: demo, train_size: 24, val_size: 8, test_size: 24}
    fractions: [0.5, 1.0]
    epochs: 30
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained run with a fusion module (evaluated by each test)."""
    root = tmp_path_factory.mktemp("eval_run")
    (root / "tiny_base.yaml").write_text(TINY_BASE)
    (root / "recipe.yaml").write_text(textwrap.dedent("""
        _base_: tiny_base.yaml
        model: {fusion: {name: cross_attention, layers: 1, heads: 2}}
        views: {mlm: {masker: mlm_tokens}}
        objectives:
          itc: {weight: 1.0}
          mlm: {weight: 1.0, text_view: mlm, fused: true}
        trainer: {max_steps: 3}
    """))
    return train(load_recipe(root / "recipe.yaml"), out=root / "run").run_dir


def _task_file(tmp_path: Path, text: str, name: str = "tasks.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_frozen_features_are_computed_once_per_split(run_dir, tmp_path):
    run = load_run(run_dir, device="cpu")
    summary = evaluate_tasks(run, load_task_file(_task_file(tmp_path, TASKS)))
    # batches of 8: held-out 16 -> 2, test 24 -> 3 (zero-shot and probe share it),
    # probe train 24 -> 3, val 8 -> 1; without sharing it would be 12
    assert summary["feature_passes"]["image_encoder/image"] == 2 + 3 + 3 + 1
    results = summary["results"]
    assert results["zero_shot"]["passes"]["image_encoder/image"] == 3
    assert results["linear_probe"]["passes"]["image_encoder/image"] == 4  # test was cached
    assert results["retrieval"]["passes"] == {"image_encoder/image": 2, "text_encoder/text": 2}
    # 7 positive + 7 negative prompt lists, one text pass each
    assert results["zero_shot"]["passes"]["text_encoder/text"] == 14
    metrics = results["linear_probe"]["metrics"]
    assert {"macro_auroc@50%", "macro_auroc@100%", "auroc/effusion@100%"} <= set(metrics)
    assert all(m["baseline"] == 0.5 and m["baseline_kind"] == "chance"
               for m in metrics.values())
    assert results["linear_probe"]["training"]["@50%"]["train_samples"] == 12


def test_eval_cli_writes_each_task_with_predictions_and_a_summary(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--tasks", str(_task_file(tmp_path, TASKS))]) == 0
    out = capsys.readouterr().out
    assert "| zero_shot | macro_auroc |" in out and "(chance)" in out
    folder = run_dir / "eval"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["order"] == ["retrieval", "zero_shot", "linear_probe"]
    for task, n in (("retrieval", 16), ("zero_shot", 24), ("linear_probe", 2 * 24)):
        record = json.loads((folder / f"{task}.json").read_text())
        assert record == summary["results"][task]
        with (folder / f"{task}.predictions.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == n
    with (folder / "zero_shot.predictions.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert {"id", "truth/effusion", "score/effusion"} <= set(row)
    # the retrieval ranks recompute the reported recall
    with (folder / "retrieval.predictions.csv").open() as fh:
        ranks = [int(r["i2t_rank"]) for r in csv.DictReader(fh)]
    r5 = json.loads((folder / "retrieval.json").read_text())["metrics"]["i2t_R@5"]
    assert r5["value"] == pytest.approx(100 * sum(r < 5 for r in ranks) / len(ranks))
    assert r5["baseline"] == pytest.approx(100 * 5 / 16)


def test_vqa_head_learns_the_demo_questions_above_the_majority_answer(run_dir, tmp_path):
    run = load_run(run_dir, device="cpu")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    tasks = load_task_file(_task_file(tmp_path, """
        tasks:
          vqa:
            data: {source: demo, train_size: 120, test_size: 40}
            steps: 60
            batch_size: 24
            lr: 1.0e-3
            head_lr_mult: 3
          finetune:
            data: {source: demo, train_size: 16, val_size: 8, test_size: 8}
            epochs: 1
            batch_size: 8
            layer_decay: 0.75
    """))
    results = evaluate_tasks(run, tasks)["results"]
    vqa = results["vqa"]
    overall = vqa["metrics"]["overall_accuracy"]
    assert vqa["n"] == 120 and vqa["fusion"] == "pre-trained"
    assert overall["baseline_kind"] == "majority"
    assert overall["value"] >= overall["baseline"] + 10, vqa
    assert vqa["train_loss"]["last"] < vqa["train_loss"]["first"]
    assert {"closed_accuracy", "open_accuracy"} <= set(vqa["metrics"])
    assert "macro_auroc" in results["finetune"]["metrics"]
    after = run.model.state_dict()  # fine-tuning trained copies: other tasks read these
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_the_metrics_library_tasks_are_skipped_naming_the_extra(run_dir, tmp_path,
                                                                       monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else real(name, *a))
    run = load_run(run_dir, device="cpu")
    results = evaluate_tasks(run, load_task_file(_task_file(tmp_path, TASKS)))["results"]
    assert "i2t_R@1" in results["retrieval"]["metrics"]
    assert results["zero_shot"]["error"] == ("needs scikit-learn, which is not installed: "
                                             "pip install -e '.[eval]'")


BAD_TASK_FILES = [
    ("unknown task", "tasks: {zero_shoot: {}}\n", "tasks.zero_shoot",
     "unknown task 'zero_shoot'", 1),
    ("unknown key", "tasks:\n  retrieval: {kz: [1]}\n", "tasks.retrieval.kz",
     "unknown key (expected one of: ", 2),
    ("prompts missing a class", "tasks:\n  zero_shot:\n    prompts: {effusion: [a]}\n",
     "tasks.zero_shot", "prompts must name every class exactly", 2),
    ("fraction above 1", "tasks:\n  linear_probe:\n    fractions: [0.1, 2]\n",
     "tasks.linear_probe.fractions", "fractions must be in (0, 1]", 3),
    ("missing data file",
     "tasks:\n  linear_probe:\n    data: {source: manifest, test: no/such.csv,\n"
     "           label_columns: [a]}\n", "tasks.linear_probe.data.test",
     "path does not exist: no/such.csv", 3),
    ("unknown fusion for VQA", "tasks:\n  vqa: {fusion: {name: nope}}\n", "tasks.vqa.fusion",
     "unknown fusion 'nope'", 2),
    ("bad top-level key", "taks: {}\n", "taks", "unknown key", 1),
]


@pytest.mark.parametrize("name,text,key,reason,line", BAD_TASK_FILES,
                         ids=[c[0] for c in BAD_TASK_FILES])
def test_bad_task_file_is_rejected_before_any_model_is_built(name, text, key, reason, line,
                                                            run_dir, tmp_path, capsys,
                                                            monkeypatch):
    path = _task_file(tmp_path, text)

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built for an invalid task file")
    monkeypatch.setattr(vlp.core.model.VLPModel, "__init__", refuse)
    assert main(["eval", str(run_dir), "--tasks", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{path}:{line}: {key}: " in err and reason in err
    assert "invalid task file" in err


def test_bad_eval_section_of_a_recipe_names_the_dotted_key(write_recipe, capsys):
    path = write_recipe("""
        _base_: tiny_base.yaml
        objectives: {itc: {weight: 1.0}}
        eval:
          tasks:
            probe: {use: linear_probe, epochs: 0}
    """)
    assert train_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: eval.tasks.probe.epochs: " in err and "greater than 0" in err


def test_bad_task_data_is_reported_and_the_other_tasks_still_run(run_dir, tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("file,a\nx.png,1\n")
    path = _task_file(tmp_path, f"""
        tasks:
          linear_probe:
            data: {{source: manifest, train: {tmp_path / 'labels.csv'},
                   test: {tmp_path / 'labels.csv'}, label_columns: [a]}}
          retrieval: {{}}
    """)
    assert main(["eval", str(run_dir), "--tasks", str(path)]) == 2
    err = capsys.readouterr().err
    assert "task 'linear_probe'" in err and "labels.csv: missing column(s) 'image'" in err
    assert "Traceback" not in err
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert "metrics" in summary["results"]["retrieval"]


def test_third_party_task_plugin_registers_and_runs(run_dir, tmp_path, plugin_dirs, capsys):
    plugin_dirs("thirdparty_task")
    assert main(["plugins"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "mean_similarity" in ln)
    assert line.split()[0] == "task" and "vlp-meansim 0.1.0" in line
    path = _task_file(tmp_path, "tasks:\n  sim: {use: mean_similarity, scale: 2.0}\n")
    assert main(["eval", str(run_dir), "--tasks", str(path)]) == 0
    record = json.loads((run_dir / "eval" / "sim.json").read_text())
    assert record["plugin"] == "mean_similarity" and record["n"] == 16
    metric = record["metrics"]["paired_similarity"]
    assert -2 <= metric["value"] <= 2 and metric["baseline_kind"] == "chance"


def test_compare_tables_runs_as_rows_and_metrics_as_columns(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--tasks", str(_task_file(tmp_path, TASKS))]) == 0
    other = tmp_path / "other_run"
    shutil.copytree(run_dir, other)
    summary = json.loads((other / "eval" / "summary.json").read_text())
    summary["recipe"] = "recipes/other.yaml"
    summary["results"]["retrieval"]["metrics"]["i2t_R@1"]["value"] = 50.0
    (other / "eval" / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    out_dir = tmp_path / "cmp"
    assert main(["compare", str(run_dir), str(other), "--out", str(out_dir)]) == 0
    table = (out_dir / "comparison.md").read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[0] == "run" and "retrieval/i2t_R@1" in header
    assert "zero_shot/macro_auroc" in header and not any("auroc/" in h for h in header)
    assert table[2].startswith("| recipe |") and table[3].startswith("| other |")
    column = header.index("retrieval/i2t_R@1")
    assert table[3].strip("|").split("|")[column].strip() == "50.0"
    with (out_dir / "comparison.csv").open() as fh:
        assert [r["run"] for r in csv.DictReader(fh)] == ["recipe", "other"]
    if pytest.importorskip("matplotlib"):
        assert (out_dir / "losses.png").stat().st_size > 1000
        assert (out_dir / "downstream.png").stat().st_size > 1000
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
