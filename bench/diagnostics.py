"""The price of one gradient-diagnostics step next to one training step.

    python -m bench.diagnostics [--recipe recipes/uni_mlip.yaml] [--repeats 5]

Same model and batch: a training step (forward, backward, optimiser step) against the
diagnostic (one forward, then one backward per objective into the shared parts, the Gram
matrices and the one host sync). Prints ms and the ratio; it is paid only every
`trainer.diagnostics_every` steps.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from bench.common import model_and_batch, time_alternating
from vlp.core.diagnostics import gradient_diagnostics
from vlp.core.optim import build_optimizer
from vlp.core.trainer import diagnostic_step, forward_backward


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/uni_mlip.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], help="recipe override")
    args = ap.parse_args(argv)
    recipe, model, batch = model_and_batch(args.recipe, args.set)
    opt = build_optimizer(model, recipe.spec.optim)

    def train_step() -> None:
        forward_backward(model, batch, 0, 0, 1, "fp32")
        opt.step()
        opt.zero_grad(set_to_none=True)

    def diagnose() -> None:
        gradient_diagnostics(model, diagnostic_step(model, batch, 0, 0, 1),
                             contextlib.nullcontext(), 0)

    t = time_alternating({"training step": train_step, "diagnostic": diagnose}, args.repeats)
    print(f"recipe {args.recipe}, batch {len(batch)}, {len(model.objectives)} objectives, "
          f"threads {torch.get_num_threads()}")
    for name, seconds in t.items():
        print(f"{name:>14}: {seconds * 1000:8.1f} ms (median of {args.repeats})")
    print(f"diagnostic / training step: {t['diagnostic'] / t['training step']:.3f}")


if __name__ == "__main__":
    main()
