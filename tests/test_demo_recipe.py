"""The README's baseline: recipes/clip.yaml on the demo data learns held-out retrieval.

Runs the shipped recipe unchanged (about 3 minutes on 2 CPU cores; its wall time is recorded in
docs/benchmarks.md, not asserted here), so it is marked slow: `python -m pytest -m slow`. The
default suite runs it shortened, as a batch job (tests/test_progress.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.eval.evaluate import retrieval_of_run

REPO = Path(__file__).parent.parent


@pytest.mark.slow
def test_clip_recipe_reaches_five_times_chance(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "clip.yaml")
    result = train(recipe, out=tmp_path / "clip", evaluate=retrieval_of_run)
    n = result.retrieval["n"]
    chance_r1 = 100.0 / n
    assert n == recipe.spec.data.val_size == 200
    assert result.retrieval["i2t_R@1"] >= 5 * chance_r1
    assert result.retrieval["t2i_R@1"] >= 5 * chance_r1
