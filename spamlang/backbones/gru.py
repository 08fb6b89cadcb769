"""A recurrent (non-attention) backbone: a multi-layer GRU."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .base import Backbone, register_backbone
from .transformer import INIT_STD


@register_backbone
class GRU(Backbone):
    """Multi-layer GRU of width d_model over the (projected) token embedding, then LayerNorm."""

    name = "gru"

    def __init__(self, vocab_size, d_model, embed_dim, layers, n_heads, seq_len):
        super().__init__(vocab_size, d_model, embed_dim, layers, n_heads, seq_len)
        nn.init.normal_(self.embedding.weight, std=INIT_STD)
        self.proj = nn.Linear(embed_dim, d_model, bias=False) if embed_dim != d_model else nn.Identity()
        self.rnn = nn.GRU(d_model, d_model, num_layers=layers, batch_first=True)
        self.ln_f = nn.LayerNorm(d_model)

    @classmethod
    def check(cls, d_model, embed_dim, layers, n_heads, seq_len):
        for what, value in (("d_model", d_model), ("embed_dim", embed_dim), ("layers", layers), ("seq_len", seq_len)):
            if value < 1:
                raise ConfigError(f"backbone 'gru': {what} must be >= 1, got {value}")

    def forward(self, tokens):  # (B, T) -> (B, T, D)
        return self.ln_f(self.rnn(self.proj(self.embedding(tokens)))[0])
