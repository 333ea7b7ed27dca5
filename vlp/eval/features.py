"""Frozen features for evaluation, computed once per split and shared by every task.

Features come from the training path (a `Step` per batch), so evaluation sees exactly what the
objectives saw; each split's images are encoded once however many tasks read them, and the
encoder passes are counted as in training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vlp.core.model import VLPModel
from vlp.core.step import Step
from vlp.data.collate import Collator
from vlp.data.loader import eval_loader
from vlp.data.sample import DataError, Pair


@dataclass(frozen=True)
class ImageSet:
    """Features of one split's images, row i for item i of its data set."""

    pooled: Tensor  # (N, W): pooled image-encoder output (linear probes read this)
    embedding: Tensor  # (N, E): L2-normalised shared projection (zero-shot, retrieval)
    text_embedding: Tensor | None = None  # (N, E): the paired reports', when encoded


class _Prompts(Dataset[Pair]):
    """Texts without images, for encoding prompts through the same collate and step."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> Pair:
        return Pair(image=torch.zeros(1, 1, 1), text=self.texts[index], sample_id=index)


class FrozenFeatures:
    """Encodes splits and prompt lists under the model in eval mode, each at most once."""

    def __init__(self, model: VLPModel, collate: Collator, device: torch.device,
                 batch_size: int, num_workers: int = 0):
        self.model, self.collate, self.device = model, collate, device
        self.batch_size, self.num_workers = batch_size, num_workers
        self.passes: Counter[str] = Counter()
        self._images: dict[str, ImageSet] = {}
        self._texts: dict[tuple[str, ...], Tensor] = {}

    @torch.no_grad()
    def _encode(self, dataset: Dataset, image: bool, text: bool) -> dict[str, Tensor]:
        was_training = self.model.training
        self.model.eval()
        parts: dict[str, list[Tensor]] = {"pooled": [], "embedding": [], "text": []}
        for batch in eval_loader(dataset, self.collate, self.batch_size, self.num_workers):
            step = Step(self.model, batch.to(self.device), torch.Generator(self.device))
            if image:
                parts["pooled"].append(step.image("image").pooled.float().cpu())
                parts["embedding"].append(step.image_embedding("image").float().cpu())
            if text:
                parts["text"].append(step.text_embedding("text").float().cpu())
            self.passes.update(step.passes)
        self.model.train(was_training)
        return {k: torch.cat(v) for k, v in parts.items() if v}

    def images(self, key: str, dataset: Dataset, with_text: bool = False) -> ImageSet:
        """Features of `dataset`'s images; `key` names the split (same key = same images)."""
        cached = self._images.get(key)
        if cached is not None and (cached.text_embedding is not None or not with_text):
            return cached
        if len(dataset) == 0:
            raise DataError(f"split '{key}' has no usable samples")
        out = self._encode(dataset, image=True, text=with_text)
        self._images[key] = ImageSet(out["pooled"], out["embedding"], out.get("text"))
        return self._images[key]

    def texts(self, texts: list[str]) -> Tensor:
        """(len(texts), E) L2-normalised text embeddings of `texts` (e.g. prompts)."""
        key = tuple(texts)
        if key not in self._texts:
            self._texts[key] = self._encode(_Prompts(list(texts)), image=False, text=True)["text"]
        return self._texts[key]

    def pass_counts(self) -> dict[str, int]:
        return dict(sorted(self.passes.items()))
