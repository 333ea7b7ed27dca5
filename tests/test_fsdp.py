"""FSDP2 (`trainer.parallel: fsdp`) on 2 gloo CPU ranks under torchrun: sharded training with
exact accumulation, full checkpoints and resume give one process's whole-batch losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_accumulation import logged

from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.data.demo import demo_reports
from vlp.data.tokenize import train_tokenizer
from vlp.eval.evaluate import retrieval_of_run


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(path, out, *args: str) -> None:
    """`vlp.cli train` on 2 gloo ranks, sharded, on a port nobody else is using."""
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(port), "-m", "vlp.cli", "train", str(path), "--out", str(out),
         "--set", "trainer.parallel=fsdp", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln]
    assert proc.returncode == 0, "\n".join(errors[:20]) or proc.stderr[-3000:]


def test_fsdp_with_accumulation_and_resume_matches_one_process(write_recipe, tmp_path):
    tok = tmp_path / "tokenizer.json"
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        model: {{tokenizer: {{path: {tok}}}}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {{max_steps: 4, ckpt_every: 2, grad_accum: 2}}
    """)
    out = tmp_path / "fsdp"
    torchrun(path, out, "--stop-after", "2")
    torchrun(path, out, "--resume", "latest")
    single = train(load_recipe(path, ["trainer.grad_accum=1"]), out=tmp_path / "single",
                   evaluate=retrieval_of_run)
    sharded, whole = logged(out), logged(tmp_path / "single")
    assert [r["step"] for r in sharded] == [1, 2, 3, 4]
    for a, b in zip(sharded, whole):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    # the full checkpoint is an ordinary one: rank 0 evaluated it like a single-process run
    retrieval = json.loads((out / "retrieval.json").read_text())
    assert retrieval == pytest.approx(single.retrieval, abs=1e-6)
