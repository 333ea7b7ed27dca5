"""Exact gradient accumulation: with k micro-batches every parameter's gradient equals the
gradient of one pass over the whole batch (float64), for batch-coupled objectives and the
shipped recipes; masks stay those of each micro-batch's own stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.core.step import Step
from vlp.core.trainer import forward_backward, step_generator
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import TokenIds, train_tokenizer

REPO = Path(__file__).parent.parent
CPU = torch.device("cpu")
SEED, STEP, BATCH = 0, 3, 8
TINY = ["data.image_size=32", "data.max_text_len=40", "model.image_encoder.embed_dim=32",
        "model.image_encoder.depth=1", "model.image_encoder.num_heads=2",
        "model.text_encoder.layers=1", "model.text_encoder.width=32",
        "model.text_encoder.heads=2", "model.embed_dim=16", "model.tokenizer.vocab_size=300",
        f"trainer.batch_size={BATCH}"]
FUSION = "model: {fusion: {name: cross_attention, layers: 1, heads: 2}}\n"
OWN = {
    "itc": "objectives: {itc: {weight: 1.0}}\n",
    "itm_hard": FUSION + "objectives: {itc: {weight: 1.0}, itm: {weight: 1.0, negatives: hard}}\n",
    "itm_random": FUSION + "objectives: {itm: {weight: 1.0, negatives: random}}\n",
    "gla_filip": "objectives: {gla: {weight: 1.0, local: filip}}\n",
    "gla_gloria": "objectives: {gla: {weight: 1.0, local: gloria}}\n",
}
SHIPPED = {
    "clip.yaml": [],
    "uni_mlip.yaml": ["model.fusion.heads=2", "objectives.simsiam.dim=32",
                      "objectives.simsiam.pred_dim=16"],
    "mpma.yaml": ["model.fusion.slots=16", "model.fusion.topk=4",
                  "objectives.mim.decoder_width=16"],
}


def build(recipe_path: Path, overrides: list[str] = ()):
    recipe = load_recipe(recipe_path, [*TINY, *overrides])
    tok = train_tokenizer(demo_reports(64), vocab_size=300)
    torch.manual_seed(0)
    model = VLPModel(recipe, TokenIds.of(tok)).double()
    data = DemoDataset(BATCH, image_size=32)
    batch = Collator(tok, 40)([data[i] for i in range(BATCH)])
    batch.image = batch.image.double()
    return model, batch


def micro_batches(batch, k: int):
    size = BATCH // k
    return [type(batch)(**{n: t[i * size:(i + 1) * size] for n, t in vars(batch).items()})
            for i in range(k)]


def cat_view(parts):
    """Independent of vlp.core.accumulate: concatenate each tensor field of the views."""
    if parts[0] is None:
        return None
    return type(parts[0])(**{n: None if v is None else torch.cat([vars(p)[n] for p in parts])
                             for n, v in vars(parts[0]).items()})


class PinnedViews(Step):
    """A plain whole-batch step whose masked views are those the micro-batches drew."""

    def __init__(self, model, batch, micro):
        super().__init__(model, batch, step_generator(CPU, SEED, STEP))
        self.micro = micro

    def view(self, name):
        if name in ("image", "text"):
            return super().view(name)
        views = [m.view(name) for m in self.micro]
        return type(views[0])(image=cat_view([v.image for v in views]),
                              text=cat_view([v.text for v in views]))


def gradients(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def whole_batch_reference(model, batch, k: int):
    """One forward and backward over the whole batch, masks as micro-batch i draws them."""
    micro = [Step(model, part, step_generator(CPU, SEED, STEP, i))
             for i, part in enumerate(micro_batches(batch, k))]
    loss, _, _ = model.losses(PinnedViews(model, batch, micro))
    loss.backward()
    return loss.detach(), gradients(model)


def accumulated(model, batch, k: int):
    loss, _, _ = forward_backward(model, batch, STEP, SEED, k, "fp32")
    return loss, gradients(model)


def assert_same_gradients(model, batch):
    for k in (1, 2, 4):
        ref_loss, ref = whole_batch_reference(model, batch, k)
        loss, got = accumulated(model, batch, k)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
        assert got.keys() == ref.keys(), k
        assert any(n.startswith("image_encoder.") for n in ref)
        assert any(n.startswith("text_encoder.") for n in ref)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-9,
                                       msg=lambda m, n=name, k=k: f"k={k} {n}: {m}")


@pytest.mark.parametrize("name", list(OWN))
def test_batch_coupled_objectives_accumulate_exactly(name, write_recipe):
    model, batch = build(write_recipe("_base_: tiny_base.yaml\n" + OWN[name]))
    assert_same_gradients(model, batch)


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_recipes_accumulate_exactly(name):
    model, batch = build(REPO / "recipes" / name, SHIPPED[name])
    assert_same_gradients(model, batch)


def test_masks_differ_between_micro_batches_and_match_across_passes(write_recipe):
    model, batch = build(REPO / "recipes" / "uni_mlip.yaml", SHIPPED["uni_mlip.yaml"])
    micro = [Step(model, part, step_generator(CPU, SEED, STEP, i))
             for i, part in enumerate(micro_batches(batch, 2))]
    first, second = (m.view("image_masked").image.ids_keep for m in micro)
    assert not torch.equal(first, second)  # each micro-batch its own stream
    again = micro[0].sharing_views().view("image_masked").image.ids_keep
    assert again is first  # pass 2 reads pass 1's masks


def test_naive_micro_batch_accumulation_would_differ(write_recipe):
    """The reference can tell: averaging per-micro-batch ITC losses shrinks the negatives."""
    model, batch = build(write_recipe("_base_: tiny_base.yaml\n" + OWN["itc"]))
    _, ref = whole_batch_reference(model, batch, 1)
    for part in micro_batches(batch, 2):
        (model(part, step_generator(CPU, SEED, STEP))[0] / 2).backward()
    naive = gradients(model)
    worst = max((naive[n] - ref[n]).abs().max().item() for n in ref)
    assert worst > 1e-3


ACCUM_RECIPE = """
_base_: tiny_base.yaml
model: {fusion: {name: cross_attention, layers: 1, heads: 2}, tokenizer: {path: TOKENIZER}}
views: {masked: {masker: random_patches, ratio: 0.5}}
objectives:
  itc: {weight: 1.0}
  itc_masked: {use: itc, weight: 1.0, image_view: masked}
  itm: {weight: 1.0}
