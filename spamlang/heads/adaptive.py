"""Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs", ICML), built on
``torch.nn.AdaptiveLogSoftmaxWithLoss``."""
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
from spamlang.loss import IGNORE_INDEX, checkpointed_nll
from spamlang.params import param


def cutoffs_of(params, vocab_size: int) -> list[int]:
    """The token cut-offs [c_1 < ... < c_K] of ``params.cutoffs`` (fractions of V, each rounded to the nearest
    integer); ConfigError unless they are increasing fractions in (0, 1) giving distinct cut-offs in [1, V - 1]."""
    text = params.cutoffs
    try:
        fractions = [float(part) for part in text.split(",")]
    except ValueError:
        fractions = []
    if not fractions or any(not 0 < f < 1 for f in fractions) or fractions != sorted(set(fractions)):
        raise ConfigError(f"head 'adaptive': parameter 'cutoffs'={text!r} must be comma-separated fractions of V, "
                          f"increasing within (0, 1)")
    cutoffs = [round(f * vocab_size) for f in fractions]
    if cutoffs[0] < 1 or cutoffs[-1] > vocab_size - 1 or len(set(cutoffs)) < len(cutoffs):
        raise ConfigError(f"head 'adaptive': parameter 'cutoffs'={text!r} gives cut-offs {cutoffs} at vocab_size="
                          f"{vocab_size}; they must be distinct and within [1, {vocab_size - 1}]")
    return cutoffs


