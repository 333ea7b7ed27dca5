"""The price of exact gradient accumulation: k micro-batches vs the whole batch in one pass.

    python -m bench.accumulation [--recipe recipes/clip.yaml] [--ks 2,4] [--repeats 7]

Same model, batch and optimiser; the k-step variant runs the feature-caching two-pass step
(vlp.core.accumulate), whose gradient equals the whole batch's. Prints ms/step and each
ratio to the whole batch (target: at most 1.4; the second encoder forward is the price).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from bench.common import model_and_batch, time_alternating
from vlp.core.optim import build_optimizer
from vlp.core.trainer import forward_backward


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/clip.yaml")
    ap.add_argument("--ks", default="2,4")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--set", action="append", default=[], help="recipe override")
    args = ap.parse_args(argv)
    recipe, model, batch = model_and_batch(args.recipe, args.set)
    opt = build_optimizer(model, recipe.spec.optim)

    def step(k: int) -> Callable[[], None]:
        def run() -> None:
            forward_backward(model, batch, 0, 0, k, "fp32")
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    ks = [int(k) for k in args.ks.split(",")]
    candidates = {"whole batch": step(1), **{f"k={k}": step(k) for k in ks}}
    t = time_alternating(candidates, args.repeats)
    print(f"recipe {args.recipe}, batch {len(batch)}, threads {torch.get_num_threads()}")
    for name, seconds in t.items():
        print(f"{name:>12}: {seconds * 1000:8.1f} ms/step (median of {args.repeats})")
    print("ratio to the whole batch: " + ", ".join(
        f"k={k} {t[f'k={k}'] / t['whole batch']:.3f}" for k in ks))


if __name__ == "__main__":
    main()
