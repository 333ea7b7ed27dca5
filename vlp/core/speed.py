"""Trading compute for memory and compiling: options applied to a built model from outside.

`checkpoint_blocks` recomputes each transformer block's activations in backward instead of
storing them (torch.utils.checkpoint, non-reentrant); `compile_encoders` hands the encoders and
the fusion to torch.compile. Both act in place on the modules, so parameter names, checkpoints
and the optimiser are unchanged, and neither changes what is computed.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

#: the model parts that hold transformer blocks (objective heads are small and stay as they are)
PARTS = ("image_encoder", "text_encoder", "fusion")


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Every element of a ModuleList or Sequential whose attribute name ends in 'blocks'
    (timm's `blocks`, vlp's `blocks`, `text_blocks`, `image_blocks`)."""
    found = []
    for name, sub in module.named_modules():
        if name.rsplit(".", 1)[-1].endswith("blocks") and isinstance(
                sub, (nn.ModuleList, nn.Sequential)):
            found.extend(sub)
    return found


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def checkpoint_blocks(model: nn.Module) -> int:
    """Activation checkpointing of every block of the encoders and the fusion; returns how many
    blocks now recompute. Random ops (dropout) replay the same draws in the recomputation."""
    count = 0
    for part in PARTS:
        module = getattr(model, part, None)
        for block in transformer_blocks(module) if module is not None else []:
            if not getattr(block, "_vlp_checkpointed", False):
                block.forward = _checkpointed(block.forward)
                block._vlp_checkpointed = True
                count += 1
    return count


def compile_encoders(model: nn.Module, **options) -> list[str]:
    """torch.compile the encoders and the fusion in place (`nn.Module.compile`: parameter names
    unchanged); returns the parts compiled. Objective heads stay eager."""
    compiled = []
    for part in PARTS:
        module = getattr(model, part, None)
        if module is not None:
            module.compile(**options)
            compiled.append(part)
    return compiled
