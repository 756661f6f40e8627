"""A small transformer encoder classifier: token + position embedding, pre-LayerNorm blocks with
multi-head self-attention written from nn.Linear and matmul (so every projection is a quantizable
Linear and the attention matmuls are visible to the tracer), a GELU MLP, and a linear head on the
mean-pooled tokens.  Input: int64 token ids ``[N, T]``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:  # [N, T, D] -> [N, H, T, Dh]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim), dim=-1)
        return self.out(torch.matmul(attn, v).transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TransformerEncoder(nn.Module):
    def __init__(
        self,
        vocab_size: int = 1000,
        seq_len: int = 128,
        dim: int = 256,
        heads: int = 4,
        layers: int = 4,
        ff: int = 1024,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, ff) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def transformer(**kwargs: Any) -> TransformerEncoder:
    """The encoder with ``TransformerEncoder``'s keyword arguments (vocab_size, seq_len, dim, heads, layers, ff,
    num_classes)."""
    return TransformerEncoder(**kwargs)
