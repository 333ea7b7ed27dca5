"""The demo data set: item i is a pure function of (seed, offset + i)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vlp.data.demo.findings import Findings, sample_findings
from vlp.data.demo.render import render_chest
from vlp.data.demo.reports import write_report
from vlp.data.sample import Pair

_TEXT_STREAM, _IMAGE_STREAM = 0, 1


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, index, stream]))


def _findings_and_report(seed: int, index: int) -> tuple[Findings, str]:
    rng = _rng(seed, index, _TEXT_STREAM)
    findings = sample_findings(rng)
    return findings, write_report(findings, rng)


def demo_reports(size: int, seed: int = 0, offset: int = 0) -> list[str]:
    """The reports of ``DemoDataset(size, seed=seed, offset=offset)`` without drawing images."""
    return [_findings_and_report(seed, offset + i)[1] for i in range(size)]


class DemoDataset(Dataset[Pair]):
    """``size`` synthetic radiograph-report pairs; item i depends only on (seed, offset + i).

    Disjoint splits: ``DemoDataset(n_train)`` and ``DemoDataset(n_val, offset=n_train)``.
    Images are in radiological orientation (the patient's right on the image's left).
    """

    def __init__(self, size: int, image_size: int = 64, seed: int = 0, in_chans: int = 1,
                 offset: int = 0):
        if size < 0 or seed < 0 or offset < 0:
            raise ValueError(f"size, seed and offset must be >= 0, got {size}, {seed}, {offset}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.size, self.image_size, self.seed = size, image_size, seed
        self.in_chans, self.offset = in_chans, offset

    def __len__(self) -> int:
        return self.size

    def _global_index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} demo pairs")
        return self.offset + index % self.size

    def findings(self, index: int) -> Findings:
        """The ground-truth findings of item ``index`` (no image is drawn)."""
        return _findings_and_report(self.seed, self._global_index(index))[0]

    def __getitem__(self, index: int) -> Pair:
        sample_id = self._global_index(index)
        findings, text = _findings_and_report(self.seed, sample_id)
        image = render_chest(findings, _rng(self.seed, sample_id, _IMAGE_STREAM), self.image_size)
        tensor = torch.from_numpy(image).unsqueeze(0)
        if self.in_chans == 3:
            tensor = tensor.repeat(3, 1, 1)
        return Pair(image=tensor, text=text, sample_id=sample_id)
