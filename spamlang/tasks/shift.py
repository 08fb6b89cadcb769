"""A modular shift: x[t+1] = (x[t] + s) mod V from a uniform random start."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spamlang.errors import ConfigError
from spamlang.params import param
from spamlang.task import Task, register_task

from spamlang.tasks._sampling import first_symbols, log_prob_of_rule, uniform_one_hot_targets


@register_task
@dataclass(frozen=True)
class Shift(Task):
    """A uniform random start, then each token is the previous one plus s, modulo V.

    Examples (V = 10, s = 3): ``4 7 0 3 6 9``, ``8 1 4 7 0 3``. Bayes loss on positions >= 1: 0.
    """

    name = "shift"
    version = 1
    deterministic = True
    s: int = param(1, "the shift added at each step (1 <= s < V)", low=1, high=2**31 - 2)

    def check(self, vocab_size, seq_len):
        super().check(vocab_size, seq_len)
        if self.s >= vocab_size:
            raise ConfigError(f"task 'shift': s={self.s} needs s < vocab_size={vocab_size}")

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        start = first_symbols(generator, num_sequences, vocab_size, device, offset)
        steps = torch.arange(seq_len, device=device, dtype=torch.int64) * self.s
        return (start[:, None] + steps[None, :]) % vocab_size

    def log_prob(self, tokens, vocab_size):
        expected = torch.cat([tokens[:, :1], (tokens[:, :-1] + self.s) % vocab_size], dim=1)
        return log_prob_of_rule(tokens, expected, self.predictable_mask(tokens.shape[1]))

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        return uniform_one_hot_targets(vocab_size, num_contexts, generator)
