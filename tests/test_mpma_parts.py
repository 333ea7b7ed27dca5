"""MPMA parts: MIM loss and decoder, memory fusion, GLA local alignment, paired masking, mixing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlp.core.errors import RecipeError
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.encoders.memory_fusion import MemoryFusion, topk_attention
from vlp.objectives.gla import filip_scores, gloria_scores
from vlp.objectives.mim import mim_loss, unshuffle

REPO = Path(__file__).parent.parent


# MIM ----------------------------------------------------------------------------------------
def test_mim_loss_matches_hand_computation():
    pred = torch.tensor([[[1.0, 0.0, -1.0, 0.0], [5.0, 5.0, 5.0, 5.0]]])
    target = torch.tensor([[[1.0, 2.0, 3.0, 2.0], [9.0, 9.0, 9.0, 9.0]]])
    mask = torch.tensor([[True, False]])  # only the first patch was hidden
    # first patch: mean 2, unbiased var = (1 + 0 + 1 + 0) / 3 -> normalised [-s, 0, s, 0]
    s = 1 / math.sqrt(2 / 3 + 1e-6)
    expected = ((1 + s) ** 2 + 0 + (-1 - s) ** 2 + 0) / 4
    assert mim_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(expected, rel=1e-5)
    raw = ((1 - 1) ** 2 + (0 - 2) ** 2 + (-1 - 3) ** 2 + (0 - 2) ** 2) / 4
    assert mim_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(raw)


def test_unmasked_patches_get_no_gradient():
    pred = torch.randn(2, 6, 12, requires_grad=True)
    mask = torch.tensor([[True, False, True, False, False, True]] * 2)
    mim_loss(pred, torch.randn(2, 6, 12), mask).backward()
    assert pred.grad[~mask].abs().sum() == 0
    assert (pred.grad[mask].abs().sum(-1) > 0).all()


def test_unshuffle_places_kept_tokens_and_mask_tokens():
    kept = torch.arange(2 * 2 * 3, dtype=torch.float).view(2, 2, 3)
    ids_keep = torch.tensor([[1, 3], [0, 2]])
    token = torch.full((1, 1, 3), -1.0)
    full = unshuffle(kept, ids_keep, 4, token)
    assert full.shape == (2, 4, 3)
    assert torch.equal(full[0, 1], kept[0, 0]) and torch.equal(full[0, 3], kept[0, 1])
    assert torch.equal(full[0, 0], token[0, 0]) and torch.equal(full[1, 3], token[0, 0])


def test_mim_decoder_sees_prefix_plus_every_patch(write_recipe, monkeypatch):
    from vlp.encoders.layers import Block

    seen = []
    real = Block.forward

    def spy(self, x, *args, **kwargs):
        seen.append(x.shape[1])
        return real(self, x, *args, **kwargs)

    path = write_recipe("""
        _base_: tiny_base.yaml
        views: {masked: {masker: random_patches, ratio: 0.75}}
        objectives: {mim: {weight: 1.0, image_view: masked, decoder_width: 16, decoder_heads: 2,
                           decoder_depth: 1}}
        trainer: {max_steps: 1}
    """)
    monkeypatch.setattr(Block, "forward", spy)
    result = train(load_recipe(path), out=path.parent / "run")
    # [CLS] + all 16 patches (4 kept + 12 mask tokens) of a 32 px image, in the training step
    # and, before it, in the check for untrained parameters and in the FLOP count
    assert seen == [1 + 16] * 3
    assert result.last_metrics["passes/image_encoder/masked"] == 1


# memory fusion ------------------------------------------------------------------------------
def test_topk_equals_dense_attention_when_k_is_all_slots():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g), torch.randn(2, 7, 4, generator=g),
               torch.randn(2, 7, 4, generator=g))
    dense = torch.softmax(torch.einsum("bhld,hsd->bhls", q, k) / 2.0, -1) @ v[None]
    torch.testing.assert_close(topk_attention(q, k, v, 7), dense)
    # with k = 1 each query returns exactly its best slot's value
    best = torch.einsum("bhld,hsd->bhls", q, k).argmax(-1)
    one = topk_attention(q, k, v, 1)
    expected = torch.stack([v[h][best[:, h]] for h in range(2)], dim=1)
    torch.testing.assert_close(one, expected)


def test_memory_fusion_gradients_reach_memory():
    params = MemoryFusion.Params(layers=1, heads=2, slots=16, topk=4, memory_heads=2)
    fusion = MemoryFusion(params, image_width=8, text_width=8)
    out = fusion(torch.randn(2, 5, 8), torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    (out.text.sum() + out.image.sum()).backward()
    assert fusion.memory.grad is not None and fusion.memory.grad.abs().sum() > 0
    assert out.text.shape == (2, 3, 8) and out.image.shape == (2, 5, 8)


def test_both_modalities_read_one_shared_multi_head_memory():
    """R2GenCMN: report tokens query the same memory, through the same attention, as image
    tokens; only the text side's response changes the report stream."""
    torch.manual_seed(0)
    params = MemoryFusion.Params(layers=1, heads=2, slots=16, topk=4, memory_heads=2,
                                 memory_reads="both")
    fusion = MemoryFusion(params, image_width=8, text_width=8)
    image, text = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = fusion(image, text, mask)
    by_hand = fusion.fuse(image + fusion.read_memory(image), text + fusion.read_memory(text),
                          mask)
    torch.testing.assert_close(out.text, by_hand.text)
    image_only = MemoryFusion(params.model_copy(update={"memory_reads": "image"}), 8, 8)
    image_only.load_state_dict(fusion.state_dict())  # same weights, one memory either way
    plain = image_only(image, text, mask)
    assert not torch.allclose(plain.text, out.text)
    torch.testing.assert_close(plain.text, fusion.fuse(image + fusion.read_memory(image), text,
                                                       mask).text)
    # the report's read alone trains the memory
    fusion.zero_grad()
    fusion.read_memory(text).sum().backward()
    assert fusion.memory.grad.abs().sum() > 0


