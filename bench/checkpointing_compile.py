"""Activation checkpointing and torch.compile against the eager step, in one run.

    python -m bench.checkpointing_compile [--recipe recipes/uni_mlip.yaml] [--repeats 5]
        [--no-compile]

Three copies of the same model (same weights, same batch): eager, `trainer.grad_checkpointing`
and `trainer.compile`. Prints ms/step, the bytes autograd keeps for backward (tensors saved
through saved-tensor hooks, measured on any device; checkpointed blocks also keep their input,
one (B, L, D) tensor each, which this count leaves out), peak CUDA memory when on a GPU, and
the ratios to eager.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch

from bench.common import model_and_batch, time_alternating
from vlp.core.speed import checkpoint_blocks, compile_encoders
from vlp.core.trainer import forward_backward


def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves for backward during `forward`."""
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/uni_mlip.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="recipe override")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    _, eager, batch = model_and_batch(args.recipe, args.set)
    eager.to(device)
    batch = batch.to(device)
    models = {"eager": eager, "checkpointing": copy.deepcopy(eager)}
    checkpoint_blocks(models["checkpointing"])
    if not args.no_compile:
        models["compile"] = copy.deepcopy(eager)
        compile_encoders(models["compile"])

    def step(model) -> Callable[[], None]:
        def run() -> None:
            forward_backward(model, batch, 0, 0, 1, args.precision)
            model.zero_grad(set_to_none=True)
        return run

    def forward_only(model) -> Callable[[], torch.Tensor]:
        return lambda: model(batch, torch.Generator(device).manual_seed(0))[0]

    memory = {name: saved_bytes(forward_only(m)) for name, m in models.items()}
    peaks = {}
    t = time_alternating({name: step(m) for name, m in models.items()}, args.repeats)
    if device.type == "cuda":
        for name, model in models.items():
            torch.cuda.reset_peak_memory_stats(device)
            step(model)()
            peaks[name] = torch.cuda.max_memory_allocated(device)
    print(f"recipe {args.recipe}, batch {len(batch)}, device {device}, threads "
          f"{torch.get_num_threads()}")
    for name, seconds in t.items():
        peak = f", peak {peaks[name] / 2 ** 20:.0f} MiB" if name in peaks else ""
        print(f"{name:>13}: {seconds * 1000:8.1f} ms/step, saved for backward "
              f"{memory[name] / 2 ** 20:7.1f} MiB{peak}")
    for name in models:
        if name != "eager":
            extra = (f", peak memory {peaks[name] / peaks['eager']:.3f}" if peaks else "")
            print(f"ratio {name} / eager: time {t[name] / t['eager']:.3f}, saved memory "
                  f"{memory[name] / memory['eager']:.3f}{extra}")


if __name__ == "__main__":
    main()
