"""Mixture of softmaxes (Yang et al. 2018, "Breaking the Softmax Bottleneck")."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spamlang.diagnostics import orthonormal_basis
from spamlang.heads.base import Head, register_head
from spamlang.heads.linear import INIT_STD
from spamlang.loss import IGNORE_INDEX, checkpointed_nll, compute_dtype
from spamlang.params import param


@register_head
class MoSHead(Head):
    """Mixture of K softmaxes: p = Σ_k π_k softmax(W h_k), π = softmax(U h), h_k = tanh(P_k h); W (V x D) shared."""

    name = "mos"

    @dataclass(frozen=True)
    class Params:
        components: int = param(4, "number K of softmax components mixed", low=1, high=64)

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        params = params if params is not None else self.Params()
        super().__init__(vocab_size, d_model, rank, embedding, params)
        self.k = params.components
        self.prior = nn.Linear(d_model, self.k, bias=False)  # U (K, D)
        self.contexts = nn.Linear(d_model, self.k * d_model, bias=False)  # stacked P_k (K D, D)
        nn.init.normal_(self.prior.weight, std=1 / math.sqrt(d_model))
        nn.init.normal_(self.contexts.weight, std=1 / math.sqrt(d_model))
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * INIT_STD)  # (V, D)

    @classmethod
    def forward_rank(cls, d_model, rank):
        return d_model  # identical components: softmax(W tanh(P h)), W scaled without bound

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        """4 K (D + D² + V D): prior, contexts and K logit rows, forward twice (checkpointed chunks) and backward."""
        k = (params or cls.Params()).components
        return 4.0 * k * (d_model + d_model ** 2 + vocab_size * d_model)

    @property
    def rank(self) -> int:
        return min(self.vocab_size, self.d_model)

    def _mixture(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π (N, K), component log-probabilities (N, K, V)), computed in fp32 or float64."""
        dtype = compute_dtype(h, self.weight)
        with torch.autocast(h.device.type, enabled=False):
            h = h.to(dtype)
            log_prior = F.log_softmax(F.linear(h, self.prior.weight.to(dtype)), dim=-1)  # (N, K)
            hk = torch.tanh(F.linear(h, self.contexts.weight.to(dtype))).unflatten(-1, (self.k, self.d_model))
            return log_prior, F.log_softmax(hk @ self.weight.to(dtype).T, dim=-1)  # (N, K, D) -> (N, K, V)

    def _nll_sum(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the non-ignored targets of one chunk."""
        valid = targets != IGNORE_INDEX
        log_prior, log_p = self._mixture(h)
        index = targets.masked_fill(~valid, 0)[:, None, None].expand(-1, self.k, 1)  # (c, K, 1)
        ll = torch.logsumexp(log_prior + log_p.gather(-1, index).squeeze(-1), dim=-1)  # (c,)
        return -(ll * valid).sum()

    def loss(self, h, targets):
        return checkpointed_nll(self._nll_sum, h, targets, self.k * self.vocab_size)  # chunk x K x V probabilities

    def log_probs(self, h):
        log_prior, log_p = self._mixture(h)
        return torch.logsumexp(log_prior[..., None] + log_p, dim=1)  # (N, V)

    def logits(self, h):
        hk = torch.tanh(F.linear(h, self.contexts.weight.to(h.dtype)))  # (N, K D)
        return hk.unflatten(-1, (self.k, self.d_model)).flatten(0, 1) @ self.weight.to(h.dtype).T  # (N K, V)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        """G w.r.t. the stacked component logits Z_k = h_k Wᵀ, (N K, V): ω_nk (p_nk - y_n) / n_valid, with ω the
        posterior responsibility of component k for the target."""
        valid = targets != IGNORE_INDEX
        log_prior, log_p = self._mixture(h.double())
        index = targets.masked_fill(~valid, 0)[:, None, None].expand(-1, self.k, 1)
        omega = F.softmax(log_prior + log_p.gather(-1, index).squeeze(-1), dim=-1)  # (N, K)
        g = log_p.exp().scatter_add_(-1, index, -torch.ones_like(log_p[..., :1]))  # (N, K, V): p - onehot
        g *= (omega * valid[:, None] / valid.sum())[..., None]
        return g.flatten(0, 1), orthonormal_basis(self.weight.double())
