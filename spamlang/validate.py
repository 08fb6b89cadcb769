"""The property checks every task must pass (``spamlang tasks validate``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError
from .rng import Rng
from .task import Task


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _determinism(task: Task, V: int, T: int, n: int) -> str:
    a = task.sample(n, T, V, Rng(11))
    if not torch.equal(a, task.sample(n, T, V, Rng(11))):
        raise AssertionError("the same seed gave different tokens")
    if torch.equal(a, task.sample(n, T, V, Rng(12))):
        raise AssertionError("seeds 11 and 12 gave identical tokens")
    part = task.sample(n // 2, T, V, Rng(11), offset=n // 4)
    if not torch.equal(part, a[n // 4: n // 4 + n // 2]):
        raise AssertionError("row i depends on how many rows are drawn (offset slice differs)")
    return f"{n} sequences: same seed identical, other seed different, slices reproducible"


def _tokens(task: Task, V: int, T: int, n: int) -> str:
    x = task.sample(n, T, V, Rng(13))
    if x.dtype != torch.int64 or tuple(x.shape) != (n, T):
        raise AssertionError(f"expected ({n}, {T}) int64, got {tuple(x.shape)} {x.dtype}")
    if x.min() < 0 or x.max() >= V:
        raise AssertionError(f"tokens outside [0, {V}): min {x.min().item()}, max {x.max().item()}")
    return f"shape ({n}, {T}) int64, tokens in [0, {V})"


def _mask(task: Task, V: int, T: int, n: int) -> str:
    m = task.predictable_mask(T)
    if m.dtype != torch.bool or tuple(m.shape) != (T,) or not m.any() or m[0]:
        raise AssertionError(f"mask must be bool ({T},), position 0 off, some position on; got {m.tolist()}")
    return f"{int(m.sum())} of {T} positions predictable"


def _bayes(task: Task, V: int, T: int, n: int) -> str:
    if math.isnan(task.bayes_loss(V, T)):
        return "none known (natural text): nothing to check"
    x = task.sample(n, T, V, Rng(14))
    m = task.predictable_mask(T)
    lp = task.log_prob(x, V)[:, m]
    if not torch.isfinite(lp).all():
        raise AssertionError("a generated token has probability 0 under the task's Bayes predictor")
    per_seq = -lp.mean(dim=1)  # sequences are independent: the standard error comes from them
    est, se = per_seq.mean().item(), per_seq.std().item() / math.sqrt(n)
    exact = task.bayes_loss(V, T)
    if not abs(est - exact) <= 4 * se + 1e-9:
        raise AssertionError(f"exact Bayes loss {exact:.6f} vs Monte-Carlo {est:.6f} ± {se:.6f}")
    return f"exact {exact:.6f} nats, Monte-Carlo {est:.6f} ± {se:.6f} over {n} sequences"


def _targets(task: Task, V: int, T: int, n: int) -> str:
    t = task.target_distributions(V, T, 64, Rng(15))
    if t is None:
        return "none given (floors are estimated only where a task gives its targets)"
    if not torch.allclose(t.probs.sum(1), torch.ones(len(t.probs), dtype=t.probs.dtype), atol=1e-6) \
            or (t.probs < 0).any() or abs(t.weights.sum().item() - 1) > 1e-6:
        raise AssertionError("target rows or weights do not sum to 1")
    return f"{len(t.probs)} target distributions ({'exhaustive' if t.exhaustive else 'sampled'})"


def _bad_value(f: dataclasses.Field):
    """A value of the wrong kind or outside the declared range, or None if the field admits everything."""
    m = f.metadata
    if m.get("low") is not None:
        return m["low"] - 1
    if m.get("high") is not None:
        return m["high"] + 1
    return None


def _params(task: Task, V: int, T: int, n: int) -> str:
    cls, tried = type(task), 0
    for f in dataclasses.fields(cls):
        for bad in (_bad_value(f), "not-a-number" if f.type in ("int", "float", int, float) else None):
            if bad is None:
                continue
            tried += 1
            try:
                cls(**{f.name: bad})
            except ConfigError:
                continue
            raise AssertionError(f"parameter '{f.name}'={bad!r} was accepted")
    return f"{tried} bad values rejected" if tried else "no parameters"


CHECKS: dict[str, Callable[[Task, int, int, int], str]] = {
    "determinism": _determinism, "token range": _tokens, "mask": _mask, "bayes loss": _bayes,
    "targets": _targets, "parameters": _params}


def validate(task: Task, vocab_size: int = 64, seq_len: int = 16, num_sequences: int = 4000) -> list[Check]:
    """Run every check on ``task``; a check that raises is reported as failed with its message."""
    task.check(vocab_size, seq_len)
    results = []
    for name, fn in CHECKS.items():
        try:
            results.append(Check(name, True, fn(task, vocab_size, seq_len, num_sequences)))
        except Exception as exc:  # a check's failure, or a task bug: both are reported, not raised
            results.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    return results
