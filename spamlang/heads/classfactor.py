"""Class-factorised softmax (Goodman 2001, "Classes for Fast Maximum Entropy Training", ICASSP; Mikolov et al. 2011,
"Extensions of Recurrent Neural Network Language Model", ICASSP): p(v) = p(class of v) p(v | its class)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spamlang.diagnostics import orthonormal_basis
from spamlang.errors import ConfigError
from spamlang.heads.base import Head, register_head
from spamlang.heads.linear import INIT_STD
from spamlang.loss import IGNORE_INDEX, checkpointed_nll, compute_dtype
from spamlang.params import param


def class_count(params, vocab_size: int) -> int:
    """C: ``params.classes``, or round(sqrt(V)) when it (or ``params``) is None."""
    classes = params.classes if params is not None else None
    return classes if classes is not None else round(math.sqrt(vocab_size))


@register_head
class ClassFactorHead(Head):
    """Two-level softmax p(v) = softmax(U h)_c(v) softmax((W h)_c(v))_v over C contiguous classes, U (C x D), W (V x D).

    Class c holds tokens v with floor(v C / V) = c: contiguous blocks whose sizes differ by at most one. Training
    computes the class logits and only the target's class's token logits: (C + V / C) D multiply-adds per position
    instead of V D. The logits are [h Uᵀ, h Wᵀ], (N, C + V); the backbone receives G [U; W], of rank min(D, C + V).
    """

    name = "classfactor"

    @dataclass(frozen=True)
    class Params:
        classes: int | None = param(None, "number C of classes, contiguous blocks of tokens (None: round(sqrt(V)))",
                                    low=1)

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        params = params if params is not None else self.Params()
        super().__init__(vocab_size, d_model, rank, embedding, params)
        self.c = class_count(params, vocab_size)
        self.class_weight = nn.Parameter(torch.randn(self.c, d_model) * INIT_STD)  # U (C, D)
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * INIT_STD)  # W (V, D)
        with torch.device("cpu"):  # also when the model is built elsewhere (on "meta" to count its parameters)
            token_class = torch.arange(vocab_size) * self.c // vocab_size  # (V,), non-decreasing
            sizes = torch.bincount(token_class, minlength=self.c)  # (C,)
            starts = sizes.cumsum(0) - sizes  # (C,) first token of each class
            padding = torch.arange(int(sizes.max())) >= sizes[:, None]  # (C, m), m the largest class
            members = (starts[:, None] + torch.arange(padding.shape[1])).masked_fill(padding, 0)  # (C, m), padded: 0
        self.register_buffer("token_class", token_class, persistent=False)
        self.register_buffer("members", members, persistent=False)  # token ids of each class
        self.register_buffer("padding", padding, persistent=False)

    @classmethod
    def check_params(cls, params, vocab_size, d_model):
        if params.classes is not None and params.classes > vocab_size:
            raise ConfigError(f"head 'classfactor': parameter 'classes'={params.classes} exceeds vocab_size="
                              f"{vocab_size} (allowed [1, {vocab_size}])")

    @classmethod
    def forward_rank_at(cls, vocab_size, d_model, rank, params):
        # a linear head's rank-r logits u = h Wᵀ on r coordinates of h, and one more coordinate per class of two or
        # more tokens carrying its log-sum-exp of u (a class of one takes its token's logit itself; with no such class
        # the class softmax's shift frees one): exact, so D minus those coordinates
        c = class_count(params, vocab_size)
        spare = c - 1 if vocab_size >= 2 * c else vocab_size - c
        return max(0, d_model - spare)

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        """4 (C + ceil(V / C)) D: the class logits and the target's class's token logits (padded to the largest
        class, ceil(V / C)), forward twice (checkpointed chunks) and backward."""
        c = class_count(params, vocab_size)
        return 4.0 * (c + -(-vocab_size // c)) * d_model

    @property
    def rank(self) -> int:
        return min(self.d_model, self.c + self.vocab_size)

    def _nll_sum(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the non-ignored targets of one chunk, in fp32 or float64."""
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        dtype = compute_dtype(h, self.weight)
        with torch.autocast(h.device.type, enabled=False):
            h = h.to(dtype)
            cls = self.token_class[safe]  # (c,)
            class_lp = F.log_softmax(h @ self.class_weight.to(dtype).T, dim=-1).gather(1, cls[:, None]).squeeze(1)
            members = self.members[cls]  # (c, m)
            z = torch.einsum("nd,nmd->nm", h, self.weight.to(dtype)[members])  # (c, m) logits of the target's class
            token_lp = F.log_softmax(z.masked_fill(self.padding[cls], float("-inf")), dim=-1)
            token_lp = token_lp.gather(1, (safe - members[:, 0])[:, None]).squeeze(1)  # (c,)
        return -((class_lp + token_lp) * valid).sum()

    def loss(self, h, targets):
        return checkpointed_nll(self._nll_sum, h, targets, self.members.shape[1] * self.d_model + self.c)

    def log_probs(self, h):
        dtype = compute_dtype(h, self.weight)
        with torch.autocast(h.device.type, enabled=False):
            h = h.to(dtype)
            class_lp = F.log_softmax(h @ self.class_weight.to(dtype).T, dim=-1)  # (N, C)
            z = h @ self.weight.to(dtype).T  # (N, V)
            norm = z[:, self.members].masked_fill(self.padding, float("-inf")).logsumexp(dim=-1)  # (N, C)
            return (class_lp - norm)[:, self.token_class] + z  # (N, V)

    def logits(self, h):
        return h @ torch.cat([self.class_weight, self.weight]).to(h.dtype).T  # (N, C + V)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        """G w.r.t. [h Uᵀ, h Wᵀ], (N, C + V): (softmax(h Uᵀ) - onehot of the target's class) / n_valid, and on the
        target's class's tokens (their softmax - onehot) / n_valid, 0 on the other tokens."""
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        u, w = self.class_weight.double(), self.weight.double()
        h = h.double()
        same = self.token_class == self.token_class[safe][:, None]  # (N, V): tokens of the target's class
        g = torch.cat([F.softmax(h @ u.T, dim=-1), F.softmax((h @ w.T).masked_fill(~same, float("-inf")), dim=-1)], 1)
        rows = torch.arange(len(h), device=h.device)
        g[rows, self.token_class[safe]] -= 1
        g[rows, self.c + safe] -= 1
        return g * (valid / valid.sum()).to(g.dtype)[:, None], orthonormal_basis(torch.cat([u, w]))
