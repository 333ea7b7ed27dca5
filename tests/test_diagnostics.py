"""Gradient diagnostics: per-objective norms and cosines on the shared parts equal a separate
backward per objective, an objective that does not reach a part gives norm 0 and no cosine,
and logging them (every N steps, resumed, on 2 ranks) leaves training bit for bit unchanged."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_accumulation import CPU, SEED, STEP, build, torchrun

from vlp.core.diagnostics import gradient_diagnostics, gradient_gram, shared_parameters
from vlp.core.errors import RecipeError
from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.core.step import Step
from vlp.core.trainer import diagnostic_step, forward_backward, step_generator, train
from vlp.data.demo import demo_reports
from vlp.data.tokenize import train_tokenizer

TEXT_ONLY_MLM = """
    _base_: tiny_base.yaml
    views: {mlm: {masker: mlm_tokens}}
    objectives: {itc: {weight: 1.0}, mlm: {weight: 0.5, text_view: mlm}}
"""
FUSED_MLM = """
    _base_: tiny_base.yaml
    model: {fusion: {name: cross_attention, layers: 1, heads: 2}}
    views: {mlm: {masker: mlm_tokens}}
    objectives: {itc: {weight: 2.0}, mlm: {weight: 0.5, text_view: mlm, fused: true}}
"""


def separate_backward(model: VLPModel, batch, part: str) -> dict[str, torch.Tensor]:
    """Each objective alone: a fresh forward with the step's generator, (w * loss).backward(),
    and that part's gradient flattened (zeros where it got none)."""
    flat = {}
    for name, objective in model.objectives.items():
        model.zero_grad(set_to_none=True)
        step = Step(model, batch, step_generator(CPU, SEED, STEP))
        (model.weights[name] * objective(step).loss).backward()
        params = [p for p in getattr(model, part).parameters() if p.requires_grad]
        flat[name] = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten()
                                for p in params])
    model.zero_grad(set_to_none=True)
    return flat


@pytest.mark.parametrize("text", [TEXT_ONLY_MLM, FUSED_MLM], ids=["text_only", "fused"])
def test_norms_and_cosines_equal_one_backward_per_objective(write_recipe, text):
    model, batch = build(write_recipe(text))
    line = gradient_diagnostics(model, Step(model, batch, step_generator(CPU, SEED, STEP)),
                                contextlib.nullcontext(), STEP)
    assert all(p.grad is None for p in model.parameters())  # nothing written to .grad
    parts = list(shared_parameters(model))
    assert parts == (["image_encoder", "text_encoder", "fusion"] if text is FUSED_MLM
                     else ["image_encoder", "text_encoder"])
    assert set(line) == {"step", *(f"norm/{o}/{p}" for o in ("itc", "mlm") for p in parts),
                         *(f"cos/itc/mlm/{p}" for p in parts)}
    assert line["step"] == STEP
    for part in parts:
        flat = separate_backward(model, batch, part)
        for name, grad in flat.items():
            assert line[f"norm/{name}/{part}"] == pytest.approx(
                torch.linalg.norm(grad).item(), rel=1e-9, abs=1e-12), (name, part)
        cosine = line[f"cos/itc/mlm/{part}"]
        if cosine is not None:
            want = F.cosine_similarity(flat["itc"], flat["mlm"], dim=0).item()
            assert cosine == pytest.approx(want, rel=1e-9, abs=1e-12), part


def test_objective_that_does_not_reach_a_part_has_norm_zero_and_no_cosine(write_recipe):
    for text, objective, part in ((TEXT_ONLY_MLM, "mlm", "image_encoder"),
                                  (FUSED_MLM, "itc", "fusion")):
        model, batch = build(write_recipe(text))
        line = gradient_diagnostics(model, Step(model, batch, step_generator(CPU, SEED, STEP)),
                                    contextlib.nullcontext(), STEP)
        assert line[f"norm/{objective}/{part}"] == 0.0
        assert line[f"cos/itc/mlm/{part}"] is None
        other = "itc" if objective == "mlm" else "mlm"
        assert line[f"norm/{other}/{part}"] > 0
        assert line["cos/itc/mlm/text_encoder"] is not None  # both reach the text encoder


def test_with_accumulation_the_gradients_are_the_accumulated_whole_batch_ones(write_recipe):
    """grad_accum 2: each objective's gradient is what training's two-pass accumulation gives
    that objective alone over the whole batch (ITC is batch-coupled: one micro-batch's
    gradient would differ), with each micro-batch's own masks."""
    model, batch = build(write_recipe(FUSED_MLM))
    line = gradient_diagnostics(model, diagnostic_step(model, batch, STEP, SEED, 2),
                                contextlib.nullcontext(), STEP)
    objectives = model.objectives
    flat: dict[str, dict[str, torch.Tensor]] = {}
    for name in objectives:
        model.objectives = torch.nn.ModuleDict({name: objectives[name]})
        model.zero_grad(set_to_none=True)
        forward_backward(model, batch, STEP, SEED, 2, "fp32")
        flat[name] = {part: torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad)
                                       .flatten() for p in params])
                      for part, params in shared_parameters(model).items()}
    model.objectives = objectives
    for part in ("image_encoder", "text_encoder", "fusion"):
        for name in objectives:
            assert line[f"norm/{name}/{part}"] == pytest.approx(
                torch.linalg.norm(flat[name][part]).item(), rel=1e-9, abs=1e-12), (name, part)
    for part in ("image_encoder", "text_encoder"):
        want = F.cosine_similarity(flat["itc"][part], flat["mlm"][part], dim=0).item()
        assert line[f"cos/itc/mlm/{part}"] == pytest.approx(want, rel=1e-9), part


