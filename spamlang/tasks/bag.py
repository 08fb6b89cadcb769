"""Bags: each sequence draws tokens uniformly, with replacement, from its own random k-subset of the vocabulary."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spamlang.errors import ConfigError
from spamlang.params import param
from spamlang.task import Targets, Task, register_task

from spamlang.tasks._sampling import distinct_symbols


@register_task
@dataclass(frozen=True)
class Bag(Task):
    """Tokens drawn i.i.d. uniformly from a per-sequence random k-subset S of the vocabulary.

    Examples (V = 10, k = 3): ``4 1 4 8 8 1``, ``0 6 6 2 0 0``. Given u distinct symbols seen so far, the Bayes
    predictor puts 1/k on each seen symbol and (k - u) / (k (V - u)) on each unseen one; for k above what a
    rank-r head can spread its mass over, the expressivity floor exceeds the Bayes loss.
    """

    name = "bag"
    version = 1
    k: int = param(8, "size of each sequence's subset", low=1, high=4096)

    def check(self, vocab_size, seq_len):
        super().check(vocab_size, seq_len)
        if self.k > vocab_size:
            raise ConfigError(f"task 'bag': k={self.k} needs vocab_size >= k, got {vocab_size}")

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        subset = distinct_symbols(generator, num_sequences, self.k, vocab_size, device, offset, shuffle=False)
        pick = self._row_streams(generator, num_sequences, seq_len, device, offset, "pick")
        return subset.gather(1, torch.clamp((pick * self.k).long(), max=self.k - 1))

    def symbols_per_sequence(self, seq_len):
        return self.k  # the sequence's subset

    def _probs(self, seen: torch.Tensor | int, vocab_size: int):
        """(probability of each seen symbol, probability of each unseen symbol) after ``seen`` distinct symbols."""
        unseen_mass = (self.k - seen) / self.k
        per_unseen = unseen_mass / max(vocab_size - seen, 1) if isinstance(seen, int) else \
            unseen_mass / torch.clamp(vocab_size - seen, min=1)
        return 1.0 / self.k, per_unseen

    def bayes_loss(self, vocab_size, seq_len):
        k = self.k
        occupancy = [1.0] + [0.0] * k  # P(u distinct symbols among the t tokens seen), t = 0
        total = 0.0
        for _ in range(1, seq_len):
            nxt = [0.0] * (k + 1)
            for u, p in enumerate(occupancy):
                if p:
                    nxt[u] += p * u / k
                    if u < k:
                        nxt[u + 1] += p * (k - u) / k
            occupancy = nxt
            for u, p in enumerate(occupancy):
                if p:
                    seen_p, unseen_p = self._probs(u, vocab_size)
                    h = (u / k) * math.log(k)
                    if u < k:
                        h -= (k - u) / k * math.log(unseen_p)
                    total += p * h
        return total / (seq_len - 1)

    def _seen_and_distinct(self, tokens: torch.Tensor):
        """For each position t: whether x[t] appeared before t, and how many distinct symbols precede t."""
        n, length = tokens.shape
        seen = torch.zeros(n, length, dtype=torch.bool, device=tokens.device)
        distinct = torch.zeros(n, length, dtype=torch.int64, device=tokens.device)
        for t in range(1, length):
            seen[:, t] = (tokens[:, :t] == tokens[:, t:t + 1]).any(dim=1)
            distinct[:, t] = distinct[:, t - 1] + (~seen[:, t - 1]).long()
        return seen, distinct

    def log_prob(self, tokens, vocab_size):
        seen, distinct = self._seen_and_distinct(tokens)
        seen_p, unseen_p = self._probs(distinct.double(), vocab_size)
        lp = torch.where(seen, math.log(seen_p), torch.log(unseen_p))
        lp[:, 0] = 0.0
        return lp

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        tokens = self.sample(num_contexts, seq_len, vocab_size, generator.child("targets"))
        positions = 1 + generator.child("positions").integers(seq_len - 1, (num_contexts,))
        probs = torch.empty(num_contexts, vocab_size, dtype=torch.float64)
        for i, (row, t) in enumerate(zip(tokens, positions.tolist())):
            context = row[:t].unique()
            seen_p, unseen_p = self._probs(len(context), vocab_size)
            probs[i].fill_(unseen_p)
            probs[i, context] = seen_p
        weights = torch.full((num_contexts,), 1.0 / num_contexts, dtype=torch.float64)
        return Targets(probs, weights, exhaustive=False)
