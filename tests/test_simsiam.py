"""SimSiam: the symmetric negative-cosine loss by hand, and its stop-gradient, both on raw
tensors and through a training step of a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.core.step import Step
from vlp.data.batch import Batch
from vlp.data.tokenize import TokenIds
from vlp.objectives.simsiam import simsiam_loss

TOKENS = TokenIds(vocab_size=300, pad=0, unk=1, cls=2, sep=3, mask=4)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine written out: <a, b> / (|a| |b|)."""
    return (a * b).sum(-1) / (a.pow(2).sum(-1).sqrt() * b.pow(2).sum(-1).sqrt())


def reference_loss(p1, p2, z1, z2) -> torch.Tensor:
    """SimSiam's loss with the stop-gradient written as an explicit detach."""
    return -(cosine(p1, z2.detach()).mean() + cosine(p2, z1.detach()).mean()) / 2


def unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


# --- the loss by hand ----------------------------------------------------------------------------

def test_predictions_equal_to_targets_give_minus_one():
    z1 = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    z2 = torch.tensor([[0.5, -2.0, 1.0], [3.0, 3.0, -1.0]])
    # p1 predicts z2 and p2 predicts z1 (up to scale: cosine ignores length)
    assert simsiam_loss(2 * z2, 0.5 * z1, z1, z2).item() == pytest.approx(-1.0, abs=1e-6)


def test_orthogonal_predictions_give_zero():
    z1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    z2 = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    p1 = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]])  # orthogonal to z2
    p2 = torch.tensor([[0.0, 4.0, 0.0], [1.0, -1.0, 0.0]])  # orthogonal to z1
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(0.0, abs=1e-7)


def test_known_angles_in_two_dimensions():
    # p1 vs z2 at angles 30 and 120 degrees; p2 vs z1 at 60 and 180 degrees; lengths vary
    z2 = torch.tensor([unit(10), unit(200)]) * torch.tensor([[2.0], [0.3]])
    p1 = torch.tensor([unit(40), unit(320)])
    z1 = torch.tensor([unit(-15), unit(90)]) * torch.tensor([[1.5], [4.0]])
    p2 = torch.tensor([unit(45), unit(270)]) * 7.0
    cos_1 = (math.cos(math.radians(30)) + math.cos(math.radians(120))) / 2
    cos_2 = (math.cos(math.radians(60)) + math.cos(math.radians(180))) / 2
    expected = -(cos_1 + cos_2) / 2
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected, abs=1e-6)


# --- stop-gradient on raw tensors ----------------------------------------------------------------

def test_targets_get_no_gradient_predictions_get_the_analytic_one():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(5, 4, generator=g).requires_grad_() for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None or (z1.grad == 0).all()
    assert z2.grad is None or (z2.grad == 0).all()

    def analytic(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # d/dp cos(p, z) = (z/|z| - cos * p/|p|) / |p|; loss = -(mean cos + mean cos) / 2
        p, z = p.detach(), z.detach()
        pn, zn = p.norm(dim=-1, keepdim=True), z.norm(dim=-1, keepdim=True)
        cos = (p * z).sum(-1, keepdim=True) / (pn * zn)
        return -(z / zn - cos * p / pn) / pn / (2 * p.shape[0])

    torch.testing.assert_close(p1.grad, analytic(p1, z2), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p2.grad, analytic(p2, z1), rtol=1e-4, atol=1e-6)


def test_gradient_matches_autograd_on_independent_formula():
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(6, 3, generator=g) for _ in range(4)]
    ours = [t.clone().requires_grad_() for t in base]
    ref = [t.clone().requires_grad_() for t in base]
    simsiam_loss(*ours).backward()
    reference_loss(*ref).backward()
    for a, b in zip(ours[:2], ref[:2], strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
        assert a.grad.abs().sum() > 0


# --- through a step of a tiny model --------------------------------------------------------------

def build_model(write_recipe) -> VLPModel:
    path = write_recipe("""
        _base_: tiny_base.yaml
        views:
          image_aug1: {masker: augment, policy: medical}
          image_aug2: {masker: augment, policy: medical}
        objectives:
          simsiam: {weight: 1.0, dim: 16, pred_dim: 8}
        """)
    torch.manual_seed(0)
    return VLPModel(load_recipe(path), TOKENS)


def image_batch(size: int = 8) -> Batch:
    g = torch.Generator().manual_seed(2)
    ids = torch.full((size, 6), TOKENS.pad)
    return Batch(image=torch.rand(size, 1, 32, 32, generator=g), input_ids=ids,
                 attention_mask=ids != TOKENS.pad, special_tokens_mask=ids == TOKENS.pad,
                 word_ids=torch.full((size, 6), -1), sample_id=torch.arange(size),
                 text_id=torch.arange(size))


def head_grads(objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}


def test_projector_gets_gradient_only_through_predictor(write_recipe):
    model = build_model(write_recipe)
    objective = model.objectives["simsiam"]
    step = Step(model, image_batch(), torch.Generator().manual_seed(3))
    out = objective(step)
    out.loss.backward()
    ours = head_grads(objective)
    assert any(k.startswith("projector.") for k in ours)

    # independent computation from the same encoder features, with z detached explicitly
    f1 = step.image("image_aug1").pooled.detach()
    f2 = step.image("image_aug2").pooled.detach()

    def grads_of(loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        objective.zero_grad(set_to_none=True)
        z1, z2 = objective.projector(f1), objective.projector(f2)
        p1, p2 = objective.predictor(z1), objective.predictor(z2)
        loss = loss_fn(p1, p2, z1, z2)
        loss.backward()
        return loss.detach(), head_grads(objective)

    ref_loss, expected = grads_of(reference_loss)
    assert out.loss.item() == pytest.approx(ref_loss.item(), abs=1e-5)
    assert ours.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-3, atol=1e-6, msg=name)

    # without the stop-gradient the projector's gradient differs: the comparison has teeth
    def no_stop_gradient(p1, p2, z1, z2):
        return -(cosine(p1, z2).mean() + cosine(p2, z1).mean()) / 2

    _, leaky = grads_of(no_stop_gradient)
    first_layer = "projector.0.weight"
    assert not torch.allclose(leaky[first_layer], expected[first_layer], rtol=1e-3, atol=1e-6)


def test_step_views_differ_and_encoder_gets_gradient(write_recipe):
    model = build_model(write_recipe)
    step = Step(model, image_batch(), torch.Generator().manual_seed(4))
    out = model.objectives["simsiam"](step)
    assert -1.0 <= out.loss.item() <= 1.0
    assert not torch.equal(step.image_view("image_aug1").pixels,
                           step.image_view("image_aug2").pixels)
    out.loss.backward()
    encoder_grads = [p.grad for p in model.image_encoder.parameters() if p.grad is not None]
    assert encoder_grads and any(g.abs().sum() > 0 for g in encoder_grads)
    assert "z_std" in out.metrics
