"""Encoders: visible-patch encoding vs timm's masked-attention forward; padding; tokenizer."""

from __future__ import annotations

import torch

from vlp.data.demo import demo_reports
from vlp.data.tokenize import TokenIds, load_tokenizer, train_tokenizer
from vlp.encoders.bert import BertEncoder
from vlp.encoders.timm_vit import TimmViT
from vlp.maskers.patches import random_patch_mask


def tiny_vit(**kw) -> TimmViT:
    params = TimmViT.Params(arch="vit_tiny_patch16_224", patch_size=8, embed_dim=32, depth=2,
                            num_heads=2, **kw)
    torch.manual_seed(0)
    return TimmViT(params, image_size=32, in_chans=1).eval()


def test_all_patches_kept_equals_forward_features():
    vit = tiny_vit()
    x = torch.rand(3, 1, 32, 32)
    every = torch.arange(vit.num_patches).expand(3, -1)
    torch.testing.assert_close(vit(x, every), vit.vit.forward_features(x))


def test_visible_patches_equal_attention_masked_full_forward():
    """Encoding only kept patches == full forward where nobody may attend to masked patches."""
    vit = tiny_vit()
    x = torch.rand(2, 1, 32, 32)
    ids_keep, mask = random_patch_mask(2, vit.num_patches, 0.5, torch.Generator().manual_seed(1),
                                       x.device)
    p = vit.num_prefix_tokens
    key_ok = torch.cat([torch.ones(2, p, dtype=torch.bool), ~mask], dim=1)  # (B, P + N)
    attn_mask = key_ok[:, None, None, :]
    full = vit.vit.forward_features(x, attn_mask=attn_mask)
    kept_rows = torch.cat([full[:, :p], full[:, p:].gather(
        1, ids_keep[..., None].expand(-1, -1, full.shape[-1]))], dim=1)
    torch.testing.assert_close(vit(x, ids_keep), kept_rows, atol=1e-5, rtol=1e-4)
    assert vit(x, ids_keep).shape[1] == p + ids_keep.shape[1]


def test_rgb_input_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    vit = tiny_vit()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in vit.vit.state_dict().items()}, str(path))
    loaded = tiny_vit(weights=str(path), pretrained=True)
    x = torch.rand(1, 1, 32, 32)  # loaded weights bring their normalisation (timm's 0.5/0.5)
    torch.testing.assert_close(loaded(x), vit.vit.forward_features((x - 0.5) / 0.5))
    rgb = TimmViT(TimmViT.Params(arch="vit_tiny_patch16_224", patch_size=8, embed_dim=32,
                                 depth=1, num_heads=2), image_size=32, in_chans=3)
    assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 1 + 16, 32)


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = BertEncoder(BertEncoder.Params(layers=2, width=32, heads=2), vocab_size=50, pad_id=0,
                      max_len=16).eval()
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    padded = torch.tensor([[2, 7, 9, 11, 3, 0, 0, 0]])
    out = enc(ids, torch.ones_like(ids, dtype=torch.bool))
    out_padded = enc(padded, padded != 0)
    torch.testing.assert_close(out_padded[:, :5], out, atol=1e-5, rtol=1e-4)


def test_tokenizer_round_trips_and_frames_reports(tmp_path):
    texts = demo_reports(300)
    a = train_tokenizer(texts, vocab_size=400)
    a.save(str(tmp_path / "tok.json"))
    b = load_tokenizer(tmp_path / "tok.json")
    assert [b.encode(t).ids for t in texts[:20]] == [a.encode(t).ids for t in texts[:20]]
    ids = TokenIds.of(a)
    enc = a.encode("Left pleural effusion.")
    assert enc.ids[0] == ids.cls and enc.ids[-1] == ids.sep
    assert enc.word_ids[0] is None and enc.word_ids[-1] is None
    assert ids.first_regular == 5