trainer: {max_steps: 4, ckpt_every: 2, grad_accum: 2}
"""


@pytest.fixture
def accum_recipe(write_recipe, tmp_path):
    tok = tmp_path / "tokenizer.json"  # one vocabulary for every run
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    return write_recipe(ACCUM_RECIPE.replace("TOKENIZER", str(tok)))


def logged(run: Path) -> list[dict[str, float]]:
    import json

    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss") or k == "step"} for r in rows]


def test_resume_with_accumulation_gives_identical_losses(accum_recipe, tmp_path):
    from vlp.core.trainer import train

    recipe = load_recipe(accum_recipe)
    train(recipe, out=tmp_path / "straight")
    train(recipe, out=tmp_path / "split", stop_after=2)
    train(recipe, out=tmp_path / "split", resume="latest")
    assert logged(tmp_path / "straight") == logged(tmp_path / "split")
    assert [r["step"] for r in logged(tmp_path / "split")] == [1, 2, 3, 4]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(path: Path, out: Path, *args: str) -> None:
    """`vlp.cli train` on 2 gloo ranks, on a port nobody else is using."""
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(free_port()), "-m", "vlp.cli", "train", str(path), "--out",
         str(out), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln]
    assert proc.returncode == 0, "\n".join(errors[:20]) or proc.stderr[-3000:]


def itc_recipe(write_recipe, tmp_path: Path, trainer: str) -> Path:
    tok = tmp_path / "tokenizer.json"
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    return write_recipe(f"""
        _base_: tiny_base.yaml
        model: {{tokenizer: {{path: {tok}}}}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {trainer}
    """)


def assert_same_losses(run: Path, reference: Path, steps: int) -> None:
    got, want = logged(run), logged(reference)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_two_ranks_with_accumulation_match_one_process_whole_batch(write_recipe, tmp_path):
    """torchrun, 2 gloo ranks x 2 micro-batches, each rank loading and collating its own
    share, logs the same losses as one process stepping on the whole batch at once (ITC; GLA
    below; ITM's sampled negatives differ with the number of ranks by design)."""
    from vlp.core.trainer import train

    path = itc_recipe(write_recipe, tmp_path, "{max_steps: 3, grad_accum: 2}")
    torchrun(path, tmp_path / "ddp")
    train(load_recipe(path, ["trainer.grad_accum=1"]), out=tmp_path / "single")
    assert_same_losses(tmp_path / "ddp", tmp_path / "single", 3)


@pytest.mark.parametrize("accum", [1, 2])
def test_gla_on_two_ranks_matches_one_process_over_steps(write_recipe, tmp_path, accum):
    """GLA gathers token tensors across ranks (FILIP words): 2 gloo ranks, with and without
    accumulation, log one process's losses for several steps, not only the first."""
    from vlp.core.trainer import train

    tok = tmp_path / "tokenizer.json"
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{max_text_len: 128}}
        model: {{tokenizer: {{path: {tok}}}}}
        objectives:
          gla: {{weight: 1.0, local: filip}}
        trainer: {{max_steps: 3, grad_accum: {accum}}}
    """)
    torchrun(path, tmp_path / "ddp")
    train(load_recipe(path, ["trainer.grad_accum=1"]), out=tmp_path / "single")
    assert_same_losses(tmp_path / "ddp", tmp_path / "single", 3)
