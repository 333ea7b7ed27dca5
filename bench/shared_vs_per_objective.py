"""One step with the shared feature cache vs one full forward pass per objective (the M3AE way).

    python bench/shared_vs_per_objective.py [--recipe recipes/mpma.yaml] [--repeats 10]

Same modules, same batch, same objectives and weights; the only difference is that the
per-objective variant gives each objective a fresh step cache, so every objective re-runs the
encoders and fusion it reads. Prints ms/step, encoder passes and the ratio.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from bench.common import model_and_batch, time_alternating
from vlp.core.step import Step
from vlp.core.trainer import step_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/mpma.yaml")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    _, model, batch = model_and_batch(args.recipe)
    cpu = torch.device("cpu")
    passes: dict[str, Counter] = {"shared": Counter(), "per-objective": Counter()}

    def shared() -> None:
        loss, _, counts = model(batch, step_generator(cpu, 0, 0))
        loss.backward()
        model.zero_grad(set_to_none=True)
        passes["shared"] = Counter(counts)

    def per_objective() -> None:
        total, counts = 0.0, Counter()
        for name, objective in model.objectives.items():
            step = Step(model, batch, step_generator(cpu, 0, 0))  # nothing shared
            total = total + model.weights[name] * objective(step).loss
            counts.update(step.pass_counts())
        total.backward()
        model.zero_grad(set_to_none=True)
        passes["per-objective"] = counts

    t = time_alternating({"shared": shared, "per-objective": per_objective}, args.repeats)
    print(f"recipe {args.recipe}, batch {batch.image.shape[0]}, objectives "
          f"{', '.join(model.objectives)}")
    for name, seconds in t.items():
        c = passes[name]
        print(f"{name:>14}: {seconds * 1000:8.1f} ms/step; passes: image encoder "
              f"{c['passes/image_encoder']}, text encoder {c['passes/text_encoder']}, "
              f"fusion {c['passes/fusion']}")
    print(f"ratio per-objective / shared: {t['per-objective'] / t['shared']:.2f}")


if __name__ == "__main__":
    main()
