"""k-cycles: k distinct random symbols repeated in order, an in-context copy at offset k."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spamlang.errors import ConfigError
from spamlang.params import param
from spamlang.task import Task, register_task

from spamlang.tasks._sampling import distinct_symbols, log_prob_of_rule, uniform_one_hot_targets


@register_task
@dataclass(frozen=True)
class Cycle(Task):
    """k distinct symbols in random order, repeated: x[t] = x[t - k]. Positions >= k are predictable.

    Examples (V = 10, k = 3): ``5 0 8 5 0 8 5``, ``2 9 4 2 9 4 2``. Bayes loss on positions >= k: 0.
    """

    name = "cycle"
    version = 1
    deterministic = True
    k: int = param(3, "cycle length (number of distinct symbols)", low=1, high=4096)

    def check(self, vocab_size, seq_len):
        super().check(vocab_size, seq_len)
        if self.k > vocab_size:
            raise ConfigError(f"task 'cycle': k={self.k} needs vocab_size >= k, got {vocab_size}")
        if self.k >= seq_len:
            raise ConfigError(f"task 'cycle': k={self.k} needs seq_len > k, got {seq_len}")

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        symbols = distinct_symbols(generator, num_sequences, self.k, vocab_size, device, offset, shuffle=True)
        return symbols.repeat(1, -(-seq_len // self.k))[:, :seq_len].contiguous()

    def symbols_per_sequence(self, seq_len):
        return self.k  # the sequence's k distinct symbols

    def copies_input(self):
        return self.k == 1  # a 1-cycle repeats its symbol

    def predictable_mask(self, seq_len):
        return torch.arange(seq_len) >= self.k

    def log_prob(self, tokens, vocab_size):
        expected = torch.cat([tokens[:, :self.k], tokens[:, :-self.k]], dim=1)
        return log_prob_of_rule(tokens, expected, self.predictable_mask(tokens.shape[1]))

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        return uniform_one_hot_targets(vocab_size, num_contexts, generator)
