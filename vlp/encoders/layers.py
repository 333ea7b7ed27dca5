"""Transformer building blocks shared by the text encoder and fusion modules (PyTorch SDPA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def check_heads_divide(width: int, heads: int, what: str = "width", name: str = "heads") -> None:
    """Attention splits `width` into `heads` equal parts: a ValueError saying so if it cannot."""
    if width % heads:
        raise ValueError(f"{what} {width} is not divisible by {name} {heads}")


def bert_init_(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: every Linear and Embedding weight from normal(0, std), biases
    zero (and the padding row of an embedding), LayerNorm weight 1 and bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Embedding):
            nn.init.normal_(layer.weight, std=std)
            if layer.padding_idx is not None:
                with torch.no_grad():
                    layer.weight[layer.padding_idx].zero_()
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def xavier_init_(module: nn.Module) -> None:
    """MAE's initialisation of its decoder: xavier-uniform Linear weights, zero biases,
    LayerNorm weight 1 and bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def sincos_positions_2d(width: int, grid: tuple[int, int], prefix: int = 0) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding, (prefix + H * W, width): the first half of
    the channels encodes the column, the second the row, each as [sin(pos * w_k), cos(pos * w_k)]
    with w_k = 10000^(-k / (width / 4)); prefix tokens ([CLS]) get zeros."""
    if width % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.flatten()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    return torch.cat([torch.zeros(prefix, width, dtype=torch.float64), table]).float()


class Attention(nn.Module):
    """Multi-head attention over SDPA; `kv` defaults to `x` (self-attention)."""

    def __init__(self, width: int, heads: int, kv_width: int | None = None, dropout: float = 0.0):
        super().__init__()
        check_heads_divide(width, heads)
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """key_mask: (B, S) bool, True for keys that may be attended to."""
        kv = x if kv is None else kv
        q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads)
        k, v = rearrange(self.kv(kv), "b s (two h d) -> two b h s d", two=2, h=self.heads)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(rearrange(y, "b h t d -> b t (h d)"))


class MLP(nn.Sequential):
    def __init__(self, width: int, ratio: float = 4.0, dropout: float = 0.0):
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, width))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 cross_width: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout=dropout)
        self.cross = None
        if cross_width is not None:
            self.norm_cross = nn.LayerNorm(width)
            self.cross = Attention(width, heads, kv_width=cross_width, dropout=dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_mask=mask))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), kv=context, key_mask=context_mask))
        return x + self.drop(self.mlp(self.norm2(x)))