def test_memory_topk_larger_than_slots_is_rejected(write_recipe):
    path = write_recipe("""
        _base_: tiny_base.yaml
        model: {fusion: {name: memory_cross_attention, slots: 8, topk: 16}}
        objectives: {itc: {weight: 1.0}}
    """)
    with pytest.raises(RecipeError, match="model.fusion: Value error, topk 16 exceeds slots 8"):
        load_recipe(path)


# GLA ----------------------------------------------------------------------------------------
def planted(n: int = 4, words: int = 3, patches: int = 5, dim: int = 16):
    """Each report's words equal some patches of its own image (orthonormal vectors)."""
    basis = torch.eye(n * patches, dim) if n * patches <= dim else torch.linalg.qr(
        torch.randn(dim, n * patches))[0].T
    patch = basis.view(n, patches, dim)
    word = patch[:, :words].clone()
    return F.normalize(word, dim=-1), F.normalize(patch, dim=-1)


@pytest.mark.parametrize("kind", ["filip", "gloria"])
def test_matching_words_score_higher_than_shuffled(kind):
    torch.manual_seed(0)
    words, patches = planted(n=4, words=3, patches=5, dim=32)
    mask = torch.ones(4, 3, dtype=torch.bool)
    if kind == "filip":
        scores, t2i = filip_scores(words, mask, patches)
        assert torch.allclose(t2i.diagonal(), torch.ones(4))  # each word finds its patch
    else:
        scores = gloria_scores(words, mask, patches, attn_temperature=20.0)
    diag = scores.diagonal()
    off = scores[~torch.eye(4, dtype=torch.bool)].view(4, 3)
    assert (diag[:, None] > off + 0.1).all()


