"""Retrieval recall@k: hand-worked cases, pessimistic ties, and a brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch

from vlp.eval.retrieval import retrieval_metrics


def brute_force(images: torch.Tensor, texts: torch.Tensor, ks: tuple[int, ...]
                ) -> dict[str, float]:
    """Reference with Python loops: a query is correct at k if fewer than k other candidates
    score at least as high as its pair (ties count against it)."""
    def unit(rows: list[list[float]]) -> list[list[float]]:
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]

    img, txt = unit(images.double().tolist()), unit(texts.double().tolist())
    n = len(img)
    sim = [[sum(a * b for a, b in zip(img[i], txt[j], strict=True)) for j in range(n)]
           for i in range(n)]
    out = {}
    for name, score in (("i2t", lambda q, c: sim[q][c]), ("t2i", lambda q, c: sim[c][q])):
        ranks = [sum(1 for c in range(n) if c != q and score(q, c) >= score(q, q))
                 for q in range(n)]
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * sum(r < k for r in ranks) / n
    return out


def test_hand_worked_three_by_three():
    # Identity images make sim[i, j] = texts[j][i]:
    #   sim = [[0.0, 0.6, 0.8],
    #          [1.0, 0.8, 0.0],
    #          [0.0, 0.0, 0.6]]
    # image queries (rows): ranks 2, 1, 0; text queries (columns): column 0 has its pair at
    # 0.0 below 1.0 and tied with another 0.0 -> rank 2; column 1 -> 0; column 2 -> 1.
    images = torch.eye(3)
    texts = torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [0.8, 0.0, 0.6]])
    m = retrieval_metrics(images, texts, ks=(1, 2, 3))
    for name in ("i2t", "t2i"):
        assert m[f"{name}_R@1"] == pytest.approx(100 / 3)
        assert m[f"{name}_R@2"] == pytest.approx(200 / 3)
        assert m[f"{name}_R@3"] == pytest.approx(100.0)
    assert m["mean_R"] == pytest.approx(200 / 3) and m["n"] == 3


def test_directions_differ_when_the_matrix_is_asymmetric():
    # sim = [[1.0, 0.8], [0.0, 0.6]]: each image finds its text first, but text 1 scores
    # image 0 (0.8) above its own image (0.6).
    texts = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    m = retrieval_metrics(torch.eye(2), texts, ks=(1, 2))
    assert m["i2t_R@1"] == 100.0 and m["t2i_R@1"] == 50.0 and m["t2i_R@2"] == 100.0


def test_identity_embeddings_give_full_recall():
    m = retrieval_metrics(torch.eye(20), torch.eye(20))
    assert all(v == 100.0 for k, v in m.items() if k != "n") and m["n"] == 20
    assert list(m) == ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
                       "mean_R", "n"]


def test_ties_never_favour_the_correct_item():
    same = torch.ones(5, 4) / 2
    m = retrieval_metrics(same, same, ks=(1, 4, 5))
    assert m["i2t_R@1"] == 0.0 and m["i2t_R@4"] == 0.0 and m["i2t_R@5"] == 100.0
    assert m["t2i_R@1"] == 0.0 and m["t2i_R@5"] == 100.0


def test_scale_does_not_matter_cosine_similarity():
    torch.manual_seed(0)
    images, texts = torch.randn(30, 8), torch.randn(30, 8)
    scaled = images * (0.1 + 10 * torch.rand(30, 1))
    assert retrieval_metrics(images, texts) == retrieval_metrics(scaled, texts)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_on_random_data_with_ties(seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(50, 16, generator=g)
    texts = images + 1.5 * torch.randn(50, 16, generator=g)
    texts[10:15] = texts[10]  # duplicate texts tie for image queries
    images[30:33] = images[30]  # duplicate images tie for text queries
    ks = (1, 3, 5, 10, 60)
    got = retrieval_metrics(images, texts, ks=ks)
    want = brute_force(images, texts, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["mean_R"] == pytest.approx(sum(want.values()) / len(want))
    assert 0 < got["i2t_R@1"] < 100


def test_chunked_similarity_blocks_agree(monkeypatch: pytest.MonkeyPatch):
    g = torch.Generator().manual_seed(2)
    images, texts = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    whole = retrieval_metrics(images, texts)
    monkeypatch.setattr("vlp.eval.retrieval._CHUNK", 7)
    assert retrieval_metrics(images, texts) == whole


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        retrieval_metrics(torch.eye(3), torch.eye(4))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.full((2, 2), float("nan")), torch.eye(2))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.eye(2), torch.eye(2), ks=(0,))
