"""An MLP head, D -> D' -> V with a GELU: a higher-rank parameterisation of the output layer, whose last linear map has
rank min(D', V) instead of D. A non-linear layer before the output matrix is BERT's masked-LM head (Devlin et al. 2019,
"BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding", NAACL; there D' = D); GELU:
Hendrycks & Gimpel 2016, "Gaussian Error Linear Units (GELUs)", arXiv 1606.08415."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spamlang.diagnostics import orthonormal_basis
from spamlang.heads.base import Head, register_head
from spamlang.heads.linear import INIT_STD
from spamlang.loss import compute_dtype, linear_cross_entropy, logit_gradient
from spamlang.params import param


def hidden_width(params, d_model: int) -> int:
    """D': ``params.width``, or 4 D when it (or ``params``) is None."""
    width = params.width if params is not None else None
    return width if width is not None else 4 * d_model


@register_head
class MLPHead(Head):
    """MLP head: logits GELU(h Aᵀ) Wᵀ, A (D' x D), W (V x D'), no biases: the last map has rank min(D', V).

    The logit gradient G reaches the hidden layer as G W, through rank min(D', V) instead of D, then the backbone as
    ((G W) ⊙ GELU'(h Aᵀ)) A: a rank-D map of its own at each position, which no single V x D subspace describes.
    """

    name = "mlp"

    @dataclass(frozen=True)
    class Params:
        width: int | None = param(None, "hidden width D' (None: 4 D)", low=1)

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        super().__init__(vocab_size, d_model, rank, embedding, params)
        self.width = hidden_width(params, d_model)
        self.hidden = nn.Parameter(torch.randn(self.width, d_model) / math.sqrt(d_model))  # A (D', D)
        self.weight = nn.Parameter(torch.randn(vocab_size, self.width) * INIT_STD)  # W (V, D')

    @classmethod
    def forward_rank_at(cls, vocab_size, d_model, rank, params):
        # (2 / ε) W GELU(ε A h) -> W A h as ε -> 0 (GELU(x) = x / 2 + O(x²)): every linear head of rank min(D, D')
        return min(d_model, hidden_width(params, d_model))

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        return 3.0 * hidden_width(params, d_model) * (d_model + vocab_size)  # h Aᵀ (D' D), then W (V D')

    @property
    def rank(self) -> int:
        return min(self.vocab_size, self.width)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """GELU(h Aᵀ), (N, D')."""
        return F.gelu(h @ self.hidden.to(h.dtype).T)

    def loss(self, h, targets):
        return linear_cross_entropy(self.features(h), self.weight, targets)

    def log_probs(self, h):
        dtype = compute_dtype(h, self.weight)
        return F.log_softmax(self.features(h.to(dtype)) @ self.weight.to(dtype).T, dim=-1)  # (N, V)

    def logits(self, h):
        return self.features(h) @ self.weight.to(h.dtype).T  # (N, V)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        w = self.weight.double()
        return logit_gradient(F.gelu(h.double() @ self.hidden.double().T) @ w.T, targets), orthonormal_basis(w)
