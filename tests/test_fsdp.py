"""FSDP2 (`trainer.parallel: fsdp`) on 2 gloo CPU ranks under torchrun: sharded training with
exact accumulation, full checkpoints and resume give one process's whole-batch losses."""

from __future__ import annotations

import json

import pytest
from test_accumulation import assert_same_losses, itc_recipe, torchrun

from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.eval.evaluate import retrieval_of_run


def test_fsdp_with_accumulation_and_resume_matches_one_process(write_recipe, tmp_path):
    path = itc_recipe(write_recipe, tmp_path, "{max_steps: 4, ckpt_every: 2, grad_accum: 2}")
    out = tmp_path / "fsdp"
    torchrun(path, out, "--set", "trainer.parallel=fsdp", "--stop-after", "2")
    torchrun(path, out, "--set", "trainer.parallel=fsdp", "--resume", "latest")
    single = train(load_recipe(path, ["trainer.grad_accum=1"]), out=tmp_path / "single",
                   evaluate=retrieval_of_run)
    assert_same_losses(out, tmp_path / "single", 4)
    # the full checkpoint is an ordinary one: rank 0 evaluated it like a single-process run
    retrieval = json.loads((out / "retrieval.json").read_text())
    assert retrieval == pytest.approx(single.retrieval, abs=1e-6)
