"""Image patch maskers: which patches the encoder sees, as index tensors made on the device."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from pydantic import Field

from vlp.core.views import ImageView, ViewOutput
from vlp.maskers.base import Masker
from vlp.plugins.base import Params

if TYPE_CHECKING:
    from vlp.core.step import Step


def keep_and_mask_from_scores(scores: torch.Tensor, num_keep: int
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `num_keep` lowest-scoring patches per row: (ids_keep sorted, bool mask)."""
    ids_keep = scores.topk(num_keep, dim=1, largest=False).indices.sort(dim=1).values
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask


def random_patch_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly random patches per sample; exactly round(ratio * N) masked in every sample."""
    num_keep = num_patches - int(round(ratio * num_patches))
    scores = torch.rand(batch, num_patches, generator=generator, device=device)
    return keep_and_mask_from_scores(scores, num_keep)


class RandomPatches(Masker):
    """Mask a fixed ratio of image patches uniformly at random (MAE/FLIP)."""

    produces = frozenset({"image"})
    masks = frozenset({"image"})

    class Params(Params):
        ratio: float = Field(0.5, gt=0, lt=1)
        """Fraction of image patches hidden."""

    def __call__(self, step: Step, generator: torch.Generator) -> ViewOutput:
        pixels = step.batch.image
        ids_keep, mask = random_patch_mask(pixels.shape[0], self.ctx.num_patches,
                                           self.params.ratio, generator, pixels.device)
        return ViewOutput(image=ImageView(pixels, ids_keep, mask))


def block_patch_mask(batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator,
                     device: torch.device, min_block: int = 4, aspect: float = 0.3,
                     max_blocks: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """BEiT-style block-wise masking, vectorised over the batch and the candidate blocks.

    Each sample draws `max_blocks` rectangles (area >= min_block patches, log-uniform aspect
    ratio in [aspect, 1/aspect]); their union in draw order is taken until it covers the target.
    Exactly round(ratio * N) patches are masked in every sample (so kept patches batch without
    padding): first those of the blocks before the last one used, then the last block's, then
    random patches if the blocks fell short.
    """
    gh, gw = grid
    n = gh * gw
    target = int(round(ratio * n))
    shape = (batch, max_blocks)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)

    area = u(min_block, max(min_block, target))
    log_ar = u(math.log(aspect), -math.log(aspect))
    h = (area * log_ar.exp()).sqrt().round().clamp(1, gh)
    w = (area / log_ar.exp()).sqrt().round().clamp(1, gw)
    top = (u(0, 1) * (gh - h + 1)).floor()
    left = (u(0, 1) * (gw - w + 1)).floor()
    rows = torch.arange(gh, device=device).view(1, 1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, 1, gw)
    inside = ((rows >= top[..., None, None]) & (rows < (top + h)[..., None, None])
              & (cols >= left[..., None, None]) & (cols < (left + w)[..., None, None]))
    union = inside.flatten(2).cummax(dim=1).values  # (B, R, N): union of the first r blocks
    covered = union.sum(-1)  # (B, R)
    last = (covered < target).sum(1).clamp(max=max_blocks - 1)  # first r reaching the target
    before = torch.where(last[:, None] > 0,
                         union.gather(1, (last - 1).clamp(min=0)[:, None, None]
                                      .expand(-1, 1, n)).squeeze(1),
                         torch.zeros(batch, n, dtype=torch.bool, device=device))
    upto = union.gather(1, last[:, None, None].expand(-1, 1, n)).squeeze(1)
    priority = 2.0 - before.float() - upto.float()  # 0: earlier blocks, 1: last block, 2: rest
    scores = priority + torch.rand(batch, n, generator=generator, device=device)
    return keep_and_mask_from_scores(-scores, n - target)


class BlockPatches(Masker):
    """Mask rectangular blocks of patches (BEiT block-wise masking) at a fixed ratio."""

    produces = frozenset({"image"})
    masks = frozenset({"image"})

    class Params(Params):
        ratio: float = Field(0.4, gt=0, lt=1)
        """Fraction of image patches hidden."""
        min_block: int = Field(4, ge=1)
        """Smallest block, in patches."""
        aspect: float = Field(0.3, gt=0, le=1)
        """Smallest aspect ratio of a block (and 1/aspect the largest)."""
        max_blocks: int = Field(32, ge=1)
        """Most blocks drawn per image."""

    def __call__(self, step: Step, generator: torch.Generator) -> ViewOutput:
        pixels = step.batch.image
        p = self.params
        ids_keep, mask = block_patch_mask(pixels.shape[0], self.ctx.grid_size, p.ratio,
                                          generator, pixels.device, p.min_block,
                                          p.aspect, p.max_blocks)
        return ViewOutput(image=ImageView(pixels, ids_keep, mask))
