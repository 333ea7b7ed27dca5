"""MLM masking: whole-word selection at the requested ratio, BERT's 80/10/10 replacement,
fixed-size prediction positions, and the loss over labelled tokens only.

Statistics are measured on a large synthetic batch with realistic structure: [CLS] at 0, words
of 1-3 sub-word tokens, [SEP] after the report, padding to the end.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vlp.data.tokenize import TokenIds
from vlp.maskers.mlm import (
    IGNORE,
    MLMTokens,
    mask_tokens,
    max_predictions_for,
    prediction_positions,
    select_units,
)
from vlp.objectives.mlm import mlm_loss

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
FIRST_REGULAR = 5
VOCAB = 5000  # large: a random replacement equals the original token with probability 1/4995
RATIO = 0.15


def make_reports(rows: int, length: int, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, special_tokens_mask, word_ids) for `rows` padded reports of `length` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((rows, length), PAD, dtype=torch.long)
    word_ids = torch.full((rows, length), -1, dtype=torch.long)
    special = torch.ones(rows, length, dtype=torch.bool)
    for row in range(rows):
        text_len = int(torch.randint(length // 3, length - 1, (1,), generator=g))
        ids[row, 0] = CLS
        pos, word = 1, 0
        while pos <= text_len:
            n = min(int(torch.randint(1, 4, (1,), generator=g)), text_len + 1 - pos)
            word_ids[row, pos:pos + n] = word
            pos, word = pos + n, word + 1
        ids[row, 1:text_len + 1] = torch.randint(FIRST_REGULAR, VOCAB, (text_len,), generator=g)
        special[row, 1:text_len + 1] = False
        ids[row, text_len + 1] = SEP
    return ids, special, word_ids


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mask_big_batch(seed: int = 1, whole_word: bool = True):
    ids, special, word_ids = make_reports(512, 64)
    masked, labels = mask_tokens(ids, special, word_ids, MASK, VOCAB, RATIO, gen(seed),
                                 whole_word=whole_word, random_low=FIRST_REGULAR)
    return ids, special, word_ids, masked, labels


def word_selection_range(selected: torch.Tensor, word_ids: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, word): min and max of `selected` over the word's tokens (B, T) each."""
    index = word_ids.clamp(min=0)
    real = word_ids >= 0
    sel = selected.long()
    lo = torch.full(word_ids.shape, 2, dtype=torch.long).scatter_reduce(
        1, index, torch.where(real, sel, 2), reduce="amin")
    hi = torch.full(word_ids.shape, -1, dtype=torch.long).scatter_reduce(
        1, index, torch.where(real, sel, -1), reduce="amax")
    used = torch.zeros(word_ids.shape, dtype=torch.bool).scatter(1, index, real)
    return lo[used], hi[used]


# --- mask_tokens over a large batch ------------------------------------------------------------

def test_selected_fraction_is_ratio_of_eligible_tokens():
    _, special, _, _, labels = mask_big_batch()
    fraction = (labels != IGNORE).sum().item() / (~special).sum().item()
    assert abs(fraction - RATIO) < 0.01


def test_replacement_split_is_80_10_10():
    ids, _, _, masked, labels = mask_big_batch()
    selected = labels != IGNORE
    n = selected.sum().item()
    as_mask = (selected & (masked == MASK)).sum().item() / n
    as_random = (selected & (masked != MASK) & (masked != ids)).sum().item() / n
    unchanged = (selected & (masked == ids)).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02
    assert abs(as_random - 0.1) < 0.02
    assert abs(unchanged - 0.1) < 0.02
    assert as_mask + as_random + unchanged == pytest.approx(1.0)


def test_special_and_padding_tokens_never_selected_or_changed():
    ids, special, word_ids, masked, labels = mask_big_batch()
    assert (labels[special] == IGNORE).all()
    assert torch.equal(masked[special], ids[special])
    assert (labels[word_ids < 0] == IGNORE).all()
    # unselected regular tokens are never touched either
    untouched = labels == IGNORE
    assert torch.equal(masked[untouched], ids[untouched])


def test_whole_words_are_selected_together():
    _, _, word_ids, _, labels = mask_big_batch()
    lo, hi = word_selection_range(labels != IGNORE, word_ids)
    assert torch.equal(lo, hi), "a word was split between selected and unselected tokens"
    assert hi.any() and not lo.all()


def test_labels_hold_original_ids_at_selected_positions_only():
    ids, _, _, masked, labels = mask_big_batch()
    selected = labels != IGNORE
    assert torch.equal(labels[selected], ids[selected])
    assert (labels[~selected] == IGNORE).all()
    # what changed is exactly a subset of what was selected
    assert not ((masked != ids) & ~selected).any()


def test_random_replacements_stay_in_regular_vocabulary():
    ids, _, _, masked, labels = mask_big_batch()
    replaced = (labels != IGNORE) & (masked != MASK) & (masked != ids)
    assert replaced.sum() > 100
    assert (masked[replaced] >= FIRST_REGULAR).all()
    assert (masked[replaced] < VOCAB).all()


