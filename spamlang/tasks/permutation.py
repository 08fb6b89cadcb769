"""A fixed random permutation bigram: x[t+1] = pi(x[t]) for one permutation pi of the vocabulary."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from spamlang.params import param
from spamlang.rng import Rng
from spamlang.task import Task, register_task

from spamlang.tasks._sampling import first_symbols, log_prob_of_rule, uniform_one_hot_targets


@functools.lru_cache(maxsize=4)
def permutation(vocab_size: int, perm_seed: int) -> torch.Tensor:
    """The task's permutation of [0, V), on the CPU; the same for every sequence, run and device."""
    return Rng(perm_seed, "permutation", vocab_size).uniform((vocab_size,)).argsort()


@register_task
@dataclass(frozen=True)
class Permutation(Task):
    """A uniform random start, then x[t+1] = pi(x[t]) for a permutation pi fixed by ``perm_seed``.

    Example (V = 5, pi = [3, 0, 4, 1, 2]): ``1 0 3 1 0 3``, ``2 4 2 4 2 4``. Bayes loss on positions >= 1: 0.
    """

    name = "permutation"
    version = 1
    deterministic = True
    perm_seed: int = param(0, "seed of the permutation (shared by all sequences)", low=0, high=2**32 - 1)

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        pi = permutation(vocab_size, self.perm_seed).to(device)
        tokens = torch.empty(num_sequences, seq_len, dtype=torch.int64, device=device)
        tokens[:, 0] = first_symbols(generator, num_sequences, vocab_size, device, offset)
        for t in range(1, seq_len):
            tokens[:, t] = pi[tokens[:, t - 1]]
        return tokens

    def log_prob(self, tokens, vocab_size):
        pi = permutation(vocab_size, self.perm_seed).to(tokens.device)
        expected = torch.cat([tokens[:, :1], pi[tokens[:, :-1]]], dim=1)
        return log_prob_of_rule(tokens, expected, self.predictable_mask(tokens.shape[1]))

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        return uniform_one_hot_targets(vocab_size, num_contexts, generator)
