"""Atomic checkpoints without pickle: safetensors weights, training state for weights_only load.

A checkpoint is a folder `checkpoints/step_XXXXXXX/` written under a temporary name and renamed
into place, so a crash never leaves a half-written checkpoint; `latest` is updated after it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from vlp.core.errors import CheckpointError
from vlp.files import fsync_file, write_text_atomic


def rng_state() -> dict[str, Any]:
    """Every random stream a step may draw from, as tensors and plain numbers (no pickle):
    torch CPU and each CUDA device, Python's `random`, NumPy's global generator."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "cpu": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (tensors may come back on any device)."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if "numpy" in state:
        npy = state["numpy"]
        np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32),
                             npy["pos"], npy["has_gauss"], npy["gauss"]))


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (e.g. a full disk); the previous one is intact."""


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write weights + state for `step`, point `latest` at it, keep the `keep` newest writes.

    A failed write (a full disk) removes the partial folder, leaves `latest` and every earlier
    checkpoint as they were, and raises CheckpointWriteError saying so.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"step": step, **state}, tmp / "state.pt")
        for f in tmp.iterdir():
            fsync_file(f)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        pointer = root / "latest"
        kept = (f"the previous checkpoint {pointer.read_text().strip()} is intact"
                if pointer.is_file() else "no earlier checkpoint exists")
        raise CheckpointWriteError(f"could not write the checkpoint of step {step} in {root}: "
                                   f"{exc.strerror or exc}; {kept}") from None
    if final.exists():  # re-saving a step: swap, so a complete folder is always in place
        old = root / f".old_step_{step:07d}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    try:
        write_text_atomic(root / "latest", final.name)
    except OSError as exc:  # the new folder is complete; `latest` still names the previous one
        raise CheckpointWriteError(f"checkpoint {final} was written but {root / 'latest'} could "
                                   f"not be updated: {exc.strerror or exc}; it still names the "
                                   "previous checkpoint") from None
    by_age = sorted(root.glob("step_*"), key=lambda p: p.stat().st_mtime_ns)
    for stale in [p for p in by_age if p != final][: max(0, len(by_age) - keep)]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


BEST = "best"  # checkpoints/best/: weights of the best held-out score, never pruned


def save_best(run_dir: Path, step: int, model: nn.Module, info: dict[str, Any]) -> Path:
    """Write weights and `best.json` to checkpoints/best/, swapped in whole."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp, old = root / BEST, root / f".tmp_{BEST}", root / f".old_{BEST}"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "best.json").write_text(json.dumps({**info, "step": step}, indent=2) + "\n")
    for f in tmp.iterdir():
        fsync_file(f)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """`latest`, `best`, a step folder name, or a path to a checkpoint folder."""
    if which != "latest":
        path = Path(which)
        path = path if path.is_dir() else Path(run_dir) / "checkpoints" / which
        if not (path / "model.safetensors").is_file():
            raise CheckpointError(f"no checkpoint at {path}")
        return path
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint to resume in {run_dir} (no checkpoints/latest)")
    return pointer.parent / pointer.read_text().strip()


def load_weights(model: nn.Module, ckpt: Path) -> None:
    """Load safetensors weights; a checkpoint of another model is a CheckpointError."""
    try:
        missing, unexpected = load_model(model, str(Path(ckpt) / "model.safetensors"),
                                         strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"checkpoint {ckpt} does not fit this recipe's model: "
                              f"{str(exc).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt} does not fit this recipe's model: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def load_state(ckpt: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(ckpt) / "state.pt", map_location=map_location, weights_only=True)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")
