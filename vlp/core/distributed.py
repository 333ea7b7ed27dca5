"""Collectives that degrade to the identity without a process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each rank's gradient of the gathered tensor and returns
    this rank's rows. (torch.distributed.nn.functional.all_gather gave wrong gradients on gloo
    when the incoming gradient was not contiguous, e.g. from an einsum.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        rows = grad.shape[0] // dist.get_world_size()
        if dist.get_backend() == dist.Backend.NCCL:
            mine = grad.new_empty(rows, *grad.shape[1:])
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        dist.all_reduce(grad)  # gloo has no reduce-scatter
        return grad[dist.get_rank() * rows:(dist.get_rank() + 1) * rows]


def pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 1 (tokens) of `x` with zeros (False for masks) up to `length`."""
    missing = length - x.shape[1]
    if missing < 0:
        raise ValueError(f"{x.shape[1]} tokens exceed the padding length {length}")
    if missing == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], missing, *x.shape[2:])], dim=1)


def gather_with_grad(x: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0; gradients flow back to each rank's part.

    Token tensors (B, T, ...) whose T differs by rank (each rank pads its own batch to its
    longest report) need `pad_to`: a length every rank knows without asking the others (the
    recipe's max_text_len), so no collective or host sync is needed to agree on it.
    """
    if not is_distributed():
        return x
    if pad_to is not None:
        x = pad_tokens(x, pad_to)
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0, without gradient (e.g. ids, candidates);
    `pad_to` as in `gather_with_grad`."""
    if not is_distributed():
        return x
    if pad_to is not None:
        x = pad_tokens(x, pad_to)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def average_over_ranks(tensors: list[torch.Tensor], bucket_bytes: int = 25 * 2 ** 20) -> None:
    """Average `tensors` over ranks in place, in flat buckets of one dtype (identity without a
    process group); every rank passes tensors of the same shapes in the same order."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    bucket: list[torch.Tensor] = []

    def flush() -> None:
        flat = torch.cat([t.flatten() for t in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        bucket.clear()

    size = 0
    for tensor in tensors:
        if bucket and (tensor.dtype != bucket[0].dtype or size >= bucket_bytes):
            flush()
            size = 0
        bucket.append(tensor)
        size += tensor.numel() * tensor.element_size()
    if bucket:
        flush()


def init_from_env(device_type: str) -> bool:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return is_distributed()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return True


def per_rank(value: object) -> list[object]:
    """`value` of every rank, by rank (small picklable objects, e.g. RNG states); one entry
    without a process group."""
    if not is_distributed():
        return [value]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
