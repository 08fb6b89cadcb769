"""SpamLang with noise: after the first token, each token is replaced by a uniform random one with probability p."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spamlang.params import param
from spamlang.task import Targets, Task, register_task

from spamlang.tasks._sampling import first_symbols


@register_task
@dataclass(frozen=True)
class SpamNoisy(Task):
    """The first token is the sequence's symbol; each later token is that symbol with probability 1 - p, else uniform.

    Examples (V = 10, p = 0.2): ``4 4 4 9 4 4``, ``1 1 1 1 1 6``. The next-token distribution puts 1 - p + p/V on the
    symbol and p/V on every other token, so the Bayes loss is that distribution's entropy.
    """

    name = "spam-noisy"
    version = 1
    p: float = param(0.1, "probability that a token after the first is uniform noise", low=0.0, high=1.0)

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        symbol = first_symbols(generator, num_sequences, vocab_size, device, offset)
        noise = self._row_streams(generator, num_sequences, seq_len, device, offset, "noise") < self.p
        random = self._row_streams(generator, num_sequences, seq_len, device, offset, "random")
        random = torch.clamp((random * vocab_size).long(), max=vocab_size - 1)
        noise[:, 0] = False
        return torch.where(noise, random, symbol[:, None].expand(num_sequences, seq_len))

    def symbols_per_sequence(self, seq_len):
        return 1  # one symbol per sequence

    def copies_input(self):
        return self.p < 1  # the symbol stays the most likely next token unless every token is noise

    def _next_probs(self, vocab_size: int) -> tuple[float, float]:
        """(probability of the symbol, probability of each other token)."""
        other = self.p / vocab_size
        return 1.0 - self.p + other, other

    def bayes_loss(self, vocab_size, seq_len):
        hit, other = self._next_probs(vocab_size)
        return -hit * math.log(hit) - (vocab_size - 1) * (other * math.log(other) if other > 0 else 0.0)

    def log_prob(self, tokens, vocab_size):
        hit, other = self._next_probs(vocab_size)
        lp = torch.where(tokens == tokens[:, :1], math.log(hit), math.log(other) if other > 0 else float("-inf"))
        lp = lp.double()
        lp[:, 0] = 0.0
        return lp

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        hit, other = self._next_probs(vocab_size)
        exhaustive = vocab_size <= num_contexts
        symbols = torch.arange(vocab_size) if exhaustive else first_symbols(generator.child("targets"), num_contexts,
                                                                             vocab_size, "cpu", 0)
        probs = torch.full((len(symbols), vocab_size), other, dtype=torch.float64)
        probs[torch.arange(len(symbols)), symbols] = hit
        weights = torch.full((len(symbols),), 1.0 / len(symbols), dtype=torch.float64)
        return Targets(probs, weights, exhaustive)
