"""FLOPs of a step (against a hand count) and equal-compute budgets: the steps they plan, the
schedule, flops.json and summary.json, exact resume without recounting, and no trace on training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vlp.core.flops as flops_module
import vlp.core.trainer as trainer_module
from vlp.cli import train_main
from vlp.core.errors import RecipeError
from vlp.core.flops import count_flops, step_flops
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train

# the tiny ITC recipe below: batch, ViT (32 px, patch 8, width 32, 1 block, MLP x4),
# text (16 tokens, width 32, 1 block, MLP x4), 2 heads, embedding 16
B, PATCHES, PATCH_PIXELS, WIDTH, HEADS, HIDDEN, TEXT, EMBED = 8, 16, 8 * 8, 32, 2, 128, 16, 16


@pytest.fixture
def itc_recipe(write_recipe, tokenizer_path):
    return write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{max_text_len: {TEXT}}}  # every report is longer: all batches are 16 tokens
        model: {{tokenizer: {{path: {tokenizer_path}}}}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {{max_steps: 4, log_every: 1}}
    """)


def mm(m: int, k: int, n: int) -> int:
    """A (m, k) @ (k, n) product: m * n dot products of k multiply-adds."""
    return 2 * m * k * n


def hand_count() -> float:
    """One training step of the tiny ITC recipe, from its layer shapes."""
    def block(tokens: int) -> tuple[int, int]:  # (linear layers, attention) of one block
        rows, head = B * tokens, WIDTH // HEADS
        linear = (mm(rows, WIDTH, 3 * WIDTH) + mm(rows, WIDTH, WIDTH)  # q, k, v; output
                  + mm(rows, WIDTH, HIDDEN) + mm(rows, HIDDEN, WIDTH))  # MLP
        attention = 2 * mm(B * HEADS * tokens, head, tokens)  # q k^T, then scores @ v
        return linear, attention
    image_linear, image_attention = block(1 + PATCHES)  # [CLS] + patches
    text_linear, text_attention = block(TEXT)
    patch_embed = mm(B * PATCHES, PATCH_PIXELS, WIDTH)  # the patch convolution
    projections = 2 * mm(B, WIDTH, EMBED)
    logits = 2 * mm(B, EMBED, B)  # image x text and text x image similarities
    linear = image_linear + text_linear + projections + logits
    attention = image_attention + text_attention
    forward = patch_embed + linear + attention
    # backward: a gradient for each input of each product (2x), except the pixels' (the patch
    # convolution gets its weight gradient only); fused attention recomputes q k^T (2.5x)
    backward = patch_embed + 2 * linear + 2.5 * attention
    return forward + backward


def test_step_flops_equal_a_hand_count(itc_recipe):
    recipe = load_recipe(itc_recipe)
    before = torch.get_rng_state()
    counted = step_flops(recipe)
    assert counted == pytest.approx(hand_count(), rel=0.02)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream untouched


def test_counting_leaves_model_and_random_streams_as_they_were():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                                torch.nn.Dropout(0.5), torch.nn.Linear(6, 1))
    x = torch.randn(5, 4)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()

    def step():
        model(x).sum().backward()

    flops = count_flops(model, torch.device("cpu"), step)
    # forward 2*5*4*6 + 2*5*6*1; backward: both gradients of the second layer, only the
    # weight's of the first (x needs none)
    assert flops == (240 + 60) + (240 + 2 * 60)
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())  # BatchNorm stats
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew nothing from the stream


def _lrs(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text()
    return load_file(run / "checkpoints" / latest / "model.safetensors")


def _spy_on_counting(monkeypatch) -> list[int]:
    counts: list[int] = []
    real = flops_module.rank_step_flops

    def spy(run):
        counts.append(1)
        return real(run)

    monkeypatch.setattr(flops_module, "rank_step_flops", spy)
    return counts


def test_sample_budget_plans_floor_of_samples_over_batch(itc_recipe, tmp_path, monkeypatch):
    out = tmp_path / "run"
    recipe = load_recipe(itc_recipe, ["trainer.budget_samples=47"])  # 47 // 8 steps
    train(recipe, out=out, stop_after=2)
    record = json.loads((out / "flops.json").read_text())
    assert record["steps"] == 5 and record["budget"] == {"kind": "samples", "value": 47}
    assert record["total_flops"] == 5 * record["flops_per_step"]
    (out / "flops.json").unlink()  # as a run folder of a version before flops.json
    counts = _spy_on_counting(monkeypatch)
    train(recipe, out=out, resume="latest")
    assert counts == [1]  # counted again, the same plan
    assert json.loads((out / "flops.json").read_text()) == record
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["max_steps"], summary["recipe_max_steps"]) == (5, 5, 4)
    assert summary["total_flops"] == record["total_flops"]
    assert sorted(_lrs(out)) == [1, 2, 3, 4, 5]


def test_budget_run_resumes_twice_after_an_operational_change(itc_recipe, tmp_path):
    """A resume that changes log_every rewrites recipe.yaml with the recipe's own max_steps
    (not the budget's plan), so the next resume still accepts the folder."""
    out = tmp_path / "run"
    train(load_recipe(itc_recipe, ["trainer.budget_samples=47"]), out=out, stop_after=2)
    changed = load_recipe(itc_recipe, ["trainer.budget_samples=47", "trainer.log_every=2"])
    train(changed, out=out, resume="latest", stop_after=3)
    saved = yaml.safe_load((out / "recipe.yaml").read_text())["trainer"]
    assert (saved["max_steps"], saved["log_every"]) == (4, 2)
    result = train(changed, out=out, resume="latest")
    assert result.steps == 5


