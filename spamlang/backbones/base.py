"""The backbone API: tokens (B, T) to hidden states (B, T, D), with an input embedding the ``tied`` head can share."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..registry import Registry


class Backbone(nn.Module):
    """Base class of backbones. Subclasses set ``name``, create ``self.embedding`` and implement ``forward``."""

    name: ClassVar[str] = ""

    def __init__(self, vocab_size: int, d_model: int, embed_dim: int, layers: int, n_heads: int, seq_len: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.d_model, self.embed_dim = d_model, embed_dim

    @classmethod
    def check(cls, d_model: int, embed_dim: int, layers: int, n_heads: int, seq_len: int) -> None:
        """Raise ConfigError for an impossible combination."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 -> (B, T, D) hidden states, causal: position t sees tokens 0..t only."""
        raise NotImplementedError


BACKBONES: Registry[Backbone] = Registry("backbone", Backbone, "spamlang.backbones", "spamlang.backbones")


def register_backbone(cls: type) -> type:
    return BACKBONES.register(cls)
