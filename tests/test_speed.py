"""Activation checkpointing and torch.compile change how, not what, is computed."""

from __future__ import annotations

import pytest
import torch
from test_accumulation import REPO, SHIPPED, STEP, build, gradients

from vlp.core.speed import checkpoint_blocks, compile_encoders
from vlp.core.trainer import forward_backward


def step_gradients(model, batch, grad_accum: int = 1):
    loss, _, _ = forward_backward(model, batch, STEP, 0, grad_accum, "fp32")
    return loss, gradients(model)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_checkpointing_recomputes_blocks_with_unchanged_gradients(grad_accum):
    model, batch = build(REPO / "recipes" / "mpma.yaml", SHIPPED["mpma.yaml"])
    ref_loss, ref = step_gradients(model, batch, grad_accum)
    calls = []
    mlp = model.text_encoder.blocks[0].mlp
    # a pre-hook: the recomputation stops early, as soon as the tensors backward needs exist
    mlp.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    step_gradients(model, batch, grad_accum)
    plain, with_grad = len(calls), sum(calls)

    # image encoder (timm), text encoder and both fusion streams
    assert checkpoint_blocks(model) == 1 + 1 + 2
    assert checkpoint_blocks(model) == 0  # idempotent
    calls.clear()
    loss, got = step_gradients(model, batch, grad_accum)
    assert len(calls) == plain + with_grad  # every pass with gradients ran again in backward
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-10, atol=1e-12)
    assert all(not n.count("forward") for n, _ in model.named_parameters())  # names unchanged


def test_compiled_encoders_match_eager():
    torch._dynamo.reset()
    model, batch = build(REPO / "recipes" / "clip.yaml")
    model.float()
    batch.image = batch.image.float()
    ref_loss, ref = step_gradients(model, batch)
    names = [n for n, _ in model.named_parameters()]
    assert compile_encoders(model, backend="aot_eager") == ["image_encoder", "text_encoder"]
    loss, got = step_gradients(model, batch)
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints stay loadable
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()
