"""The README's baseline: recipes/clip.yaml on the demo data learns held-out retrieval and
ends with its downstream table (retrieval, zero-shot, linear probe, VQA).

Runs the shipped recipe unchanged (about 3 minutes on 2 CPU cores; its wall time is recorded in
docs/benchmarks.md, not asserted here), so it is marked slow: `python -m pytest -m slow`. The
default suite runs it shortened, as a batch job (tests/test_progress.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.eval.evaluate import evaluate_run_tasks, retrieval_of_run

REPO = Path(__file__).parent.parent


@pytest.mark.slow
def test_clip_recipe_reaches_five_times_chance(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "clip.yaml")
    result = train(recipe, out=tmp_path / "clip", evaluate=retrieval_of_run)
    evaluation = evaluate_run_tasks(result.run_dir, device="cpu")
    results = evaluation["results"]
    retrieval = {k: m["value"] for k, m in results["retrieval"]["metrics"].items()}
    n = results["retrieval"]["n"]
    chance_r1 = 100.0 / n
    assert n == recipe.spec.data.val_size == 200
    assert retrieval["i2t_R@1"] >= 5 * chance_r1
    assert retrieval["t2i_R@1"] >= 5 * chance_r1
    assert evaluation["order"] == ["retrieval", "zero_shot", "linear_probe", "vqa"]
    probe = results["linear_probe"]["metrics"]["macro_auroc@100%"]
    assert probe["value"] > probe["baseline"] + 0.1  # the features carry the findings
    vqa = results["vqa"]["metrics"]["overall_accuracy"]
    assert vqa["value"] > vqa["baseline"]