def test_same_seed_same_masking_different_seed_different():
    ids, special, word_ids = make_reports(64, 32)
    args = (ids, special, word_ids, MASK, VOCAB, RATIO)
    a = mask_tokens(*args, gen(7), random_low=FIRST_REGULAR)
    b = mask_tokens(*args, gen(7), random_low=FIRST_REGULAR)
    c = mask_tokens(*args, gen(8), random_low=FIRST_REGULAR)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_token_level_masking_splits_words():
    _, special, word_ids, _, labels = mask_big_batch(whole_word=False)
    fraction = (labels != IGNORE).sum().item() / (~special).sum().item()
    assert abs(fraction - RATIO) < 0.01
    lo, hi = word_selection_range(labels != IGNORE, word_ids)
    assert (lo != hi).any(), "token-level masking never split a multi-token word"


# --- select_units by hand ----------------------------------------------------------------------

def test_select_units_equal_words_budget_forces_two_words():
    # Row: [CLS] w0 w0 w1 w1 w2 w2 w3 w3 [SEP]; 8 eligible tokens, ratio 0.5 -> budget 4.
    # Whatever the shuffled order, the k-th word (0-based) has 2k tokens before it and is taken
    # iff 2k + 2/2 < 4, i.e. k in {0, 1}: exactly 2 words = 4 tokens, always whole.
    units = torch.tensor([[-1, 0, 0, 1, 1, 2, 2, 3, 3, -1]])
    eligible = units >= 0
    for seed in range(20):
        chosen = select_units(units, eligible, 0.5, gen(seed))
        assert chosen.sum().item() == 4
        assert not chosen[~eligible].any()
        picked_words = set(units[chosen].tolist())
        assert len(picked_words) == 2
        for w in picked_words:
            assert chosen[units == w].all()


def test_select_units_midpoint_rule_with_unequal_words():
    # Units [0, 0, 0, 1] (a 3-token word, then a 1-token word), ratio 0.5 -> budget 2.
    # Word 0 first: 0 + 1.5 < 2 take; word 1 then has 3 before: 3 + 0.5 >= 2 skip -> 3 tokens.
    # Word 1 first: 0 + 0.5 < 2 take; word 0 then has 1 before: 1 + 1.5 >= 2 skip -> 1 token.
    units = torch.tensor([[0, 0, 0, 1]])
    eligible = torch.ones_like(units, dtype=torch.bool)
    outcomes = set()
    for seed in range(40):
        chosen = select_units(units, eligible, 0.5, gen(seed))
        outcomes.add(tuple(chosen[0].tolist()))
    assert outcomes == {(True, True, True, False), (False, False, False, True)}


def test_select_units_budget_per_row_single_token_units():
    # Token units (length 1): the k-th unit is taken iff k + 0.5 < budget.
    # Row 0: 10 eligible, ratio 0.25 -> budget 2.5 -> k in {0, 1}: 2 tokens.
    # Row 1: 6 eligible (4 padding), ratio 0.25 -> budget 1.5 -> k = 0: 1 token.
    units = torch.arange(10).expand(2, 10)
    eligible = torch.ones(2, 10, dtype=torch.bool)
    eligible[1, 6:] = False
    for seed in range(10):
        chosen = select_units(units, eligible, 0.25, gen(seed))
        assert chosen.sum(1).tolist() == [2, 1]
        assert not chosen[1, 6:].any()


# --- prediction positions ----------------------------------------------------------------------

def test_prediction_positions_cover_every_label_and_pad_with_ignore():
    ids, special, word_ids = make_reports(128, 48, seed=3)
    _, labels = mask_tokens(ids, special, word_ids, MASK, VOCAB, RATIO, gen(0),
                            random_low=FIRST_REGULAR)
    m = max_predictions_for(RATIO, labels.shape[1])
    positions, position_labels = prediction_positions(labels, m, gen(1))
    assert positions.shape == position_labels.shape == (128, m)
    checked = 0
    for row in range(labels.shape[0]):
        labelled = set(torch.nonzero(labels[row] != IGNORE).flatten().tolist())
        if len(labelled) > m:
            continue
        checked += 1
        pos, pos_labels = positions[row].tolist(), position_labels[row].tolist()
        assert len(set(pos)) == m, "a position was repeated"
        real = [p for p, lab in zip(pos, pos_labels, strict=True) if lab != IGNORE]
        assert set(real) == labelled
        assert sum(lab == IGNORE for lab in pos_labels) == m - len(labelled)
        for p, lab in zip(pos, pos_labels, strict=True):
            assert lab == labels[row, p].item()
    assert checked > 120


def test_prediction_positions_subset_when_more_labels_than_room():
    labels = torch.full((1, 12), IGNORE)
    labels[0, :8] = torch.arange(100, 108)
    positions, position_labels = prediction_positions(labels, 5, gen(0))
    assert set(positions[0].tolist()) <= set(range(8))
    assert len(set(positions[0].tolist())) == 5
    assert torch.equal(position_labels[0], positions[0] + 100)