def layout(params, vocab_size: int, d_model: int) -> tuple[int, list[int], list[int]]:
    """(shortlist size S, the tail clusters' sizes m_i, their widths d_i = D // div_value**i), as
    ``nn.AdaptiveLogSoftmaxWithLoss`` builds them."""
    cutoffs = cutoffs_of(params, vocab_size)
    bounds = cutoffs + [vocab_size]
    sizes = [hi - lo for lo, hi in zip(bounds, bounds[1:])]
    widths = [int(d_model // params.div_value ** (i + 1)) for i in range(len(sizes))]
    return cutoffs[0], sizes, widths


@register_head
class AdaptiveHead(Head):
    """Adaptive softmax: a head softmax over a shortlist and K tail clusters, tail i of width D // div_value**i.

    Token ids are assumed ordered by decreasing frequency: the first c_1 (the shortlist) get full-width logits h W_hᵀ,
    tail cluster i (tokens c_i to c_{i+1} - 1) gets p(v) = p(cluster i) softmax((h P_iᵀ) W_iᵀ)_v with P_i (d_i x D),
    d_i = D // div_value**i, W_i (m_i x d_i). SpamLang's symbols are equally frequent, so the tail clusters are simply
    tokens given fewer dimensions. Training computes the head logits and the target's cluster only. The logits are
    the head's and every tail's, (N, V + K); the backbone receives G [W_h; W_1 P_1; ...; W_K P_K].
    """

    name = "adaptive"

    @dataclass(frozen=True)
    class Params:
        cutoffs: str = param("0.25,0.5", "tail cluster boundaries, comma-separated increasing fractions of V in (0, 1) "
                                         "(rounded to tokens; the first bounds the shortlist)")
        div_value: float = param(2.0, "tail cluster i has width D // div_value**i (at least 1)", low=1.0)

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        params = params if params is not None else self.Params()
        super().__init__(vocab_size, d_model, rank, embedding, params)
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(d_model, vocab_size, cutoffs_of(params, vocab_size),
                                                      div_value=params.div_value)
        # the linear head's scale: entries of W_h, and of each tail's product W_i P_i, of std INIT_STD (as lowrank)
        nn.init.normal_(self.adaptive.head.weight, std=INIT_STD)  # W_h (S + K, D)
        for projection, output in self.adaptive.tail:  # P_i (d_i, D), W_i (m_i, d_i)
            nn.init.normal_(projection.weight, std=1 / math.sqrt(d_model))
            nn.init.normal_(output.weight, std=INIT_STD * math.sqrt(d_model / projection.out_features))

    @classmethod
    def check_params(cls, params, vocab_size, d_model):
        widths = layout(params, vocab_size, d_model)[2]
        if widths[-1] < 1:
            raise ConfigError(f"head 'adaptive': parameter 'div_value'={params.div_value} leaves tail cluster "
                              f"{len(widths)} with width {d_model} // {params.div_value}**{len(widths)} = 0 at "
                              f"d_model={d_model} (allowed div_value <= d_model**(1/{len(widths)}) = "
                              f"{d_model ** (1 / len(widths)):.4g})")

    @classmethod
    def forward_rank_at(cls, vocab_size, d_model, rank, params):
        # a linear head's rank-r logits u on r coordinates of h: the shortlist's rows and the tails' P_i read them
        # (tail i needs d_i >= r, or d_i >= m_i - 1 to reach any of its distributions), and one more coordinate per
        # cluster of two or more tokens carries its log-sum-exp of u into the head softmax: exact
        _, sizes, widths = layout(params or cls.Params(), vocab_size, d_model)
        limits = [d for d, m in zip(widths, sizes) if d < m - 1]
        return max(0, min([d_model - sum(m >= 2 for m in sizes), *limits]))

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        """4 ((S + K) D + Σ_i (m_i / V) d_i (D + m_i)): the head logits and the target's tail (averaged over uniform
        targets), forward twice (checkpointed chunks) and backward."""
        shortlist, sizes, widths = layout(params or cls.Params(), vocab_size, d_model)
        tails = sum(m / vocab_size * d * (d_model + m) for m, d in zip(sizes, widths))
        return 4.0 * ((shortlist + len(sizes)) * d_model + tails)

    @property
    def rank(self) -> int:
        tails = sum(min(p.out_features, o.out_features) for p, o in self.adaptive.tail)
        return min(self.d_model, self.adaptive.head_size + tails)

    def _nll_sum(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the non-ignored targets of one chunk, in the weights' dtype."""
        valid = targets != IGNORE_INDEX
        with torch.autocast(h.device.type, enabled=False):
            log_p = self.adaptive(h.to(self.adaptive.head.weight.dtype), targets.masked_fill(~valid, 0)).output
        return -(log_p * valid).sum()

    def loss(self, h, targets):
        largest = max(o.out_features for _, o in self.adaptive.tail)
        return checkpointed_nll(self._nll_sum, h, targets, self.adaptive.head_size + largest)

    def log_probs(self, h):
        with torch.autocast(h.device.type, enabled=False):
            return self.adaptive.log_prob(h.to(self.adaptive.head.weight.dtype))  # (N, V)

    def maps(self) -> list[torch.Tensor]:
        """The logit maps [W_h (S + K, D), W_1 P_1 (m_1, D), ..., W_K P_K (m_K, D)]."""
        return [self.adaptive.head.weight] + [o.weight @ p.weight for p, o in self.adaptive.tail]

    def logits(self, h):
        return h @ torch.cat(self.maps()).to(h.dtype).T  # (N, V + K)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        """G w.r.t. :meth:`logits`, (N, V + K): the head softmax minus the onehot of the target's entry (its token
        or its cluster), over n_valid; on each tail, its softmax minus the onehot of the target, over n_valid, on the
        rows whose target it holds (0 on the others)."""
        valid = targets != IGNORE_INDEX
        h, maps = h.double(), [m.double() for m in self.maps()]
        bounds = self.adaptive.cutoffs  # [c_1, ..., c_K, V]
        shortlist = bounds[0]
        cluster = torch.bucketize(targets, torch.tensor(bounds, device=h.device), right=True)  # 0: the shortlist
        entry = torch.where(cluster == 0, targets, shortlist + cluster - 1)  # the target's entry in the head
        parts = [(maps[0], torch.where(valid, entry, -1))]
        parts += [(m, torch.where(valid & (cluster == i + 1), targets - lo, -1)) for i, (m, lo) in
                  enumerate(zip(maps[1:], bounds))]
        grads = []
        for m, index in parts:  # index: the target's position in this softmax, -1 where the row does not use it
            g = F.softmax(h @ m.T, dim=-1)
            used = index >= 0
            g[used, index[used]] -= 1
            grads.append(g * used[:, None])
        return torch.cat(grads, dim=1) / valid.sum(), orthonormal_basis(torch.cat(maps))
