"""Atomic checkpoints without pickle: safetensors weights, training state for weights_only load.

A checkpoint is a folder `checkpoints/step_XXXXXXX/` written under a temporary name and renamed
into place, so a crash never leaves a half-written checkpoint; `latest` is updated after it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Torch RNG states as tensors (NumPy state would need pickle)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write weights + state for `step`, point `latest` at it, keep the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"step": step, **state}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", final.name)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """`latest`, a step folder name, or a path to a checkpoint folder."""
    if which != "latest":
        path = Path(which)
        return path if path.is_dir() else Path(run_dir) / "checkpoints" / which
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {run_dir} (no checkpoints/latest)")
    return pointer.parent / pointer.read_text().strip()


def load_weights(model: nn.Module, ckpt: Path) -> None:
    missing, unexpected = load_model(model, str(Path(ckpt) / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match the model: missing {missing}, "
                           f"unexpected {unexpected}")


def load_state(ckpt: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(ckpt) / "state.pt", map_location=map_location, weights_only=True)


def write_json(path: Path, data: Any) -> None:
    _write_text_atomic(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")
