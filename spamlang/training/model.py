"""A language model = a registered backbone + a registered head, built from a resolved run configuration."""
from __future__ import annotations

import torch
from torch import nn

from spamlang.backbones.base import BACKBONES
from spamlang.config import RunConfig
from spamlang.heads.base import HEADS


class LanguageModel(nn.Module):
    """tokens (B, T) -> hidden states (B, T, D) -> head."""

    def __init__(self, config: RunConfig):
        super().__init__()
        config = config.resolve()
        backbone = BACKBONES.get(config.backbone)
        self.backbone = backbone(backbone.config_of(config))
        self.head = HEADS.get(config.head).build(config.vocab_size, config.d_model, config.head_rank,
                                                 self.backbone.embedding, config.head_params)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone(tokens)  # (B, T, D)
