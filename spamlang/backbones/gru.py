"""A recurrent (non-attention) backbone: a multi-layer GRU."""
from __future__ import annotations

from torch import nn

from spamlang.backbones.base import INIT_STD, Backbone, BackboneConfig, register_backbone


@register_backbone
class GRU(Backbone):
    """Multi-layer GRU of width d_model over the (projected) token embedding, then LayerNorm."""

    name = "gru"

    def __init__(self, config: BackboneConfig):
        super().__init__(config)
        nn.init.normal_(self.embedding.weight, std=INIT_STD)
        d_model = config.d_model
        self.proj = nn.Linear(config.embed_dim, d_model, bias=False) if config.embed_dim != d_model else nn.Identity()
        self.rnn = nn.GRU(d_model, d_model, num_layers=config.layers, batch_first=True)
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, tokens):  # (B, T) -> (B, T, D)
        return self.ln_f(self.rnn(self.proj(self.embedding(tokens)))[0])
