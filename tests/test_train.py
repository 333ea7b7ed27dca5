"""The training loop: exact resume, non-finite stop, evaluation, checkpoints and bad data rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlp.objectives.itc as itc_module
from vlp.cli import main
from vlp.core.errors import NonFiniteLoss
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.data.demo import demo_reports
from vlp.data.tokenize import train_tokenizer
from vlp.eval.evaluate import retrieval_of_run


def losses(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss") or k == "step"} for r in rows]


@pytest.fixture
def recipe_path(write_recipe, tmp_path):
    tok = tmp_path / "tokenizer.json"  # one vocabulary for both runs (training is not repeatable)
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    return write_recipe(f"""
        _base_: tiny_base.yaml
        model: {{fusion: {{name: cross_attention, layers: 1, heads: 2}},
                 tokenizer: {{path: {tok}}}}}
        views:
          masked: {{masker: random_patches, ratio: 0.5}}
          mlm: {{masker: mlm_tokens}}
        objectives:
          itc: {{weight: 1.0}}
          itc_masked: {{use: itc, weight: 1.0, image_view: masked}}
          mlm: {{weight: 1.0, text_view: mlm, fused: true}}
        trainer: {{max_steps: 6, ckpt_every: 3, log_every: 1}}
    """)


def test_resume_gives_identical_losses(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path)
    straight = train(recipe, out=tmp_path / "straight")
    train(recipe, out=tmp_path / "split", stop_after=3)
    assert [r["step"] for r in losses(tmp_path / "split")] == [1, 2, 3]
    resumed = train(recipe, out=tmp_path / "split", resume="latest")
    assert straight.steps == resumed.steps == 6
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    assert len(losses(tmp_path / "straight")) == 6


def test_checkpoint_loads_without_pickle(recipe_path, tmp_path):
    result = train(load_recipe(recipe_path, ["trainer.max_steps=2"]), out=tmp_path / "r",
                   evaluate=retrieval_of_run)
    ckpt = result.run_dir / "checkpoints" / (result.run_dir / "checkpoints" / "latest").read_text()
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 2 and "optimizer" in state
    assert set(state["ranks"][0]["rng"]) >= {"cpu", "python", "numpy"}  # every stream, per rank
    assert not list((result.run_dir / "checkpoints").glob(".tmp*"))
    # vlp eval rebuilds the run from its folder and reproduces the end-of-training figures
    assert main(["eval", str(result.run_dir)]) == 0
    again = json.loads((result.run_dir / "retrieval.json").read_text())
    assert again == result.retrieval
    assert {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "n"} <= set(again)
    assert again["n"] == 16


def test_non_finite_loss_stops_naming_objective_and_step(recipe_path, tmp_path, monkeypatch):
    real, calls = itc_module.itc_loss, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        # 2 ITC calls in the check for untrained parameters, 2 in the FLOP count, then 2 per
        # step: step 5
        return loss * float("nan") if calls["n"] >= 13 else loss

    monkeypatch.setattr(itc_module, "itc_loss", poisoned)
    recipe = load_recipe(recipe_path, ["trainer.ckpt_every=2"])
    with pytest.raises(NonFiniteLoss, match=r"objective 'itc' gave a non-finite loss at step 5"):
        train(recipe, out=tmp_path / "r")
    latest = (tmp_path / "r" / "checkpoints" / "latest").read_text()
    assert latest == "step_0000004"


def test_manifest_bad_rows_are_counted_in_the_summary(write_recipe, tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i, text in enumerate(demo_reports(40)):
        Image.new("L", (32, 32), color=i * 5).save(images / f"{i}.png")
        rows.append({"file": f"{i}.png", "report": text})
    rows.append({"file": "missing.png", "report": "Clear lungs."})
    rows.append({"file": "0.png", "report": "   "})
    (images / "broken.png").write_bytes(b"not a png")
    rows.append({"file": "broken.png", "report": "No effusion."})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{_replace_: true, source: manifest, path: {manifest}, image_root: {images},
                image_column: file, text_column: report, image_size: 32, val_fraction: 0.2}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {{max_steps: 2}}
        eval: {{ks: [1, 5]}}
    """)
    result = train(load_recipe(path), out=tmp_path / "run", evaluate=retrieval_of_run)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["skipped_rows"] == {"missing_image": 1, "empty_text": 1, "unreadable_image": 1}
    assert [r[1] for r in summary["bad_rows"]] == [41, 42, 43]


