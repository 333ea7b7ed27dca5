"""trainer.threads' default against torch's own thread count, on a loaded machine.

    python -m bench.threads [--repeats 8] [--load N]

1. Other work on the machine: N busy processes (default: one per core) run while one training
   step of recipes/clip.yaml (batch 64) is timed with torch's own thread count and with vlp's
   default (chosen by vlp.core.threads once the load runs), interleaved in one process.
2. Two ranks on one node (two concurrent processes, as DDP without torchrun's OMP_NUM_THREADS)
   and no other load: each with torch's own count, then each with vlp's default; samples/s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time

import torch

from bench.common import model_and_batch, time_alternating
from vlp.core.optim import build_optimizer
from vlp.core.threads import available_cores, choose_threads
from vlp.core.trainer import step_generator


def torch_default_threads() -> int:
    """What torch picks in a fresh process with no OMP_NUM_THREADS."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, env=env, check=True)
    return int(out.stdout)


def _busy(stop) -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = (a @ a).tanh()


def _step_fn(recipe_file: str):
    recipe, model, batch = model_and_batch(recipe_file)
    opt = build_optimizer(model, recipe.spec.optim)
    cpu = torch.device("cpu")

    def step() -> None:
        loss, _, _ = model(batch, step_generator(cpu, 0, 0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, recipe.spec.trainer.batch_size


def _with_threads(fn, threads: int):
    def run() -> None:
        torch.set_num_threads(threads)
        fn()
    return run


def _rank(threads: int, steps: int, recipe_file: str, queue) -> None:
    torch.set_num_threads(threads)
    step, batch = _step_fn(recipe_file)
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    queue.put(steps * batch / (time.perf_counter() - start))


def two_ranks(threads: int, steps: int, recipe_file: str) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(threads, steps, recipe_file, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/clip.yaml", help="recipe whose step is timed")
    ap.add_argument("--repeats", type=int, default=8, help="interleaved repeats per candidate")
    ap.add_argument("--load", type=int, default=None, help="busy processes (default: cores)")
    ap.add_argument("--rank-steps", type=int, default=10, help="steps per rank in part 2")
    args = ap.parse_args()
    cores, own = available_cores(), torch_default_threads()
    os.environ.pop("OMP_NUM_THREADS", None)
    print(f"{cores} cores available; torch's own default: {own} threads")

    load = args.load if args.load is not None else cores
    stop = mp.get_context("spawn").Event()
    busy = [mp.get_context("spawn").Process(target=_busy, args=(stop,)) for _ in range(load)]
    for p in busy:
        p.start()
    try:
        time.sleep(1.0)  # let the load start
        loaded = choose_threads(None)
        print(f"vlp's default under this load: {loaded.describe()}")
        step, batch = _step_fn(args.recipe)
        candidates = {f"torch's own ({own})": own, f"vlp default ({loaded.threads})":
                      loaded.threads}
        times = time_alternating({k: _with_threads(step, t) for k, t in candidates.items()},
                                 args.repeats)
    finally:
        stop.set()
        for p in busy:
            p.join()
    base = times[f"torch's own ({own})"]
    print(f"\n1. one process, {load} busy processes beside it (batch {batch}):")
    for name, t in times.items():
        print(f"  threads {name:<18} {1e3 * t:8.1f} ms/step  {batch / t:6.1f} samples/s  "
              f"speed vs torch's own {base / t:.2f}x")

    os.environ["LOCAL_WORLD_SIZE"] = "2"
    share = choose_threads(None).threads
    os.environ.pop("LOCAL_WORLD_SIZE")
    rates: dict[str, list[float]] = {f"torch's own ({own} each)": [],
                                     f"vlp default ({share} each)": []}
    for _ in range(2):  # alternate, so drift in the machine's load hits both
        for name, threads in zip(rates, (own, share)):
            rates[name].append(two_ranks(threads, args.rank_steps, args.recipe))
    print("\n2. two ranks on this node, total samples/s (mean of 2 alternated runs):")
    ref = sum(rates[f"torch's own ({own} each)"]) / 2
    for name, values in rates.items():
        mean = sum(values) / len(values)
        print(f"  threads {name:<22} {mean:6.1f} samples/s  speed vs torch's own {mean / ref:.2f}x")


if __name__ == "__main__":
    main()