def test_gram_is_accumulated_per_parameter_and_skips_missing_gradients():
    a = [torch.tensor([3.0, 0.0]), torch.tensor([[1.0]])]
    b = [None, torch.tensor([[2.0]])]
    gram = gradient_gram([a, b])
    assert gram.tolist() == [[10.0, 2.0], [2.0, 4.0]]  # |(3,0,1)|^2, <(3,0,1),(0,0,2)>, 2^2


def run_recipe(write_recipe, tmp_path: Path) -> Path:
    """Three objectives on shared parts, with dropout (global RNG) and BatchNorm running
    statistics in SimSiam's heads (buffers): both must be left as training found them."""
    tok = tmp_path / "tokenizer.json"  # one vocabulary for every run compared
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    return write_recipe(f"""
        _base_: tiny_base.yaml
        model: {{fusion: {{name: cross_attention, layers: 1, heads: 2}},
                 text_encoder: {{dropout: 0.1}}, tokenizer: {{path: {tok}}}}}
        views:
          mlm: {{masker: mlm_tokens}}
          aug1: {{masker: augment, policy: medical}}
          aug2: {{masker: augment, policy: medical}}
        objectives:
          itc: {{weight: 1.0}}
          mlm: {{weight: 1.0, text_view: mlm, fused: true}}
          simsiam: {{weight: 1.0, view_1: aug1, view_2: aug2, dim: 32, pred_dim: 16}}
        trainer: {{max_steps: 5, ckpt_every: 3, log_every: 1}}
    """)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    return load_file(str(ckpt / "model.safetensors"))


def logged(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "gradients.jsonl").read_text().splitlines()]


def test_diagnostics_every_two_steps_leave_training_bitwise_unchanged(write_recipe, tmp_path):
    path = run_recipe(write_recipe, tmp_path)
    plain = train(load_recipe(path), out=tmp_path / "plain")
    watched = train(load_recipe(path, ["trainer.diagnostics_every=2"]), out=tmp_path / "watched")
    assert not (tmp_path / "plain" / "gradients.jsonl").exists()
    lines = logged(tmp_path / "watched")
    assert [ln["step"] for ln in lines] == [0, 2, 4]
    assert lines[0]["norm/simsiam/image_encoder"] > 0 and lines[0]["norm/simsiam/fusion"] == 0
    assert lines[0]["cos/itc/simsiam/text_encoder"] is None  # SimSiam reads images only
    assert -1 <= lines[0]["cos/itc/mlm/image_encoder"] <= 1
    weights, reference = final_weights(watched.run_dir), final_weights(plain.run_dir)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)  # BatchNorm too
    timing = {"samples_per_s"}
    assert ({k: v for k, v in watched.last_metrics.items() if k not in timing}
            == {k: v for k, v in plain.last_metrics.items() if k not in timing})


def test_resume_keeps_the_lines_before_the_resumed_step(write_recipe, tmp_path):
    path = run_recipe(write_recipe, tmp_path)
    recipe = load_recipe(path, ["trainer.diagnostics_every=1"])
    train(recipe, out=tmp_path / "straight")
    train(recipe, out=tmp_path / "split", stop_after=4)  # checkpoint at 3 and at 4
    split = tmp_path / "split"
    (split / "checkpoints" / "latest").write_text("step_0000003")  # as if killed after step 3
    with (split / "gradients.jsonl").open("a") as file:
        file.write('{"step": 5, "norm/it')  # a line cut short by the crash
    train(recipe, out=split, resume="latest")
    got, want = logged(split), logged(tmp_path / "straight")
    assert [ln["step"] for ln in got] == [0, 1, 2, 3, 4]
    assert got == want


def test_two_ranks_log_the_numbers_of_one_process_on_the_whole_batch(write_recipe, tmp_path):
    """torchrun, 2 gloo ranks, each loading its own half: gradients averaged over ranks give
    one process's norms and cosines (ITC and GLA gather negatives over ranks; masks of masked
    views would differ by rank by design, so this recipe has none)."""
    tok = tmp_path / "tokenizer.json"
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{max_text_len: 128}}
        model: {{tokenizer: {{path: {tok}}}}}
        objectives: {{itc: {{weight: 1.0}}, gla: {{weight: 0.5, local: filip}}}}
        trainer: {{max_steps: 2, diagnostics_every: 1}}
    """)
    torchrun(path, tmp_path / "ddp")
    train(load_recipe(path), out=tmp_path / "single")
    got, want = logged(tmp_path / "ddp"), logged(tmp_path / "single")
    assert [ln["step"] for ln in got] == [ln["step"] for ln in want] == [0, 1]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        assert a["cos/itc/gla/image_encoder"] is not None
        for key in a:  # float32; a cosine near 0 is known to about 1e-5 absolute
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)


def test_fsdp_is_refused_before_anything_is_built(write_recipe):
    path = write_recipe(TEXT_ONLY_MLM)
    with pytest.raises(RecipeError, match=r"trainer.diagnostics_every: .*parallel: fsdp"):
        load_recipe(path, ["trainer.parallel=fsdp", "trainer.diagnostics_every=10"])
    with pytest.raises(RecipeError, match=r"trainer.diagnostics_every"):
        load_recipe(path, ["trainer.diagnostics_every=-1"])
