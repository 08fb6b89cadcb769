"""SpamLang with a Zipf-distributed symbol: the same copy rule under heavy frequency imbalance."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from spamlang.params import param
from spamlang.task import Task, register_task

from spamlang.tasks._sampling import log_prob_of_rule, one_hot_targets


@functools.lru_cache(maxsize=8)
def zipf_probs(vocab_size: int, s: float) -> torch.Tensor:
    """P(v) proportional to (v + 1) ** -s, float64 on the CPU."""
    weights = torch.arange(1, vocab_size + 1, dtype=torch.float64).pow(-s)
    return weights / weights.sum()


@functools.lru_cache(maxsize=8)
def _zipf_cdf(vocab_size: int, s: float) -> torch.Tensor:
    return zipf_probs(vocab_size, s).cumsum(0)


@register_task
@dataclass(frozen=True)
class SpamZipf(Task):
    """As spam, but the repeated symbol v is drawn with probability proportional to (v + 1) ** -s.

    Examples (V = 10, s = 1): ``0 0 0 0``, ``0 0 0 0``, ``3 3 3 3``. Bayes loss on positions >= 1: 0.
    """

    name = "spam-zipf"
    version = 1
    deterministic = True
    s: float = param(1.0, "Zipf exponent (0 = uniform, larger = more imbalanced)", low=0.0, high=10.0)

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        u = generator.child("start").uniform((num_sequences,), "cpu", offset=offset)
        cdf = _zipf_cdf(vocab_size, self.s)
        symbol = torch.clamp(torch.searchsorted(cdf, u, right=True), max=vocab_size - 1)
        return symbol[:, None].expand(num_sequences, seq_len).contiguous().to(device)

    def symbols_per_sequence(self, seq_len):
        return 1  # one symbol per sequence

    def copies_input(self):
        return True

    def log_prob(self, tokens, vocab_size):
        return log_prob_of_rule(tokens, tokens[:, :1].expand_as(tokens), self.predictable_mask(tokens.shape[1]))

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        probs = zipf_probs(vocab_size, self.s)
        if vocab_size <= num_contexts:
            return one_hot_targets(torch.arange(vocab_size), probs.clone(), vocab_size, True)
        symbols = self.sample(num_contexts, 2, vocab_size, generator.child("targets"))[:, 0]
        return one_hot_targets(symbols, torch.ones(num_contexts, dtype=torch.float64), vocab_size, False)
