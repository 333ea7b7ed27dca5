"""The batch a step sees: images and tokenised reports, already on the device."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """Tensors for B pairs. word_ids is -1 at special and padding tokens."""

    image: torch.Tensor  # (B, C, H, W) float in [0, 1]
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) bool, True for real tokens
    special_tokens_mask: torch.Tensor  # (B, T) bool, True for [CLS]/[SEP]/[PAD]
    word_ids: torch.Tensor  # (B, T) long, word index within the report
    sample_id: torch.Tensor  # (B,) long: same id = same study (never a negative of itself)
    text_id: torch.Tensor  # (B,) long: report text hash (identical reports are not negatives)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})

    def __len__(self) -> int:
        return self.image.shape[0]

    def split(self, parts: int) -> list[Batch]:
        """`parts` equal consecutive micro-batches (the batch itself when parts is 1)."""
        if parts == 1:
            return [self]
        if len(self) % parts:
            raise ValueError(f"a batch of {len(self)} does not split into {parts} equal parts")
        size = len(self) // parts
        return [Batch(**{f.name: getattr(self, f.name)[i * size:(i + 1) * size]
                         for f in fields(self)}) for i in range(parts)]

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})