def test_flop_budget_plans_steps_and_schedule_and_resumes_without_recounting(
        itc_recipe, tmp_path, monkeypatch, capsys):
    per_step = step_flops(load_recipe(itc_recipe))
    budget = f"trainer.budget_flops={10.5 * per_step}"
    recipe = load_recipe(itc_recipe, [budget])
    straight = tmp_path / "straight"
    capsys.readouterr()
    train(recipe, out=straight)
    said = capsys.readouterr().out.splitlines()
    assert said[0].endswith(f"trainer.budget_flops {10.5 * per_step:.3g} sets the steps "
                            "(max_steps 4 not used)")
    assert f"budget {10.5 * per_step:.3g} FLOPs = 10 steps of {per_step:.3g} FLOPs (recipe " \
        "max_steps 4 not used)" in said
    record = json.loads((straight / "flops.json").read_text())
    assert record["flops_per_step"] == per_step  # the trainer's count is step_flops'
    assert (record["steps"], record["total_flops"]) == (10, 10 * per_step)
    assert record["budget"] == {"kind": "flops", "value": 10.5 * per_step}
    summary = json.loads((straight / "summary.json").read_text())
    assert (summary["steps"], summary["max_steps"], summary["recipe_max_steps"]) == (10, 10, 4)
    assert (summary["flops_per_step"], summary["total_flops"]) == (per_step, 10 * per_step)
    # the cosine schedule (lr 1e-3, 2 warmup steps) spans the 10 planned steps, not max_steps 4
    lrs = _lrs(straight)
    assert lrs[4] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert lrs[6] == pytest.approx(0.5e-3)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)

    split = tmp_path / "split"
    train(recipe, out=split, stop_after=3)
    counts = _spy_on_counting(monkeypatch)
    train(recipe, out=split, resume="latest", stop_after=6)
    train(recipe, out=split, resume="latest")
    assert counts == []  # read back from flops.json, twice
    assert json.loads((split / "flops.json").read_text()) == record
    assert _lrs(split) == lrs
    final, expected = _weights(split), _weights(straight)
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected)

    capsys.readouterr()
    resume = [str(itc_recipe), "--out", str(straight), "--resume", "latest", "--set", budget]
    assert train_main(resume) == 0
    assert "already finished at step 10 (steps planned by its budget 10)" in \
        capsys.readouterr().err
    (split / "flops.json").unlink()  # a recount could plan other steps: refused
    assert train_main([*resume[:2], str(split), *resume[3:]]) == 2
    assert f"{split / 'flops.json'} is missing" in capsys.readouterr().err


@pytest.fixture
def stochastic(write_recipe, tokenizer_path):
    """Dropout, drop-path and random masks: every draw of the global RNG shows in the losses."""
    return write_recipe(f"""
        _base_: tiny_base.yaml
        model:
          image_encoder: {{drop_path_rate: 0.2}}
          text_encoder: {{dropout: 0.2}}
          tokenizer: {{path: {tokenizer_path}}}
        views: {{masked: {{masker: random_patches, ratio: 0.5}}}}
        objectives:
          itc: {{weight: 1.0}}
          itc_masked: {{use: itc, weight: 1.0, image_view: masked}}
        trainer: {{max_steps: 3, log_every: 1}}
    """, "stochastic.yaml")


def test_counting_leaves_the_training_unchanged(stochastic, tmp_path, monkeypatch):
    recipe = load_recipe(stochastic)
    counted = train(recipe, out=tmp_path / "counted", evaluate=None)
    record = json.loads((tmp_path / "counted" / "flops.json").read_text())
    monkeypatch.setattr(trainer_module, "count_run", lambda run: record)  # no count at all
    train(recipe, out=tmp_path / "uncounted", evaluate=None)
    lines = [(tmp_path / name / "metrics.jsonl").read_text().splitlines()
             for name in ("counted", "uncounted")]
    losses = [[{k: v for k, v in json.loads(ln).items() if k.startswith("loss")} for ln in run]
              for run in lines]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    a, b = _weights(tmp_path / "counted"), _weights(tmp_path / "uncounted")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert counted.steps == 3


def test_both_budgets_are_one_recipe_error(itc_recipe, write_recipe):
    path = write_recipe("""
        _base_: recipe.yaml
        trainer:
          budget_flops: 1.0e+9
          budget_samples: 100
    """, "both.yaml")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:5: trainer.budget_samples: set together with trainer.budget_flops ({path}:4); "
        "give at most one budget"]
    with pytest.raises(RecipeError, match="trainer.budget_flops: Input should be greater than 0"):
        load_recipe(itc_recipe, ["trainer.budget_flops=-1"])


def test_two_ranks_sum_their_shares_to_the_single_process_count(itc_recipe, tmp_path):
    """Under torchrun each rank counts its half of the batch and the halves are summed: the
    whole batch's count (every report is cut to the same length, so no padding differs)."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "vlp.cli", "train", str(itc_recipe), "--out", str(out), "--no-eval",
         "--set", "trainer.max_steps=1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "flops.json").read_text())
    assert record["flops_per_step"] == step_flops(load_recipe(itc_recipe))