def test_torchrun_two_ranks_train_and_tensorboard(write_recipe, tmp_path):
    """The trainer itself under torchrun (gloo): both ranks load and collate their own share
    and step (token gathers across unequal padding included); rank 0 writes the run folder."""
    import os
    import subprocess
    import sys

    path = write_recipe("""
        _base_: tiny_base.yaml
        data: {max_text_len: 128}  # each rank pads its share to its own longest report
        model: {fusion: {name: cross_attention, layers: 1, heads: 2},
                tokenizer: {vocab_size: 1000}}
        objectives:  # GLA's local part and ITM's candidates gather token tensors
          gla: {weight: 1.0, local: filip}
          itm: {weight: 1.0, gather: true}
        trainer: {max_steps: 2, tensorboard: true}
    """)
    out = tmp_path / "ddp_run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "vlp.cli", "train", str(path), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in losses(out)] == [1, 2]
    assert (out / "checkpoints" / "latest").read_text() == "step_0000002"
    assert json.loads((out / "retrieval.json").read_text())["n"] == 16
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_latest_picks_this_recipes_newest_run(tmp_path, monkeypatch, write_recipe):
    from vlp.core.run import latest_run_dir

    monkeypatch.chdir(tmp_path)
    for name in ("clip-20250101-000000", "clip-20240101-000000", "clip-v2-20300101-000000",
                 "clip_small-20300101-000000"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    recipe = load_recipe(write_recipe("_base_: tiny_base.yaml\nobjectives: {itc: {weight: 1}}\n",
                                      "clip.yaml"))
    assert latest_run_dir(recipe) == Path("runs") / "clip-20250101-000000"


def test_resume_from_a_checkpoint_path_continues_that_run(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path)
    train(recipe, out=tmp_path / "a", stop_after=3)
    (tmp_path / "a" / "metrics.jsonl").open("a").write('{"step": 4, "loss/it')  # cut by a crash
    result = train(recipe, resume=str(tmp_path / "a" / "checkpoints" / "step_0000003"))
    assert result.run_dir == tmp_path / "a"
    assert [r["step"] for r in losses(tmp_path / "a")] == [1, 2, 3, 4, 5, 6]


def test_resume_with_changed_values_is_refused(recipe_path, tmp_path, capsys):
    from vlp.cli import train_main

    train(load_recipe(recipe_path), out=tmp_path / "a", stop_after=3)
    before = (tmp_path / "a" / "recipe.yaml").read_text()
    code = train_main([str(recipe_path), "--out", str(tmp_path / "a"), "--resume", "latest",
                       "--set", "model.text_encoder.width=64"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.text_encoder.width: 32 in the run, 64 now" in err
    assert (tmp_path / "a" / "recipe.yaml").read_text() == before  # the run folder is intact


def test_checkpoints_are_pruned_by_age_and_resaved_atomically(tmp_path):
    from vlp.core.checkpoint import resolve_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    for step in (400, 300, 300):  # resumed from an older checkpoint, then saved again
        save_checkpoint(tmp_path, step, model, {}, keep=1)
    assert resolve_checkpoint(tmp_path).name == "step_0000300"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest",
                                                                            "step_0000300"]


def test_temperature_is_clamped_after_the_step_and_keeps_its_gradient(recipe_path, tmp_path,
                                                                      monkeypatch):
    import math

    from vlp.objectives.itc import ITC

    seen = []
    real = ITC.after_optimizer_step

    def spy(self):
        self.temperature.log_scale.data.fill_(10.0)  # as if the optimiser overshot the cap
        real(self)
        seen.append(self.temperature.log_scale.item())

    monkeypatch.setattr(ITC, "after_optimizer_step", spy)
    train(load_recipe(recipe_path, ["trainer.max_steps=2"]), out=tmp_path / "r")
    assert seen and all(v == pytest.approx(math.log(100.0)) for v in seen)


@pytest.fixture
def accumulating_recipe(write_recipe, tmp_path):
    tok = tmp_path / "tokenizer.json"
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    return write_recipe(f"""
        _base_: tiny_base.yaml
        model: {{tokenizer: {{path: {tok}}}}}
        views:
          masked: {{masker: random_patches, ratio: 0.5}}
          mlm: {{masker: mlm_tokens}}
        objectives:
          mim: {{weight: 1.0, image_view: masked, decoder_width: 16, decoder_depth: 1,
                decoder_heads: 2}}
          mlm: {{weight: 1.0, text_view: mlm}}
        trainer: {{max_steps: 4, grad_accum: 2, ckpt_every: 2, log_every: 1}}
    """, "accumulating.yaml")


def test_grad_accum_draws_new_masks_per_micro_batch_and_resumes_exactly(accumulating_recipe,
                                                                         tmp_path, monkeypatch):
    import vlp.maskers.patches as patches

    drawn: list[torch.Tensor] = []
    real = patches.random_patch_mask

    def spy(*args, **kwargs):
        ids_keep, mask = real(*args, **kwargs)
        if mask.shape[0] == 4:  # a micro-batch (8 / 2), not the 2-pair check before training
            drawn.append(mask)
        return ids_keep, mask

    monkeypatch.setattr(patches, "random_patch_mask", spy)
    recipe = load_recipe(accumulating_recipe)
    train(recipe, out=tmp_path / "straight")
    assert len(drawn) == 10  # the FLOP count's step 0, then 4 steps x 2 micro-batches
    assert torch.equal(torch.stack(drawn[:2]), torch.stack(drawn[2:4]))  # the count: step 0's
    for step in range(1, 5):
        assert not torch.equal(drawn[2 * step], drawn[2 * step + 1]), step
    train(recipe, out=tmp_path / "split", stop_after=2)  # counts again; the resume does not
    train(recipe, out=tmp_path / "split", resume="latest")
    assert len(drawn) == 20
    assert torch.equal(torch.stack(drawn[2:10]), torch.stack(drawn[12:]))
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")


def test_stop_after_not_past_the_resumed_step_changes_nothing(recipe_path, tmp_path, capsys):
    from vlp.cli import train_main

    out = tmp_path / "run"
    assert train_main([str(recipe_path), "--out", str(out), "--stop-after", "3"]) == 0
    summary = (out / "summary.json").read_text()
    capsys.readouterr()
    assert train_main([str(recipe_path), "--out", str(out), "--resume", "latest",
                       "--stop-after", "2"]) == 2
    err = capsys.readouterr().err
    assert "--stop-after 2: the run in" in err and "already at step 3" in err
    assert "Traceback" not in err
    assert (out / "summary.json").read_text() == summary
