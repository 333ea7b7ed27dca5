"""Similarity logits of ITC, GLA and ITM are computed in fp32 even under bf16 autocast."""

from __future__ import annotations

import torch

import vlp.objectives.gla as gla_module
import vlp.objectives.itc as itc_module
import vlp.objectives.itm as itm_module
from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import TokenIds, train_tokenizer


def test_similarity_logits_are_fp32_under_bf16_autocast(write_recipe, monkeypatch):
    seen: dict[str, list[torch.dtype]] = {"contrastive": [], "itm_sampling": []}
    real_ce, real_sample = itc_module.symmetric_cross_entropy, itm_module.sample_negatives

    def record_ce(logits_i2t, logits_t2i):
        seen["contrastive"] += [logits_i2t.dtype, logits_t2i.dtype]
        return real_ce(logits_i2t, logits_t2i)

    def record_sample(sim, *args, **kwargs):
        seen["itm_sampling"].append(sim.dtype)
        return real_sample(sim, *args, **kwargs)

    for module in (itc_module, gla_module):
        monkeypatch.setattr(module, "symmetric_cross_entropy", record_ce)
    monkeypatch.setattr(itm_module, "sample_negatives", record_sample)
    path = write_recipe("""
        _base_: tiny_base.yaml
        model: {fusion: {name: cross_attention, layers: 1, heads: 2}}
        objectives:
          itc: {weight: 1.0}
          gla: {weight: 1.0, local: filip}
          gla_gloria: {use: gla, weight: 1.0, local: gloria}
          itm: {weight: 1.0, negatives: hard}
    """)
    tokenizer = train_tokenizer(demo_reports(16), vocab_size=300)
    model = VLPModel(load_recipe(path), TokenIds.of(tokenizer))
    data = DemoDataset(4, image_size=32)
    batch = Collator(tokenizer, 48)([data[i] for i in range(4)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = model(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    # itc; gla global + local; gla_gloria global + local: 5 calls, 2 logits each
    assert seen["contrastive"] == [torch.float32] * 10
    assert seen["itm_sampling"] == [torch.float32] * 2


def test_fp32_logits_keep_differences_bf16_would_round_away():
    """The reason: near-equal cosines a temperature of 0.01 separates."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(1, 64, generator=g), dim=-1)
    close = torch.nn.functional.normalize(base + 0.02 * torch.randn(4, 64, generator=g), dim=-1)
    exact = (close.double() @ base.double().T).squeeze(1)
    fp32 = (close @ base.T).squeeze(1)
    bf16 = (close.bfloat16() @ base.bfloat16().T).squeeze(1).float()
    assert (fp32.double() - exact).abs().max() < 1e-6
    assert torch.equal(fp32.argsort(), exact.argsort())
    assert len(set(bf16.tolist())) < len(set(exact.tolist()))  # distinct cosines merged
