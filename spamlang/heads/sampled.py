"""Sampled softmax (Jean et al. 2015, "On Using Very Large Target Vocabulary for Neural Machine Translation", ACL)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spamlang.diagnostics import orthonormal_basis
from spamlang.errors import ConfigError
from spamlang.heads.base import register_head
from spamlang.heads.linear import LinearHead
from spamlang.loss import IGNORE_INDEX, checkpointed_nll, compute_dtype, logit_gradient
from spamlang.params import param


def negative_count(params, vocab_size: int) -> int:
    """k: ``params.negatives``, or min(64, V - 1) when it (or ``params``) is None."""
    negatives = params.negatives if params is not None else None
    return negatives if negatives is not None else min(64, vocab_size - 1)


@register_head
class SampledHead(LinearHead):
    """Sampled softmax: W (V x D) trained on the target and k uniform negatives per step; evaluated on all V.

    Each loss call draws k distinct negatives uniformly (the only proposal: the head does not see the tokens'
    frequencies), shared by all its positions; a position's loss is the cross-entropy of its target among the target
    and the negatives, a negative equal to the target (an accidental hit) left out. The log-q correction subtracts
    log(k / V), each token's chance of being drawn, from every candidate's logit: a constant under the uniform
    proposal, which the softmax ignores, so it is implicit. The negatives come from the head's own generator, seeded
    from torch's global one when the head is built (the harness seeds that with the run's seed) and drawn on the CPU:
    a seed gives the same negatives on every device. ``log_probs`` is the full softmax of h Wᵀ.
    """

    name = "sampled"

    @dataclass(frozen=True)
    class Params:
        negatives: int | None = param(None, "number k of negatives drawn per step, shared by its positions, below V "
                                             "(None: min(64, V - 1))", low=1)

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        params = params if params is not None else self.Params()
        super().__init__(vocab_size, d_model, rank, embedding, params)
        self.k = negative_count(params, vocab_size)
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (), device="cpu")))

    @classmethod
    def check_params(cls, params, vocab_size, d_model):
        if params.negatives is not None and params.negatives >= vocab_size:
            raise ConfigError(f"head 'sampled': parameter 'negatives'={params.negatives} must be below vocab_size="
                              f"{vocab_size} (allowed [1, {vocab_size - 1}])")

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        """4 (k + 1) D: the target's and the negatives' logits, forward twice (checkpointed chunks) and backward."""
        return 4.0 * (negative_count(params, vocab_size) + 1) * d_model

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """k distinct token ids (k,), uniform over V, from ``generator`` (on the CPU)."""
        return torch.randperm(self.vocab_size, generator=generator)[: self.k]

    def _nll_sum(self, h: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the non-ignored targets of one chunk among the candidates, in fp32 or
        float64."""
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        dtype = compute_dtype(h, self.weight)
        with torch.autocast(h.device.type, enabled=False):
            h, w = h.to(dtype), self.weight.to(dtype)
            target = (h * w[safe]).sum(dim=1)  # (c,)
            z = (h @ w[negatives].T).masked_fill(negatives == safe[:, None], float("-inf"))  # (c, k), hits left out
            nll = torch.logsumexp(torch.cat([target[:, None], z], dim=1), dim=1) - target  # (c,)
        return (nll * valid).sum()

    def loss(self, h, targets):
        negatives = self.draw(self.generator).to(h.device)
        return checkpointed_nll(self._nll_sum, h, targets, self.k + 1, negatives)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        """G w.r.t. z = h Wᵀ, (N, V), of the loss with the negatives the next loss call will draw (the head's
        generator is not advanced): (q - onehot) / n_valid on the target and the negatives, q their softmax, 0 on the
        other tokens."""
        negatives = self.draw(torch.Generator().set_state(self.generator.get_state())).to(h.device)
        valid = targets != IGNORE_INDEX
        w = self.weight.double()
        candidates = torch.zeros(len(h), self.vocab_size, dtype=torch.bool, device=h.device)  # (N, V)
        candidates[:, negatives] = True
        candidates[valid, targets[valid]] = True
        z = (h.double() @ w.T).masked_fill(~candidates, float("-inf"))
        return logit_gradient(z, targets), orthonormal_basis(w)
