"""Held-out retrieval during training: a validation curve and a best checkpoint never pruned."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from vlp.cli import main
from vlp.core.errors import RecipeError
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.eval.evaluate import retrieval_of_run


def test_eval_every_logs_a_curve_and_keeps_the_best_checkpoint(write_recipe, tmp_path, capsys):
    path = write_recipe("""
        _base_: tiny_base.yaml
        objectives: {itc: {weight: 1.0}}
        trainer: {max_steps: 6, eval_every: 2, ckpt_every: 1, keep_checkpoints: 1,
                  best_metric: i2t_R@5, tensorboard: true}
    """)
    result = train(load_recipe(path), out=tmp_path / "run", evaluate=retrieval_of_run)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in rows if "val/i2t_R@5" in r]
    assert [r["step"] for r in curve] == [2, 4, 6]
    assert all(r["val/n"] == 16 for r in curve)
    values = [r["val/i2t_R@5"] for r in curve]
    best_step = curve[values.index(max(values))]["step"]  # the first of equal maxima
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "latest", "step_0000006"]
    info = json.loads((ckpts / "best" / "best.json").read_text())
    assert info == {"metric": "i2t_R@5", "value": max(values), "step": best_step}
    assert result.summary["best"]["step"] == best_step
    assert result.retrieval == {k[4:]: v for k, v in curve[-1].items() if k != "step"}
    # the best weights are the model of that step: evaluating them gives that step's figures
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--checkpoint", "best"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == {k[4:]: v for k, v in curve[[r["step"] for r in curve].index(best_step)]
                     .items() if k != "step"}
    assert load_file(ckpts / "best" / "model.safetensors").keys() == \
        load_file(ckpts / "step_0000006" / "model.safetensors").keys()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("val/i2t_R@5")] == [2, 4, 6]


def test_unknown_best_metric_is_a_recipe_error(write_recipe):
    path = write_recipe("""
        _base_: tiny_base.yaml
        objectives: {itc: {weight: 1.0}}
        trainer: {best_metric: i2t_R@50}
    """)
    with pytest.raises(RecipeError, match=r"trainer.best_metric: unknown held-out metric "
                                          r"'i2t_R@50' \(expected one of: i2t_R@1, "):
        load_recipe(path)
