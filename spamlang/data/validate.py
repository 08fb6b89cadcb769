"""The property checks every task must pass (``spamlang tasks validate``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from spamlang.errors import ConfigError
from spamlang.rng import Rng
from spamlang.task import Task


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


#: relative tolerance of the exact comparisons: float32 rounding of a log-probability is about 6e-8 of it, so a task
#: that computes in float32 passes while a real error (a wrong term, a wrong distribution) does not
ROUNDING = 1e-6
#: contexts whose target distributions are checked
CONTEXTS = 256


def _compare(what: str, value: float, reference: float, reference_name: str, se: float = 0.0) -> str:
    """Raise AssertionError unless ``value`` is within 4 standard errors plus rounding of ``reference``; return the
    comparison as text."""
    allowed = 4 * se + ROUNDING * max(1.0, abs(reference))
    shown = f"{what} {value:.9g} vs {reference_name} {reference:.9g}" + (f" (standard error {se:.2g})" if se else "")
    if not abs(value - reference) <= allowed:
        raise AssertionError(f"{shown}: difference {value - reference:.3g} exceeds the allowed {allowed:.3g}")
    return shown


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor, exhaustive: bool) -> tuple[float, float]:
    """The weighted mean of per-context ``values`` and its standard error (0 when the contexts are exhaustive)."""
    mean = (weights * values).sum()
    if exhaustive:
        return mean.item(), 0.0
    spread = (weights * (values - mean) ** 2).sum()
    return mean.item(), math.sqrt((weights ** 2).sum().item() * spread.item())


def _per_sequence(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error over sequences (independent) of per-sequence means of ``values`` (N, positions)."""
    per_seq = values.mean(dim=1)
    return per_seq.mean().item(), per_seq.std().item() / math.sqrt(len(per_seq))


def _bayes(task: Task, V: int, T: int, n: int) -> str:
    if math.isnan(task.bayes_loss(V, T)):
        return "none known (natural text): nothing to check"
    x = task.sample(n, T, V, Rng(14))
    m = task.predictable_mask(T)
    lp = task.log_prob(x, V)[:, m].double()
    if not torch.isfinite(lp).all():
        raise AssertionError("a generated token has probability 0 under the task's Bayes predictor")
    est, se = _per_sequence(-lp)
    return _compare("Monte-Carlo", est, task.bayes_loss(V, T), "exact Bayes loss", se) + f" over {n} sequences"


def _targets_of(task: Task, V: int, T: int):
    t = task.target_distributions(V, T, CONTEXTS, Rng(15))
    if t is None:
        return None
    probs, weights = t.probs.double(), t.weights.double()
    if probs.ndim != 2 or probs.shape[1] != V or weights.shape != (len(probs),):
        raise AssertionError(f"targets must be probs (C, {V}) and weights (C,), got {tuple(probs.shape)} and "
                             f"{tuple(weights.shape)}")
    if not torch.allclose(probs.sum(1), torch.ones(len(probs), dtype=torch.float64), atol=1e-6) \
            or (probs < 0).any() or abs(weights.sum().item() - 1) > 1e-6 or (weights < 0).any():
        raise AssertionError("target rows or weights do not sum to 1 (or are negative)")
    return probs, weights, t.exhaustive


def _targets(task: Task, V: int, T: int, n: int) -> str:
    """The targets are distributions whose weighted entropy is the Bayes loss (the loss of predicting each context's
    distribution exactly)."""
    targets = _targets_of(task, V, T)
    if targets is None:
        return "none given (floors are estimated only where a task gives its targets)"
    probs, weights, exhaustive = targets
    entropy, se = _weighted_mean(torch.special.entr(probs).sum(1), weights, exhaustive)
    shown = _compare("weighted entropy", entropy, task.bayes_loss(V, T), "Bayes loss", se)
    return f"{len(probs)} {'exhaustive' if exhaustive else 'sampled'} target distributions: {shown}"


def _agreement(task: Task, V: int, T: int, n: int) -> str:
    """The Bayes predictor agrees with the targets: the mean probability it gives the next token on sampled contexts
    equals the targets' collision probability sum_c w_c sum_v p_cv^2 (the chance that a draw from a context's target
    distribution is the token that was drawn), a statistic that tells apart distributions of equal entropy."""
    targets = _targets_of(task, V, T)
    if targets is None:
        return "no targets to compare"
    probs, weights, exhaustive = targets
    collision, se_targets = _weighted_mean((probs ** 2).sum(1), weights, exhaustive)
    x = task.sample(n, T, V, Rng(16))
    hit, se_sampled = _per_sequence(task.log_prob(x, V)[:, task.predictable_mask(T)].double().exp())
    se = math.sqrt(se_targets ** 2 + se_sampled ** 2)
    return _compare("log_prob's mean next-token probability", hit, collision, "targets' collision probability", se)


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
    "targets": _targets, "agreement": _agreement, "parameters": _params}


#: the largest Monte-Carlo sample of the checks: their standard errors shrink as 1/sqrt(n), and 10^7 sequences
#: already take minutes and gigabytes
MAX_SEQUENCES = 10**7
#: bytes per sampled token the checks hold at their peak: three int64 samples alive in the determinism check, or a
#: sample with its float64 log-probabilities and the task's own intermediates
BYTES_PER_TOKEN = 64


def validate(task: Task, vocab_size: int = 64, seq_len: int = 16, num_sequences: int = 4000) -> list[Check]:
    """Run every check on ``task``; a check that raises is reported as failed with its message. A sample size
    outside [2, MAX_SEQUENCES], or one whose tokens do not fit in the memory available, raises ConfigError (a
    problem of the request, not of the task)."""
    from spamlang.system.capacity import available_memory, human
    task.check(vocab_size, seq_len)
    if isinstance(num_sequences, bool) or not isinstance(num_sequences, int) or \
            not 2 <= num_sequences <= MAX_SEQUENCES:
        raise ConfigError(f"num_sequences={num_sequences!r} is outside the allowed range [2, {MAX_SEQUENCES:.0e}] "
                          f"(the Monte-Carlo checks need a spread, and gain nothing from more)")
    need, free = num_sequences * seq_len * BYTES_PER_TOKEN, available_memory("cpu")
    if free is not None and need > 0.9 * free:
        raise ConfigError(f"num_sequences={num_sequences} x seq_len={seq_len} needs about {human(need)} but the cpu "
                          f"has {human(free)} available; lower --num-sequences or --seq-len")
    results = []
    for name, fn in CHECKS.items():
        try:
            results.append(Check(name, True, fn(task, vocab_size, seq_len, num_sequences)))
        except Exception as exc:  # a check's failure, or a task bug: both are reported, not raised
            results.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    return results
