"""ITM negatives: excluded candidates are never drawn, hard draws follow softmax(sim / T),
random draws are uniform over allowed candidates; the loss and an end-to-end training step."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.objectives.itm import itm_loss, same_pair_mask, sample_negatives

# 8 pairs: 3 and 4 are the same study, 2 and 6 have identical report text
SAMPLE_IDS = torch.tensor([0, 1, 2, 3, 3, 5, 6, 7])
TEXT_IDS = torch.tensor([10, 11, 12, 13, 14, 15, 12, 17])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def planted_exclusions() -> torch.Tensor:
    """The exclusion matrix for SAMPLE_IDS/TEXT_IDS written out by hand."""
    expected = torch.eye(8, dtype=torch.bool)
    for a, b in [(3, 4), (2, 6)]:
        expected[a, b] = expected[b, a] = True
    return expected


def softmax_by_hand(logits: list[float]) -> list[float]:
    weights = [math.exp(v) for v in logits]
    return [w / sum(weights) for w in weights]


def frequencies(draws: torch.Tensor, size: int) -> list[float]:
    return (torch.bincount(draws, minlength=size).double() / draws.numel()).tolist()


def test_same_pair_mask_marks_same_study_and_same_text():
    mask = same_pair_mask((SAMPLE_IDS, TEXT_IDS), (SAMPLE_IDS, TEXT_IDS))
    assert torch.equal(mask, planted_exclusions())


def test_same_pair_mask_against_other_candidates():
    queries = (torch.tensor([1, 2]), torch.tensor([100, 200]))
    cands = (torch.tensor([2, 9, 1]), torch.tensor([100, 300, 400]))
    # query 0 (id 1, text 100): cand 0 shares text, cand 2 shares id; query 1 shares id with 0
    expected = torch.tensor([[True, False, True], [True, False, False]])
    assert torch.equal(same_pair_mask(queries, cands), expected)


@pytest.mark.parametrize("hard", [True, False])
def test_excluded_candidates_never_drawn(hard):
    exclude = same_pair_mask((SAMPLE_IDS, TEXT_IDS), (SAMPLE_IDS, TEXT_IDS))
    draws = 500  # 500 independent batches of 8 queries, stacked into one call
    g = gen(0)
    # the excluded pairs get the highest similarity: the most tempting hard negatives
    sim = torch.rand(draws * 8, 8, generator=g) * 0.5 + exclude.float().repeat(draws, 1)
    drawn = sample_negatives(sim, exclude.repeat(draws, 1), g, hard=hard, temperature=0.1)
    assert drawn.shape == (draws * 8,)
    query = torch.arange(8).repeat(draws)
    assert not exclude[query, drawn].any()
    # every allowed candidate is reached
    seen = torch.zeros(8, 8, dtype=torch.bool)
    seen[query, drawn] = True
    assert torch.equal(seen, ~exclude)


def test_excluded_candidates_never_drawn_over_repeated_calls():
    exclude = same_pair_mask((SAMPLE_IDS, TEXT_IDS), (SAMPLE_IDS, TEXT_IDS))
    g = gen(4)
    for _ in range(50):
        sim = torch.rand(8, 8, generator=g) + exclude.float()
        drawn = sample_negatives(sim, exclude, g, hard=True, temperature=0.1)
        assert not exclude[torch.arange(8), drawn].any()


def planted_similarity(kind: str) -> torch.Tensor:
    """(6, 6) similarities; the diagonal (the positive) is excluded when sampling."""
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    if kind == "one_close":  # row i: 0.9 to candidate i + 1, 0.1 to the rest
        return torch.where(j == (i + 1) % 6, 0.9, 0.1)
    return 0.05 * ((j - i) % 6).float()  # graded: 0.05 .. 0.25 off the diagonal


@pytest.mark.parametrize("kind", ["one_close", "graded"])
def test_hard_negatives_follow_softmax_of_similarity(kind):
    temperature, repeats = 0.1, 4000
    sim = planted_similarity(kind)
    exclude = torch.eye(6, dtype=torch.bool)
    drawn = sample_negatives(sim.repeat(repeats, 1), exclude.repeat(repeats, 1), gen(1),
                             hard=True, temperature=temperature)
    for row in range(6):
        allowed = [c for c in range(6) if c != row]
        probs = softmax_by_hand([sim[row, c].item() / temperature for c in allowed])
        freq = frequencies(drawn[row::6], 6)
        assert freq[row] == 0.0
        for c, p in zip(allowed, probs, strict=True):
            assert abs(freq[c] - p) < 0.03, (row, c, freq[c], p)


def test_random_negatives_uniform_over_allowed_candidates():
    repeats = 3000
    exclude = planted_exclusions()
    sim = planted_similarity("one_close").repeat(2, 2)[:8, :8]  # ignored when not hard
    drawn = sample_negatives(sim.repeat(repeats, 1), exclude.repeat(repeats, 1), gen(2),
                             hard=False)
    for row in range(8):
        counts = torch.bincount(drawn[row::8], minlength=8).double()
        allowed = ~exclude[row]
        assert (counts[~allowed] == 0).all()
        expected = repeats / allowed.sum().item()
        chi2 = (((counts[allowed] - expected) ** 2) / expected).sum().item()
        df = allowed.sum().item() - 1
        # chi-square with df <= 6: mean df, sd sqrt(2 df); 6 sd is far beyond chance
        assert chi2 < df + 6 * math.sqrt(2 * df), (row, counts.tolist())


def test_row_without_allowed_candidate_falls_back_to_uniform():
    repeats = 2000
    exclude = torch.eye(4, dtype=torch.bool)
    exclude[0] = True  # query 0 has no allowed candidate
    sim = torch.tensor([[0.9, 0.1, 0.1, 0.1]]).expand(4, 4)
    for hard in (True, False):
        drawn = sample_negatives(sim.repeat(repeats, 1), exclude.repeat(repeats, 1), gen(3),
                                 hard=hard, temperature=0.1)
        fallback = frequencies(drawn[0::4], 4)
        assert all(abs(f - 0.25) < 0.04 for f in fallback), fallback
        for row in (1, 2, 3):
            assert not (drawn[row::4] == row).any()


def test_itm_loss_is_two_way_softmax_cross_entropy():
    logits = [[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0], [0.2, -0.7]]
    labels = [1, 0, 1, 0]
    by_hand = [-math.log(softmax_by_hand(row)[y]) for row, y in zip(logits, labels, strict=True)]
    loss = itm_loss(torch.tensor(logits), torch.tensor(labels))
    assert loss.item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-6)


def test_itm_trains_end_to_end(write_recipe, tmp_path):
    from vlp.core.recipe import load_recipe
    from vlp.core.trainer import train

    path = write_recipe("""
        _base_: tiny_base.yaml
        model: {fusion: {name: cross_attention, layers: 1, heads: 2}}
        objectives:
          itc: {weight: 1.0}
          itm: {weight: 1.0, negatives: hard}
        """)
    recipe = load_recipe(path, ["trainer.max_steps=2"])
    result = train(recipe, out=tmp_path / "run")
    metrics = result.last_metrics
    assert result.steps == 2
    assert "loss/itm" in metrics and "itm/accuracy" in metrics
    assert math.isfinite(metrics["loss/itm"]) and metrics["loss/itm"] > 0
    assert 0.0 <= metrics["itm/accuracy"] <= 1.0
    # one positive and two re-paired fusion passes per step
    assert metrics["passes/fusion/itm_negative_texts"] == 1
    assert metrics["passes/fusion/itm_negative_images"] == 1