@pytest.mark.parametrize("ratio,length,expected", [
    (0.25, 32, 14),  # ceil(0.25 * 32 * 1.25) + 4 = 10 + 4
    (0.5, 10, 10),   # ceil(6.25) + 4 = 11, capped at the length 10
    (0.15, 100, 23),  # ceil(18.75) + 4
])
def test_max_predictions_for(ratio, length, expected):
    assert max_predictions_for(ratio, length) == expected


def test_mlm_tokens_masker_builds_a_consistent_text_view():
    ids, special, word_ids = make_reports(16, 40, seed=5)
    tokens = TokenIds(vocab_size=VOCAB, pad=PAD, unk=UNK, cls=CLS, sep=SEP, mask=MASK)
    masker = MLMTokens(MLMTokens.Params(), SimpleNamespace(tokens=tokens))
    batch = SimpleNamespace(input_ids=ids, special_tokens_mask=special, word_ids=word_ids,
                            attention_mask=ids != PAD)
    view = masker(SimpleNamespace(batch=batch), gen(0)).text
    selected = view.labels != IGNORE
    assert selected.any()
    assert torch.equal(view.labels[selected], ids[selected])
    assert (view.input_ids[special] == ids[special]).all()
    replaced = selected & (view.input_ids != MASK) & (view.input_ids != ids)
    assert (view.input_ids[replaced] >= tokens.first_regular).all()
    assert torch.equal(view.position_labels, view.labels.gather(1, view.positions))


# --- mlm_loss ----------------------------------------------------------------------------------

def test_mlm_loss_is_cross_entropy_over_labelled_entries_only():
    g = gen(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, 1:] = IGNORE
    labels[2, :3] = IGNORE
    valid = labels != IGNORE
    expected = F.cross_entropy(logits[valid], labels[valid])
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # and by hand: mean of -log softmax at the label, over labelled entries
    by_hand = []
    for b, t in valid.nonzero().tolist():
        row = logits[b, t].tolist()
        log_z = math.log(sum(math.exp(v) for v in row))
        by_hand.append(log_z - row[labels[b, t].item()])
    assert mlm_loss(logits, labels).item() == pytest.approx(sum(by_hand) / len(by_hand),
                                                            rel=1e-5)


def test_mlm_loss_is_zero_without_labels():
    logits = torch.randn(2, 4, 7, requires_grad=True)
    labels = torch.full((2, 4), IGNORE)
    loss = mlm_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_custom_replacement_split_and_its_validation():
    ids, special, word_ids = make_reports(256, 48, seed=6)
    masked, labels = mask_tokens(ids, special, word_ids, MASK, VOCAB, 0.3, gen(2),
                                 mask_prob=0.5, random_prob=0.5, random_low=FIRST_REGULAR)
    selected = labels != IGNORE
    n = selected.sum().item()
    as_mask = (selected & (masked == MASK)).sum().item() / n
    unchanged = (selected & (masked == ids)).sum().item() / n
    assert abs(as_mask - 0.5) < 0.03
    assert unchanged < 0.005  # only random draws that hit the original id (p = 1/4995)
    with pytest.raises(ValueError, match="at most 1"):
        MLMTokens.Params(mask_prob=0.95, random_prob=0.1)


def tied_model(write_recipe, head: str):
    from vlp.core.model import VLPModel
    from vlp.core.recipe import load_recipe
    from vlp.data.tokenize import TokenIds

    path = write_recipe(f"""
        _base_: tiny_base.yaml
        views: {{mlm: {{masker: mlm_tokens}}}}
        objectives: {{mlm: {{weight: 1.0, text_view: mlm, head: {head}}}}}
    """)
    return VLPModel(load_recipe(path), TokenIds(vocab_size=300, pad=0, unk=1, cls=2, sep=3,
                                                mask=4))


def test_mlm_head_tied_to_the_token_embeddings(write_recipe):
    model = tied_model(write_recipe, "tied")
    mlm, embedding = model.objectives["mlm"], model.text_encoder.token_embed.weight
    assert not any(p.shape == embedding.shape for p in mlm.parameters())  # no copy of its own
    features = torch.randn(2, 5, 32)
    by_hand = mlm.head.transform(features) @ embedding.T + mlm.head.bias
    got = mlm.logits(SimpleNamespace(model=model), features)
    torch.testing.assert_close(got, by_hand)
    got.sum().backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0  # trained through it


def test_mlm_head_from_the_text_encoder(write_recipe, monkeypatch):
    from vlp.core.errors import RecipeError
    from vlp.encoders.bert import BertEncoder

    with pytest.raises(RecipeError, match=r"objectives\.mlm\.head: .*no pretrained MLM head"):
        tied_model(write_recipe, "encoder")
    pretrained = torch.nn.Linear(32, 300)
    monkeypatch.setattr(BertEncoder, "pretrained_mlm_head", lambda self: pretrained)
    model = tied_model(write_recipe, "encoder")
    assert model.objectives["mlm"].head is pretrained  # registered (and trained) under MLM
    features = torch.randn(2, 5, 32)
    torch.testing.assert_close(
        model.objectives["mlm"].logits(SimpleNamespace(model=model), features),
        pretrained(features))
