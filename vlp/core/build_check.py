"""The recipe check that builds the model on the meta device: every size that does not fit is
found before anything is allocated, and the parameter count gives a memory estimate."""

from __future__ import annotations

import os
import warnings

import torch

from vlp.core.errors import Problem, RecipeError
from vlp.core.recipe import Recipe
from vlp.data.tokenize import SPECIAL_TOKENS, TokenIds, load_tokenizer

BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW's two moments


def _tokens(recipe: Recipe) -> TokenIds:
    """The recipe's tokenizer file's ids, or those a trained one would have (specials first)."""
    text = recipe.text_encoder
    own = text.cls.pretrained_tokenizer(text.params)  # a pretrained folder's, if it has one
    if own is not None:
        return TokenIds.of(*own)
    spec = recipe.spec.model.tokenizer
    if spec.path is None:
        return TokenIds(spec.vocab_size, *range(len(SPECIAL_TOKENS)))
    try:
        return TokenIds.of(load_tokenizer(spec.path))
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise RecipeError([Problem(recipe.where("model.tokenizer.path"), "model.tokenizer.path",
                                   f"cannot load tokenizer {spec.path}: {exc}")]) from None


def device_memory(device: str) -> tuple[str, int] | None:
    """(what, bytes) of memory the recipe's device has, or None if unknown."""
    on_cuda = device.startswith("cuda") or device == "auto"
    if on_cuda and torch.cuda.is_available():  # the device check already refused other CUDA
        index = torch.device(device).index if device.startswith("cuda:") else 0
        return f"GPU {index}", torch.cuda.get_device_properties(index).total_memory
    try:
        return "host", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_build(recipe: Recipe) -> None:
    """Build the whole model under `torch.device("meta")`; size errors and a model whose
    weights, gradients and optimiser state exceed the device's memory are RecipeErrors."""
    from vlp.core.model import VLPModel

    tokens = _tokens(recipe)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading real weights into meta tensors is a no-op
        model = VLPModel(recipe, tokens)
    parts = {"model.image_encoder": model.image_encoder, "model.text_encoder": model.text_encoder,
             "model.fusion": model.fusion,
             **{recipe.objectives[n].key: m for n, m in model.objectives.items()}}
    sizes = {key: sum(p.numel() for p in m.parameters()) for key, m in parts.items()
             if m is not None}
    total = sum(p.numel() for p in model.parameters())
    memory = device_memory(recipe.spec.trainer.device)
    if memory is not None and total * BYTES_PER_PARAM > memory[1]:
        largest = max(sizes, key=sizes.get)
        raise RecipeError([Problem(recipe.where(largest), largest,
                                   f"the model would not fit in memory: {total / 1e9:.2f} G "
                                   f"parameters ({sizes[largest] / 1e9:.2f} G here) need about "
                                   f"{_gb(total * BYTES_PER_PARAM)} for weights, gradients and "
                                   f"AdamW state; this machine's {memory[0]} memory is "
                                   f"{_gb(memory[1])}")])
