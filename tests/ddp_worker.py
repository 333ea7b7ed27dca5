"""Run under torchrun (2 CPU ranks, gloo): one DDP step of a tiny model's ITC, saved per rank."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parent))
from itc_setup import GLOBAL_BATCH, build_model_and_batch  # noqa: E402

from vlp.core import distributed as D  # noqa: E402


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = D.rank(), D.world_size()
    model, batch, generator = build_model_and_batch(Path(sys.argv[2]))
    local = GLOBAL_BATCH // world
    part = type(batch)(**{k: v[rank * local:(rank + 1) * local] for k, v in vars(batch).items()})
    ddp = DistributedDataParallel(model)
    loss, _, _ = ddp(part, generator)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": torch.stack(losses).mean(), "grads": grads}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
