"""Sampling helpers shared by the built-in tasks."""
from __future__ import annotations

import torch

from spamlang.rng import Rng


def distinct_symbols(rng: Rng, num_sequences: int, k: int, vocab_size: int, device, offset: int,
                     shuffle: bool) -> torch.Tensor:
    """(num_sequences, k) int64: a uniformly random k-subset of [0, V) per row (Floyd's algorithm, vectorised).

    With ``shuffle`` the subset comes in uniformly random order; without it the order is Floyd's.
    """
    u = rng.child("floyd", k).uniform((num_sequences * k,), device, offset=offset * k).reshape(num_sequences, k)
    chosen = torch.empty(num_sequences, k, dtype=torch.int64, device=device)
    for i, j in enumerate(range(vocab_size - k, vocab_size)):
        t = torch.clamp((u[:, i] * (j + 1)).long(), max=j)
        dup = (chosen[:, :i] == t[:, None]).any(dim=1)
        chosen[:, i] = torch.where(dup, torch.full_like(t, j), t)
    if shuffle:
        keys = rng.child("order", k).uniform((num_sequences * k,), device, offset=offset * k).reshape(num_sequences, k)
        chosen = chosen.gather(1, keys.argsort(dim=1))
    return chosen


def first_symbols(rng: Rng, num_sequences: int, vocab_size: int, device, offset: int) -> torch.Tensor:
    """(num_sequences,) int64 uniform on [0, V): the start symbol of each row."""
    return rng.child("start").integers(vocab_size, (num_sequences,), device, offset=offset)


def one_hot_targets(symbols: torch.Tensor, weights: torch.Tensor, vocab_size: int, exhaustive: bool):
    """Targets made of one-hot next-token distributions."""
    from spamlang.task import Targets
    probs = torch.zeros(len(symbols), vocab_size, dtype=torch.float64)
    probs[torch.arange(len(symbols)), symbols] = 1.0
    return Targets(probs, weights / weights.sum(), exhaustive)


def uniform_one_hot_targets(vocab_size: int, num_contexts: int, rng: Rng):
    """One-hot targets for a task whose next token is uniform over the vocabulary at every predictable position."""
    if vocab_size <= num_contexts:
        return one_hot_targets(torch.arange(vocab_size), torch.ones(vocab_size, dtype=torch.float64), vocab_size, True)
    symbols = rng.child("targets").integers(vocab_size, (num_contexts,))
    return one_hot_targets(symbols, torch.ones(num_contexts, dtype=torch.float64), vocab_size, False)


def log_prob_of_rule(tokens: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bayes log-probabilities of a deterministic rule: 0 where the token is the expected one, -inf where not."""
    out = torch.where(tokens == expected, 0.0, float("-inf")).double()
    return torch.where(mask.to(tokens.device)[None, :], out, torch.zeros_like(out))
