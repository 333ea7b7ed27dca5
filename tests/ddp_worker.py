"""Run under torchrun (2 CPU ranks, gloo): one DDP step of a tiny recipe, each rank collating
its own share; rank 0 saves the mean loss, the gradients and every rank's text length."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parent))
from ddp_setup import build, share  # noqa: E402

from vlp.core import distributed as D  # noqa: E402


def main(name: str, folder: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = D.rank(), D.world_size()
    recipe, model, collate, dataset = build(folder, name)
    batch = share(recipe, collate, dataset, rank, world)
    ddp = DistributedDataParallel(model)
    loss, _, _ = ddp(batch, torch.Generator().manual_seed(0))
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    lengths = [torch.zeros((), dtype=torch.long) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor(batch.input_ids.shape[1]))
    if rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": torch.stack(losses).mean(), "grads": grads,
                    "lengths": torch.stack(lengths)}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
