"""Run under torchrun (2 CPU ranks, gloo): train a recipe straight, then interrupted and resumed."""

from __future__ import annotations

import sys
from pathlib import Path

from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.eval.evaluate import retrieval_of_run


def main(recipe_path: Path, out: Path) -> None:
    recipe = load_recipe(recipe_path)
    train(recipe, out=out / "straight")
    train(recipe, out=out / "split", stop_after=2)
    train(recipe, out=out / "split", resume="latest", evaluate=retrieval_of_run)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
