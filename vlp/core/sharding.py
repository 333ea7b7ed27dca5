"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for models past one GPU: `trainer.parallel: fsdp`.

Parameters, gradients and optimiser state are sharded over the ranks. Each transformer block of
the encoders and the fusion is its own unit (gathered just before it runs, freed after), then
each encoder and the fusion, then the whole model (projections and objective heads).
Checkpoints are full: every rank takes part in gathering the weights and the optimiser state,
rank 0 writes them in the usual format (safetensors + a weights-only state file), so a run
trained sharded evaluates, resumes and loads like any other (optimiser state keyed by
parameter name, so it resumes under FSDP only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

from vlp.core.speed import PARTS, transformer_blocks

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module) -> nn.Module:
    """fully_shard blocks, then encoders and fusion, then the root (in place); `losses` (the
    accumulated step's entry) gathers like `forward`. Scalar parameters (temperatures) stay
    replicated: `all_reduce_gradients` averages their gradients."""
    for tensor in model.state_dict().values():  # every rank starts from rank 0's weights (DDP)
        torch.distributed.broadcast(tensor, src=0)
    for part in PARTS:
        module = getattr(model, part, None)
        if module is None:
            continue
        for block in transformer_blocks(module):
            fully_shard(block)
        fully_shard(module)
    scalars = {p for p in model.parameters() if p.ndim == 0}  # FSDP2 shards along dim 0
    fully_shard(model, ignored_params=scalars or None)
    register_fsdp_forward_method(model, "losses")
    return model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full weights and optimiser state on the CPU (a collective: call on every rank)."""
    return (get_model_state_dict(model, options=FULL),
            get_optimizer_state_dict(model, optimizer, options=FULL))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, ckpt: Path,
                    optimizer_state: dict[str, Any]) -> None:
    """Load a full checkpoint into the sharded model and optimiser (every rank reads it)."""
    weights = load_file(str(Path(ckpt) / "model.safetensors"))
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, optimizer_state,
                             options=StateDictOptions(full_state_dict=True))
