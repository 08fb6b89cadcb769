"""A language model = a registered backbone + a registered head, built and checked from a RunConfig."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .backbones.base import BACKBONES
from .config import RunConfig
from .heads.base import HEADS, head_params
from .task import make_task


def resolve(config: RunConfig) -> RunConfig:
    """Check ``config`` for impossible combinations (ConfigError) and return it with every task and head parameter
    typed (strings from the command line are parsed) and filled in with its default, so equal runs hash equal."""
    task = make_task(config.task, config.task_params, from_strings=True)
    task.check(config.vocab_size, config.seq_len)
    BACKBONES.get(config.backbone).check(config.d_model, config.width, config.layers, config.n_heads, config.seq_len)
    head_cls = HEADS.get(config.head)
    head_cls.check(config.vocab_size, config.d_model, config.head_rank, config.width)
    extra = head_params(head_cls, config.head_params, from_strings=True)
    return dataclasses.replace(config, task_params=task.params,
                               head_params=dataclasses.asdict(extra) if extra is not None else {})


class LanguageModel(nn.Module):
    """tokens (B, T) -> hidden states (B, T, D) -> head."""

    def __init__(self, config: RunConfig):
        super().__init__()
        config = resolve(config)
        self.backbone = BACKBONES.get(config.backbone)(config.vocab_size, config.d_model, config.width, config.layers,
                                                       config.n_heads, config.seq_len)
        head_cls = HEADS.get(config.head)
        self.head = head_cls(config.vocab_size, config.d_model, config.head_rank, self.backbone.embedding,
                             head_params(head_cls, config.head_params))

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone(tokens)  # (B, T, D)
