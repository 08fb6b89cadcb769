"""The backbone API: tokens (B, T) to hidden states (B, T, D), with an input embedding the ``tied`` head can share."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from spamlang.errors import ConfigError
from spamlang.registry import Registry

#: standard deviation of the backbones' (GPT-2 style) initialisation
INIT_STD = 0.02


@dataclass(frozen=True)
class BackboneConfig:
    """The settings every backbone takes; a backbone that needs more extends it as its ``Config``."""

    vocab_size: int
    d_model: int
    embed_dim: int
    layers: int
    seq_len: int


class Backbone(nn.Module):
    """Base class of backbones. Subclasses set ``name``, create ``self.embedding`` and implement ``forward``."""

    name: ClassVar[str] = ""
    #: the frozen dataclass of settings this backbone is built from
    Config: ClassVar[type] = BackboneConfig

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.d_model, self.embed_dim = config.d_model, config.embed_dim

    @classmethod
    def config_of(cls, run: Any) -> BackboneConfig:
        """This backbone's ``Config`` from a run configuration: the fields of the same name (``embed_dim``: its
        width)."""
        values = {**run.to_dict(), "embed_dim": run.width}
        return cls.Config(**{f.name: values[f.name] for f in dataclasses.fields(cls.Config)})

    @classmethod
    def check(cls, config: BackboneConfig) -> None:
        """Raise ConfigError for an impossible combination. Subclasses extend and call super()."""
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if value < 1:
                raise ConfigError(f"backbone '{cls.name}': {f.name} must be >= 1, got {value}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 -> (B, T, D) hidden states, causal: position t sees tokens 0..t only."""
        raise NotImplementedError


BACKBONES: Registry[Backbone] = Registry("backbone", Backbone, "spamlang.backbones", "spamlang.backbones")


def register_backbone(cls: type) -> type:
    return BACKBONES.register(cls)
