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
