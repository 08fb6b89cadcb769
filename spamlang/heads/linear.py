"""The standard head: a full V x D output matrix, no bias."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spamlang.diagnostics import orthonormal_basis
from spamlang.heads.base import Head, register_head
from spamlang.loss import compute_dtype, linear_cross_entropy, logit_gradient

INIT_STD = 0.02


@register_head
class LinearHead(Head):
    """Full-rank linear head W (V x D), logits h Wᵀ: rank min(D, V)."""

    name = "linear"

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        super().__init__(vocab_size, d_model, rank, embedding, params)
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * INIT_STD)  # (V, D)

    @classmethod
    def forward_rank(cls, d_model, rank):
        return d_model

    @property
    def rank(self) -> int:
        return min(self.vocab_size, self.d_model)

    def loss(self, h, targets):
        return linear_cross_entropy(h, self.weight, targets)

    def log_probs(self, h):
        dtype = compute_dtype(h, self.weight)
        return F.log_softmax(h.to(dtype) @ self.weight.to(dtype).T, dim=-1)  # (N, V)

    def logits(self, h):
        return h @ self.weight.to(h.dtype).T  # (N, V)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        w = self.weight.double()
        return logit_gradient(h.double() @ w.T, targets), orthonormal_basis(w)
