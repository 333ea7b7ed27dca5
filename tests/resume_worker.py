"""Run under torchrun (2 CPU ranks, gloo): train a recipe straight, then split at step 3 and
resumed, each rank loading and collating its own share; the test compares the two runs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vlp.core.recipe import load_recipe
from vlp.core.trainer import train


def main(recipe_path: str, out: str) -> None:
    recipe = load_recipe(recipe_path)
    train(recipe, out=Path(out) / "straight", evaluate=None)
    train(recipe, out=Path(out) / "split", evaluate=None, stop_after=3)
    train(recipe, out=Path(out) / "split", resume="latest", evaluate=None)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
