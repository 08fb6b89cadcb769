"""Every built-in task: determinism, shapes, its defining invariant, and its exact Bayes loss."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from spamlang import TASKS, ConfigError, Rng, make_task
from spamlang.data.validate import validate

BUILTIN = ["bag", "cycle", "permutation", "shift", "spam", "spam-noisy", "spam-zipf"]
V, T = 50, 12


def test_all_builtins_registered():
    assert set(BUILTIN) <= set(TASKS.names())


@pytest.mark.parametrize("name", BUILTIN)
def test_validate_passes(name):
    results = validate(make_task(name), vocab_size=V, seq_len=T, num_sequences=3000)
    assert all(r.ok for r in results), [r for r in results if not r.ok]


@pytest.mark.parametrize("name", BUILTIN)
def test_determinism_and_shape(name):
    task = make_task(name)
    a, b = task.sample(64, T, V, Rng(3)), task.sample(64, T, V, Rng(3))
    assert a.dtype == torch.int64 and a.shape == (64, T)
    assert torch.equal(a, b)
    assert not torch.equal(a, task.sample(64, T, V, Rng(4)))
    assert 0 <= a.min() and a.max() < V


def test_known_tokens_are_stable():
    """Pins the bytes of SpamLang v1: changing them requires bumping the task's version."""
    assert make_task("spam").sample(4, 3, 1000, Rng(0))[:, 0].tolist() == [816, 429, 674, 187]
    assert make_task("spam").version == 1


def test_spam_rows_constant():
    x = make_task("spam").sample(200, T, V, Rng(0))
    assert (x == x[:, :1]).all()
    assert len(x[:, 0].unique()) > V // 2  # the symbol varies across rows


def test_zipf_frequencies_follow_the_law():
    x = make_task("spam-zipf", {"s": 1.0}).sample(20000, 2, 10, Rng(0))[:, 0]
    freq = torch.bincount(x, minlength=10).double() / len(x)
    expected = 1 / torch.arange(1, 11, dtype=torch.float64)
    assert torch.allclose(freq, expected / expected.sum(), atol=0.01)


def test_cycle_period_and_distinct():
    k = 4
    x = make_task("cycle", {"k": k}).sample(100, T, V, Rng(0))
    assert (x[:, k:] == x[:, :-k]).all()
    assert all(len(set(row[:k].tolist())) == k for row in x)


def test_permutation_consistent_across_sequences():
    x = make_task("permutation").sample(500, T, V, Rng(0))
    mapping = {}
    for a, b in zip(x[:, :-1].flatten().tolist(), x[:, 1:].flatten().tolist()):
        assert mapping.setdefault(a, b) == b
    assert sorted(set(mapping.values())) == sorted(mapping)  # a bijection on what was seen
    assert not torch.equal(x, make_task("permutation", {"perm_seed": 1}).sample(500, T, V, Rng(0)))


def test_shift_arithmetic():
    x = make_task("shift", {"s": 7}).sample(100, T, V, Rng(0))
    assert ((x[:, :-1] + 7) % V == x[:, 1:]).all()


def test_bag_symbols_within_subset():
    k = 3
    x = make_task("bag", {"k": k}).sample(300, 40, V, Rng(0))
    sizes = [len(set(row.tolist())) for row in x]
    assert max(sizes) == k and min(sizes) >= 1


def test_noisy_rate():
    x = make_task("spam-noisy", {"p": 0.5}).sample(4000, T, 1000, Rng(0))
    changed = (x[:, 1:] != x[:, :1]).double().mean().item()
    assert abs(changed - 0.5 * (1 - 1 / 1000)) < 0.01


def _plugin_entropy(task, vocab, length, n):
    """Model-free estimate of the mean conditional entropy: exact counts of every (prefix, next) pair."""
    x = task.sample(n, length, vocab, Rng(99)).tolist()
    mask = task.predictable_mask(length)
    total = 0.0
    for t in range(length):
        if not mask[t]:
            continue
        joint = Counter(tuple(row[:t + 1]) for row in x)
        prefix = Counter(tuple(row[:t]) for row in x)
        total += -sum(c / n * math.log(c / prefix[key[:-1]]) for key, c in joint.items())
    return total / int(mask.sum())


@pytest.mark.parametrize("name,params", [("bag", {"k": 2}), ("bag", {"k": 3}), ("spam-noisy", {"p": 0.4})])
def test_bayes_loss_against_counting(name, params):
    """The exact formula against a count-based estimate that knows nothing about the task (tiny V and T)."""
    task = make_task(name, params)
    estimate = _plugin_entropy(task, 4, 4, 200000)
    assert abs(estimate - task.bayes_loss(4, 4)) < 0.01


def test_bayes_loss_hand_checked():
    # bag with k = V: every next token is uniform over V
    assert make_task("bag", {"k": 5}).bayes_loss(5, 7) == pytest.approx(math.log(5))
    # bag with k = 1 is spam
    assert make_task("bag", {"k": 1}).bayes_loss(9, 7) == pytest.approx(0.0)
    # noisy with p = 1: uniform
    assert make_task("spam-noisy", {"p": 1.0}).bayes_loss(6, 5) == pytest.approx(math.log(6))
    assert make_task("spam").bayes_loss(10**6, 10) == 0.0


@pytest.mark.parametrize("name,params,vocab,length", [
    ("spam-noisy", {"p": 1.5}, V, T), ("spam-noisy", {"p": "x"}, V, T), ("bag", {"k": 0}, V, T),
    ("cycle", {"k": 12}, V, 12), ("shift", {"s": 50}, 50, T), ("spam", {"q": 1}, V, T), ("spam", {}, 1, T),
    ("spam", {}, V, 1), ("spam", {}, 2**31, T)])
def test_bad_parameters(name, params, vocab, length):
    with pytest.raises(ConfigError):
        make_task(name, params).check(vocab, length)


def test_targets_are_distributions():
    for name in BUILTIN:
        t = make_task(name).target_distributions(V, T, 32, Rng(0))
        assert t is not None
        assert torch.allclose(t.probs.sum(1), torch.ones(len(t.probs), dtype=torch.float64))
        assert t.weights.sum().item() == pytest.approx(1.0)


def test_rows_independent_of_chunking():
    task = make_task("cycle", {"k": 5})
    full = task.sample(30, T, V, Rng(5))
    parts = torch.cat([task.sample(10, T, V, Rng(5), offset=o) for o in (0, 10, 20)])
    assert torch.equal(full, parts)


def test_grid_of_validations_small_vocab():
    for name, vocab in itertools.product(["cycle", "bag"], [3, 7]):
        params = {"k": 2}
        assert all(r.ok for r in validate(make_task(name, params), vocab, 6, 1000))
