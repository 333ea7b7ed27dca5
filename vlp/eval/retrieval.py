"""Recall@k of paired image-text retrieval in both directions, with pessimistic ties."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK = 1024  # query rows per similarity block, to bound memory for large N


def _pair_ranks(queries: Tensor, keys: Tensor) -> Tensor:
    """0-based rank of key i for query i among all keys, counting every tie as ranked above.

    rank = #keys with strictly greater similarity + #other keys with equal similarity.
    The paired similarity is read from the same product as the others, so rounding agrees.
    """
    ranks = []
    for start in range(0, queries.shape[0], _CHUNK):
        sim = queries[start:start + _CHUNK] @ keys.T
        rows = torch.arange(sim.shape[0], device=sim.device)
        paired = sim[rows, rows + start]
        ranks.append((sim >= paired[:, None]).sum(dim=1) - 1)
    return torch.cat(ranks)


def _check(image_emb: Tensor, text_emb: Tensor, ks: Sequence[int]) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape or image_emb.shape[0] == 0:
        raise ValueError("expected two non-empty (N, D) embedding matrices of equal shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if not (torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")


def paired_ranks(image_emb: Tensor, text_emb: Tensor) -> tuple[Tensor, Tensor]:
    """0-based rank of each sample's own report among all reports (i2t) and of its own image
    among all images (t2i), by cosine similarity, ties counted against it."""
    images = F.normalize(image_emb.detach().double(), dim=1)
    texts = F.normalize(text_emb.detach().double(), dim=1)
    return _pair_ranks(images, texts), _pair_ranks(texts, images)


def retrieval_metrics(image_emb: Tensor, text_emb: Tensor, ks: Sequence[int] = (1, 5, 10)
                      ) -> dict[str, float]:
    """Recall@k in percent for N pairs (row i of each matrix is a pair), by cosine similarity.

    Keys: ``i2t_R@k`` (image queries), ``t2i_R@k`` (text queries), ``mean_R`` (mean of all
    recalls) and ``n`` (int). Ties never favour the correct item.
    """
    _check(image_emb, text_emb, ks)
    recalls: dict[str, float] = {}
    for name, ranks in zip(("i2t", "t2i"), paired_ranks(image_emb, text_emb)):
        for k in ks:
            recalls[f"{name}_R@{k}"] = 100.0 * (ranks < k).double().mean().item()
    mean = sum(recalls.values()) / len(recalls)
    return {**recalls, "mean_R": mean, "n": image_emb.shape[0]}
