"""The rank-factorised head of the paper's controlled runs: W = A·B of rank r."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spamlang.diagnostics import orthonormal_basis
from spamlang.heads.base import Head, register_head
from spamlang.heads.linear import INIT_STD
from spamlang.loss import compute_dtype, linear_cross_entropy, logit_gradient


@register_head
class LowRankHead(Head):
    """Rank-r head W = A·B, A (V x r), B (r x D): logits (h Bᵀ) Aᵀ."""

    name = "lowrank"
    uses_rank = True

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        super().__init__(vocab_size, d_model, rank, embedding, params)
        # B keeps |h B^T| ~ |h| sqrt(r/D); A then gives W = A·B entries of std INIT_STD, as the linear head
        self.B = nn.Parameter(torch.randn(rank, d_model) / math.sqrt(d_model))  # (r, D)
        self.A = nn.Parameter(torch.randn(vocab_size, rank) * INIT_STD * math.sqrt(d_model / rank))  # (V, r)

    @classmethod
    def forward_rank(cls, d_model, rank):
        return rank

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        return 3.0 * rank * (d_model + vocab_size)  # h Bᵀ (r D), then A (V r)

    @property
    def rank(self) -> int:
        return self.B.shape[0]

    def loss(self, h, targets):
        return linear_cross_entropy(h @ self.B.to(h.dtype).T, self.A, targets)

    def log_probs(self, h):
        dtype = compute_dtype(h, self.A)
        return F.log_softmax((h.to(dtype) @ self.B.to(dtype).T) @ self.A.to(dtype).T, dim=-1)  # (N, V)

    def logits(self, h):
        return (h @ self.B.to(h.dtype).T) @ self.A.to(h.dtype).T  # (N, V)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        a = self.A.double()
        return logit_gradient((h.double() @ self.B.double().T) @ a.T, targets), orthonormal_basis(a)
