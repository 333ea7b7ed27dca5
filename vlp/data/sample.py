"""The unit every data set yields, and the error raised for bad input data."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pair:
    """One image and its report; ``sample_id`` is unique within a data source."""

    image: torch.Tensor  # float32 (C, H, W) with values in [0, 1]
    text: str
    sample_id: int


class DataError(Exception):
    """Bad input data; the message names the file and the 1-based data row (header excluded)."""


class UnreadableSample(DataError):
    """A row passed the construction check but its image cannot be read when drawn (a
    truncated file, pixel data cut short): the loader replaces it and counts it."""

    def __init__(self, source: str, row: int, reason: str, detail: str):
        super().__init__(f"{source}: data row {row}: {reason}: {detail}")
        self.source, self.row, self.reason, self.detail = source, row, reason, detail
