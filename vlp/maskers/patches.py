"""Image patch maskers: which patches the encoder sees, as index tensors made on the device."""

from __future__ import annotations

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

    class Params(Params):
        ratio: float = Field(0.5, gt=0, lt=1)

    def __call__(self, step: Step) -> ViewOutput:
        pixels = step.batch.image
        ids_keep, mask = random_patch_mask(pixels.shape[0], self.ctx.num_patches,
                                           self.params.ratio, step.generator, pixels.device)
        return ViewOutput(image=ImageView(pixels, ids_keep, mask))
