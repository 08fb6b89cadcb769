"""Sigsoftmax (Kanai et al. 2018, "Sigsoftmax: Reanalysis of the Softmax Bottleneck", NeurIPS)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spamlang.diagnostics import orthonormal_basis
from spamlang.heads.base import register_head
from spamlang.heads.linear import LinearHead
from spamlang.loss import IGNORE_INDEX, checkpointed_nll, compute_dtype, logit_gradient


def sig_log_probs(z: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ∝ exp(z) σ(z) over the last dimension: log_softmax(f(z)), f(z) = z + log σ(z)."""
    return F.log_softmax(z + F.logsigmoid(z), dim=-1)


@register_head
class SigsoftmaxHead(LinearHead):
    """Sigsoftmax: p ∝ exp(z) σ(z), z = h Wᵀ, W (V x D): log-probabilities z + log σ(z) - c, not confined to rank D.

    The logit gradient G = ∂L/∂z = f'(z) ⊙ (p - onehot) / n_valid, with f'(z) = 2 - σ(z) in (1, 2), still reaches the
    backbone as G W: the gradient bottleneck of the linear head, with a forward map whose log-probabilities are not
    bounded to rank D.
    """

    name = "sigsoftmax"

    @classmethod
    def forward_rank(cls, d_model, rank):
        # any rank D - 1 logits u: z = u + c (one direction of h spent on c) gives f(z) = u + c - softplus(-u - c),
        # which tends to u + c as c grows; so it approaches every output of a linear head of rank D - 1
        return d_model - 1

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        return 4.0 * vocab_size * d_model  # z = h Wᵀ forward twice (checkpointed chunks) and backward

    def log_probs(self, h):
        dtype = compute_dtype(h, self.weight)
        with torch.autocast(h.device.type, enabled=False):
            return sig_log_probs(h.to(dtype) @ self.weight.to(dtype).T)  # (N, V), in fp32 or float64

    def _nll_sum(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the non-ignored targets of one chunk."""
        valid = targets != IGNORE_INDEX
        log_p = self.log_probs(h).gather(1, targets.masked_fill(~valid, 0)[:, None]).squeeze(1)  # (c,)
        return -(log_p * valid).sum()

    def loss(self, h, targets):
        return checkpointed_nll(self._nll_sum, h, targets, self.vocab_size)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        """G w.r.t. z = h Wᵀ, (N, V): (2 - σ(z)) ⊙ (p - onehot) / n_valid."""
        w = self.weight.double()
        z = h.double() @ w.T
        return logit_gradient(z + F.logsigmoid(z), targets) * (2 - torch.sigmoid(z)), orthonormal_basis(w)
