"""Run under torchrun (2 CPU ranks, gloo), each rank loading and collating its own share:

- `slow RECIPE OUT`: train OUT/run with a pause in every step (for the test to send SIGTERM);
- `resume RECIPE OUT`: resume OUT/run from its latest checkpoint, then train OUT/straight.
The test compares the runs' metrics.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import vlp.core.trainer as trainer_module
from vlp.core.errors import Interrupted
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train


def slow_steps() -> None:
    real = trainer_module.step_generator

    def slow(*args):
        time.sleep(0.5)  # the numbers are unchanged
        return real(*args)
    trainer_module.step_generator = slow


def main(mode: str, recipe_path: str, out: str) -> int:
    recipe, out_dir = load_recipe(recipe_path), Path(out)
    code = 0
    if mode == "slow":
        slow_steps()
        try:
            train(recipe, out=out_dir / "run", evaluate=None)
        except Interrupted as exc:
            print(f"{exc}", file=sys.stderr)
            code = exc.exit_code
    else:
        train(recipe, out=out_dir / "run", resume="latest", evaluate=None)
        train(recipe, out=out_dir / "straight", evaluate=None)
    torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
