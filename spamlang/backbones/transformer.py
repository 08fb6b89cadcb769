"""A GPT-style pre-norm causal transformer backbone."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from spamlang.backbones.base import INIT_STD, Backbone, BackboneConfig, register_backbone
from spamlang.errors import ConfigError


@dataclass(frozen=True)
class TransformerConfig(BackboneConfig):
    n_heads: int


class Block(nn.Module):
    """LayerNorm → causal self-attention → residual; LayerNorm → MLP (4x, GELU) → residual."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):  # (B, T, D)
        q, k, v = self.qkv(self.ln1(x)).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)  # (B, H, T, D/H)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)  # (B, T, D)
        x = x + self.out(a)
        return x + self.mlp(self.ln2(x))


@register_backbone
class Transformer(Backbone):
    """GPT-style pre-norm causal transformer: embedding (projected to d_model) + positions, blocks, LayerNorm."""

    name = "transformer"
    Config = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        d_model, embed_dim, layers = config.d_model, config.embed_dim, config.layers
        self.proj = nn.Linear(embed_dim, d_model, bias=False) if embed_dim != d_model else nn.Identity()
        self.positions = nn.Embedding(config.seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, config.n_heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        for name, p in self.named_parameters():  # GPT-2 initialisation, residual outputs scaled by depth
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = INIT_STD / math.sqrt(2 * layers) if name.endswith(("out.weight", "mlp.2.weight")) else INIT_STD
                nn.init.normal_(p, std=std)

    @classmethod
    def check(cls, config: TransformerConfig):
        super().check(config)
        if config.d_model % config.n_heads:
            raise ConfigError(f"backbone 'transformer': d_model={config.d_model} is not divisible by "
                              f"n_heads={config.n_heads}")

    def forward(self, tokens):  # (B, T) -> (B, T, D)
        t = tokens.shape[1]
        if t > self.positions.num_embeddings:
            raise ValueError(f"sequence length {t} exceeds the backbone's seq_len={self.positions.num_embeddings}")
        x = self.proj(self.embedding(tokens)) + self.positions.weight[:t]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)
