"""Downstream metrics and heads against hand-worked references: zero-shot on planted
embeddings, AUROC by pair counting, the linear probe on separable and on shuffled labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlp.eval.metrics import auroc_per_label, macro_auroc, macro_f1, single_label_metrics
from vlp.tasks.finetune import layer_decay_groups
from vlp.tasks.heads import classification_loss, label_fraction
from vlp.tasks.linear_probe import train_linear_probe
from vlp.tasks.zero_shot import class_scores, ensemble, positive_probability

pytest.importorskip("sklearn")


def test_prompt_ensemble_is_the_renormalised_mean_of_normalised_prompts():
    prompts = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # unequal norms: normalise first
    assert torch.allclose(ensemble(prompts), torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_zero_shot_on_planted_embeddings_gives_the_hand_computed_predictions():
    # classes along the axes; images at known angles
    classes = torch.stack([ensemble(torch.tensor([[1.0, 0, 0], [1.0, 0.1, 0]])),
                           ensemble(torch.tensor([[0, 2.0, 0]])),
                           ensemble(torch.tensor([[0, 0, 1.0], [0, 0, 3.0]]))])
    images = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.9], [0.2, 1.0, 0.1], [1, 1, 0.01]])
    scores = class_scores(images, classes)
    # class 0 = normalise(mean(x, normalise([1, .1, 0]))) = (1 + 1/sqrt(1.01), .1/sqrt(1.01)),
    # renormalised; image [1, 1, .01] is tied between x and y but class 0 leans towards y
    c0 = torch.tensor([1 + 1 / math.sqrt(1.01), 0.1 / math.sqrt(1.01), 0.0])
    c0 = c0 / c0.norm()
    unit = F.normalize(images, dim=-1)
    assert torch.allclose(scores[:, 0], unit @ c0, atol=1e-6)
    assert torch.allclose(scores[:, 1], unit[:, 1], atol=1e-6)  # cosine with the y axis
    assert scores.argmax(1).tolist() == [0, 2, 1, 0]


def test_multi_label_zero_shot_is_a_softmax_over_positive_and_negative():
    pos, neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    image = torch.tensor([[math.cos(0.3), math.sin(0.3)]])
    p = positive_probability(image, pos, neg, scale=10.0)
    a, b = 10 * math.cos(0.3), 10 * math.sin(0.3)
    assert p.item() == pytest.approx(math.exp(a) / (math.exp(a) + math.exp(b)), rel=1e-5)


def test_auroc_equals_pair_counting_with_ties_and_ignored_labels():
    truth = np.array([[1, 0], [0, 1], [1, 0], [0, np.nan], [np.nan, 1], [0, 0]], dtype=float)
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9], [0.5, 0.4],
                       [0.3, 0.6]])
    # label a: positives {.9, .3}, negatives {.8, .1, .3}: pairs won 1+1+1 + 0+1+0.5 = 4.5 / 6
    # label b: positives {.7, .4}, negatives {.1, .2, .6}: 1+1+1 + 1+1+0 = 5 / 6
    per_label = auroc_per_label(truth, scores, ["a", "b"])
    assert per_label["a"] == pytest.approx(4.5 / 6)
    assert per_label["b"] == pytest.approx(5 / 6)
    assert macro_auroc(per_label) == pytest.approx((4.5 / 6 + 5 / 6) / 2)
    only_one_class = auroc_per_label(np.array([[1.0], [1.0]]), np.array([[0.2], [0.4]]), ["c"])
    assert only_one_class == {"c": None}


def test_single_label_metrics_and_majority_baseline():
    truth = np.array([0, 0, 1, 2])
    scores = np.eye(3)[[0, 1, 1, 2]]  # one mistake
    metrics = single_label_metrics(truth, scores, train_truth=np.array([1, 1, 0]),
                                   num_classes=3)
    assert metrics["accuracy"].value == pytest.approx(75.0)
    assert metrics["accuracy"].baseline == pytest.approx(25.0)  # always class 1
    # F1: class 0 = 2/3 (p=1, r=.5), class 1 = 2/3 (p=.5, r=1), class 2 = 1
    assert metrics["macro_f1"].value == pytest.approx(100 * (2 / 3 + 2 / 3 + 1) / 3)
    assert macro_f1([0, 0], [0, 0], 2) == pytest.approx(50.0)  # an absent class counts as 0


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    return centres[y] + torch.randn(n, 4, generator=g), y


def test_linear_probe_is_near_perfect_on_separable_features_and_chance_on_shuffled():
    train_x, train_y = _blobs(300, 0)
    val_x, val_y = _blobs(100, 1)
    test_x, test_y = _blobs(300, 2)
    model, log = train_linear_probe(train_x, train_y, val_x, val_y, 3, False, lr=1e-2,
                                    epochs=100, patience=10)
    accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy >= 0.98 and log["best_epoch"] >= 1
    shuffled = train_y[torch.randperm(300, generator=torch.Generator().manual_seed(3))]
    model, _ = train_linear_probe(train_x, shuffled, val_x, val_y[torch.randperm(100)], 3,
                                  False, lr=1e-2, epochs=100, patience=10)
    chance = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert 0.2 <= chance <= 0.47  # 1/3 +- 3.5 standard errors of 300 draws


def test_multi_label_loss_ignores_uncertain_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    target = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    known = [(2.0, 1.0), (0.5, 0.0), (3.0, 1.0)]
    expected = sum(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(t))
                   for z, t in known) / 3
    assert classification_loss(logits, target, True).item() == pytest.approx(expected.item())


def test_label_fractions_are_seeded_subsets_of_the_training_split():
    one = label_fraction(1000, 0.01, seed=0)
    assert len(one) == 10 and np.array_equal(one, label_fraction(1000, 0.01, seed=0))
    assert not np.array_equal(one, label_fraction(1000, 0.01, seed=1))
    assert set(one) <= set(label_fraction(1000, 1.0, seed=0)) == set(range(1000))
    assert len(label_fraction(50, 0.001, seed=0)) == 1  # never empty


def test_layer_decay_gives_each_block_its_hand_computed_rate():
    encoder = torch.nn.Module()
    encoder.patch_embed = torch.nn.Linear(2, 2)
    encoder.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))
    encoder.norm = torch.nn.LayerNorm(2)
    head = torch.nn.Linear(2, 1)
    groups = layer_decay_groups(encoder, head, lr=1.0, weight_decay=0.1, decay=0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rate[id(encoder.patch_embed.weight)] == pytest.approx(0.5 ** 4)
    assert [rate[id(b.weight)] for b in encoder.blocks] == pytest.approx([0.125, 0.25, 0.5])
    assert rate[id(encoder.norm.weight)] == rate[id(head.weight)] == 1.0
    flat = layer_decay_groups(encoder, head, lr=1.0, weight_decay=0.1, decay=None)
    assert {g["lr"] for g in flat} == {1.0}
