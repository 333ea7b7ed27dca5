"""vlp's training step vs a hand-written single-function step: same modules, math and batch.

    python bench/step_overhead.py [--recipe recipes/clip.yaml] [--repeats 20]

Prints seconds per step for both and their ratio (target: at most 1.05 on CPU).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from bench.common import model_and_batch, time_alternating
from vlp.core.optim import build_optimizer
from vlp.core.trainer import step_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/clip.yaml")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    recipe, model, batch = model_and_batch(args.recipe)
    opt = build_optimizer(model, recipe.spec.optim)
    itc = model.objectives["itc"]
    cap = math.log(itc.params.max_logit_scale)
    clip = recipe.spec.trainer.grad_clip
    sums: dict[str, torch.Tensor] = {}
    cpu = torch.device("cpu")

    def vlp_step() -> None:
        """The trainer's step body: model forward through the feature cache, metrics on device."""
        loss, metrics, _ = model(batch, step_generator(cpu, 0, 0))
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for key, value in {"loss": loss.detach(), "grad_norm": grad_norm, **metrics}.items():
            sums[key] = sums.get(key, 0) + value

    def hand_step() -> None:
        """Everything spelled out in one function: encoders, pooling, projection, InfoNCE."""
        image = model.image_encoder(batch.image)
        image = image[:, model.image_encoder.num_prefix_tokens:].mean(1)
        text = model.text_encoder(batch.input_ids, batch.attention_mask)
        m = batch.attention_mask.unsqueeze(-1).float()
        text = (text * m).sum(1) / m.sum(1)
        image_emb = F.normalize(model.image_proj(image), dim=-1)
        text_emb = F.normalize(model.text_proj(text), dim=-1)
        scale = itc.temperature.log_scale.clamp(max=cap).exp()
        logits = scale * image_emb @ text_emb.T
        labels = torch.arange(logits.shape[0])
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    assert model.image_encoder.pool == "avg" and model.text_encoder.pool == "mean"
    t = time_alternating({"vlp": vlp_step, "hand-written": hand_step}, args.repeats)
    print(f"recipe {args.recipe}, batch {batch.image.shape[0]}, threads {torch.get_num_threads()}")
    for name, seconds in t.items():
        print(f"{name:>13}: {seconds * 1000:8.1f} ms/step (median of {args.repeats})")
    print(f"ratio vlp / hand-written: {t['vlp'] / t['hand-written']:.3f}")


if __name__ == "__main__":
    main()
