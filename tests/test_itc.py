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


def test_ddp_two_ranks_equal_one_process(tmp_path):
    """Two gloo ranks with half the batch each give the single-process loss and gradients."""
    sys.path.insert(0, str(HERE))
    from itc_setup import build_model_and_batch

    model, batch, generator = build_model_and_batch(tmp_path)
    loss, _, _ = model(batch, generator)
    loss.backward()
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29517", str(HERE / "ddp_worker.py"), str(out),
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert abs(got["loss"].item() - loss.item()) < 1e-5
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == got["grads"].keys()
    for name, g in grads.items():
        torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
