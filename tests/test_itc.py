"""ITC: the loss against a hand-written reference, its gradients, and exactness under DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from vlp.objectives.itc import itc_loss

HERE = Path(__file__).parent


def reference_itc(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE with explicit sums over Python floats."""
    n = img.shape[0]
    sim = [[scale * sum(a * b for a, b in zip(img[i].tolist(), txt[j].tolist()))
            for j in range(n)] for i in range(n)]
    i2t = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n)))
              for i in range(n)) / n
    t2i = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n)))
              for j in range(n)) / n
    return (i2t + t2i) / 2


def test_itc_matches_reference():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    got = itc_loss(img, txt, torch.tensor(math.log(10.0)))
    assert abs(got.item() - reference_itc(img, txt, 10.0)) < 1e-5


def test_itc_perfect_alignment_and_gradients():
    eye = torch.eye(4)
    # identical, orthogonal pairs: loss falls towards 0 as the temperature falls
    assert itc_loss(eye, eye, torch.tensor(math.log(100.0))).item() < 1e-3
    img = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    img.requires_grad_(True)
    txt = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    loss = itc_loss(img, txt, scale)
    loss.backward()
    # finite differences on the temperature parameter, computed independently
    eps = 1e-6
    up = reference_itc(img.detach(), txt, math.exp(1.5 + eps))
    down = reference_itc(img.detach(), txt, math.exp(1.5 - eps))
    assert abs(scale.grad.item() - (up - down) / (2 * eps)) < 1e-4
    assert img.grad is not None and img.grad.abs().sum() > 0


def run_two_ranks(name: str, folder: Path, port: int) -> dict:
    """One DDP step of recipe `name` on 2 gloo ranks, each collating its own share."""
    out = folder / f"{name}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(port), str(HERE / "ddp_worker.py"), name,
                           str(folder), str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def one_process(name: str, folder: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same step in one process over the whole batch (padded to its longest report)."""
    from ddp_setup import build, share

    recipe, model, collate, dataset = build(folder, name)
    loss, _, _ = model(share(recipe, collate, dataset, 0, 1), torch.Generator().manual_seed(0))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(got: dict, loss: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
    assert abs(got["loss"].item() - loss.item()) < 1e-5
    assert grads.keys() == got["grads"].keys()
    for name, g in grads.items():
        torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_ddp_two_ranks_equal_one_process(tmp_path):
    """Two gloo ranks with half the batch each give the single-process loss and gradients."""
    sys.path.insert(0, str(HERE))
    loss, grads = one_process("itc", tmp_path)
    assert_same_step(run_two_ranks("itc", tmp_path, 29517), loss, grads)


def test_ddp_token_gathers_with_reports_of_different_lengths(tmp_path):
    """GLA's local part gathers word tokens across ranks whose own batches are padded to
    different lengths; the result is still the single-process loss and gradients."""
    sys.path.insert(0, str(HERE))
    loss, grads = one_process("gla", tmp_path)
    got = run_two_ranks("gla", tmp_path, 29518)
    assert got["lengths"][0] != got["lengths"][1]  # the case under test: unequal padding
    assert_same_step(got, loss, grads)