@pytest.mark.parametrize("kind", ["filip", "gloria"])
def test_padding_never_contributes(kind):
    torch.manual_seed(0)
    words, patches = F.normalize(torch.randn(3, 6, 8), dim=-1), F.normalize(
        torch.randn(3, 5, 8), dim=-1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]).bool()
    noisy = words.clone()
    noisy[~mask] = F.normalize(torch.randn(int((~mask).sum()), 8), dim=-1)

    def score(w):
        return torch.cat(filip_scores(w, mask, patches), 1) if kind == "filip" else \
            gloria_scores(w, mask, patches)
    torch.testing.assert_close(score(words), score(noisy))
    # and a direct check of FILIP's text->image score for report 0, image 1
    if kind == "filip":
        best = (words[0, :3] @ patches[1].T).max(-1).values.mean()
        assert filip_scores(words, mask, patches)[1][0, 1].item() == pytest.approx(best.item())


# paired masking and mixing recipes ------------------------------------------------------------
def test_paired_masker_validates_its_parts(write_recipe):
    path = write_recipe("""
        _base_: tiny_base.yaml
        views: {pair: {masker: paired, image: {masker: random_patches, ratio: 1.5}}}
        objectives: {itc: {weight: 1.0}}
    """)
    with pytest.raises(RecipeError,
                       match=r"views.pair: Value error, image.ratio: Input should be less than 1"):
        load_recipe(path)


def test_uni_mlip_plus_mim_through_paired_masker_trains(tmp_path):
    """Parts of both recipes mixed in YAML alone: Uni-Mlip's objectives plus paired MIM."""
    (tmp_path / "mixed.yaml").write_text(f"""
_base_: {REPO / 'recipes' / 'uni_mlip.yaml'}
data: {{train_size: 32, val_size: 16, image_size: 32, max_text_len: 48}}
model:
  image_encoder: {{embed_dim: 32, depth: 1}}
  text_encoder: {{width: 32, layers: 1}}
  fusion: {{layers: 1}}
views:
  masked_pair: {{masker: paired, image: {{masker: block_patches, ratio: 0.5}}}}
objectives:
  simsiam: {{dim: 32, pred_dim: 8}}
  mim: {{weight: 1.0, image_view: masked_pair, source: fusion, text_view: masked_pair,
         decoder_width: 16, decoder_heads: 2, decoder_depth: 1}}
  mlm_pair: {{use: mlm, weight: 1.0, text_view: masked_pair, image_view: masked_pair,
              fused: true}}
trainer: {{max_steps: 2, batch_size: 8, log_every: 1}}
""")
    result = train(load_recipe(tmp_path / "mixed.yaml"), out=tmp_path / "run")
    m = result.last_metrics
    for name in ("itc", "itc_masked", "mlm", "simsiam", "itm", "mlm_fused", "mim", "mlm_pair"):
        assert math.isfinite(m[f"loss/{name}"])
    assert m["passes/fusion/masked_pair+masked_pair"] == 1  # MIM and paired MLM share it
    assert m["passes/image_encoder/masked_pair"] == 1


def test_mpma_recipe_pass_counts(tmp_path):
    (tmp_path / "mpma_small.yaml").write_text(f"""
_base_: {REPO / 'recipes' / 'mpma.yaml'}
data: {{train_size: 32, val_size: 16, image_size: 32, max_text_len: 48}}
model:
  image_encoder: {{embed_dim: 32, depth: 1}}
  text_encoder: {{width: 32, layers: 1}}
  fusion: {{layers: 1, slots: 64, topk: 8}}
trainer: {{max_steps: 1, batch_size: 8}}
""")
    recipe = load_recipe(tmp_path / "mpma_small.yaml")
    m = train(recipe, out=tmp_path / "run").last_metrics
    assert m["passes/image_encoder/masked_pair"] == m["passes/text_encoder/masked_pair"] == 1
    assert m["passes/fusion/masked_pair+masked_pair"] == 1  # one pass feeds MIM and MLM
    assert m["passes/image_encoder/image"] == m["passes/text_encoder/text"] == 1  # GLA + ITM
    less = load_recipe(tmp_path / "mpma_small.yaml", ["objectives.gla.weight=0",
                                                      "objectives.itm.weight=0"])
    m = train(less, out=tmp_path / "run2").last_metrics
    assert "passes/image_encoder/image" not in m and "passes/text_encoder/text" not in m
