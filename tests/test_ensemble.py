"""Ensemble training: each member's record is its sequential run's, whatever the group, divergence included."""
from __future__ import annotations

import dataclasses

import pytest

from spamlang.config import RunConfig
from spamlang.errors import SpamLangError
from spamlang.training.ensemble import train_ensemble
from spamlang.training.loop import train

BASE = dict(task="spam", vocab_size=64, d_model=16, seq_len=4, layers=1, batch_size=16, steps=40, eval_every=10,
            eval_sequences=64, diag_tokens=32, device="cpu")
#: (seed, lr) of a group's members
MEMBERS = ((0, 0.01), (1, 0.003), (2, 0.03))
#: float32 on the CPU: the relative deviation allowed in every metric (measured: below 2e-6)
REL = 1e-5


def configs(members=MEMBERS, **settings) -> list[RunConfig]:
    return [RunConfig(**{**BASE, **settings, "seed": seed, "lr": lr}) for seed, lr in members]


_sequential: dict[str, object] = {}


def sequential(config: RunConfig):
    """``spamlang.train(config)``, once per configuration."""
    if config.run_id not in _sequential:
        _sequential[config.run_id] = train(config)
    return _sequential[config.run_id]


def assert_same_run(got, expected) -> None:
    """Equal records up to float rounding, field by field; wall times, start time and environment are not compared,
    configurations by value (a record read back holds a RunConfig, a trained one its ResolvedConfig)."""
    assert (got.run_id, got.config.to_dict(), got.status, got.rank) == (expected.run_id, expected.config.to_dict(),
                                                                        expected.status, expected.rank)
    assert len(got.history) == len(expected.history)
    pairs = [(f"history[{i}]", a, b) for i, (a, b) in enumerate(zip(got.history, expected.history))]
    for where, a, b in pairs + [("final", got.final, expected.final)]:
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            if field.name == "tokens_per_second":
                continue
            if isinstance(y, float):
                assert x == pytest.approx(y, rel=REL, abs=1e-9), (where, field.name)
            else:
                assert x == y, (where, field.name)


@pytest.mark.parametrize("settings", [
    dict(head="linear"), dict(head="lowrank", head_rank=2), dict(head="gradproj", head_rank=4), dict(head="tied"),
    dict(backbone="gru"), dict(optimizer="sgd", weight_decay=0.1), dict(weight_decay=0.1, schedule="constant"),
    dict(seq_len=2, layers=2)],
    ids=lambda s: "-".join(map(str, s.values())))
def test_each_member_is_its_sequential_run(settings):
    group = configs(**settings)
    for got, config in zip(train_ensemble(group), group):
        expected = sequential(config)
        assert expected.status == "ok" and expected.history[-1].update_cosine is not None
        assert_same_run(got, expected)


def test_a_record_does_not_depend_on_the_group():
    """On one thread, a member's metrics are the same bits in any group (K = 1, 3), and its record says it trained
    in an ensemble."""
    alone, = train_ensemble(configs(MEMBERS[1:2]), threads=1)
    in_group = train_ensemble(configs(MEMBERS[::-1]), threads=1)[1]
    assert alone.history == in_group.history
    assert dataclasses.replace(alone.final, tokens_per_second=0) == dataclasses.replace(in_group.final,
                                                                                        tokens_per_second=0)
    assert_same_run(alone, sequential(configs()[1]))
    assert (alone.env.ensemble, in_group.env.ensemble, sequential(configs()[1]).env.ensemble) == (True, True, False)


def test_a_diverging_member_stops_alone():
    """It stops at its sequential run's step (3: an odd step, so the loss is checked every step on the CPU); its
    exploding values are chaotic (rounding amplified by lr / eps), so only the record around them is compared."""
    group = configs(((0, 0.01), (1, 1e7), (2, 0.03)))
    records = train_ensemble(group)
    got, expected = records[1], sequential(group[1])
    assert expected.status == "diverged" and expected.final.steps == 3
    assert (got.status, got.final.steps, got.timing.steps) == ("diverged", 3, 3)
    assert got.history == expected.history and got.final.coverage == expected.final.coverage
    for i in (0, 2):
        assert_same_run(records[i], sequential(group[i]))


def test_callbacks_and_timing():
    evals, steps = [], []
    records = train_ensemble(configs(MEMBERS[:2]), on_eval=lambda i, p: evals.append((i, p.step)),
                             on_step=lambda i, done, total: steps.append((i, done, total)))
    assert sorted(evals) == [(i, s) for i in range(2) for s in range(0, 41, 10)]
    assert len(steps) == 80 and steps[-1] == (1, 40, 40)
    for rec in records:
        t = rec.timing
        assert t.steps == 40 and 0 < t.train_seconds and 0 < t.eval_seconds < t.total_seconds
        assert rec.final.tokens_per_second == pytest.approx(40 * 16 * 4 / t.train_seconds)


@pytest.mark.parametrize("change,field", [
    (dict(d_model=32), "d_model"), (dict(head="lowrank", head_rank=2), "head"), (dict(steps=20), "steps"),
    (dict(eval_seed=1), "eval_seed"), (dict(task_params={"k": 4}, task="bag"), "task")])
def test_members_may_differ_only_in_seed_and_lr(change, field):
    group = configs()
    group[2] = RunConfig(**{**group[2].to_dict(), **change})
    with pytest.raises(SpamLangError, match=f"differ in '{field}'") as err:
        train_ensemble(group)
    assert "\n" not in str(err.value)


def test_refuses_what_it_cannot_batch():
    with pytest.raises(SpamLangError, match="no batched head 'mos'"):
        train_ensemble(configs(head="mos"))
    with pytest.raises(SpamLangError, match="at least one"):
        train_ensemble([])


def test_a_member_learned_at_stop_after_evaluations_in_a_row_stops_alone():
    """The time-to-learn protocol's early stop: a member stops where its own run stops (its record says 'learned'),
    the others go on to the cap."""
    group = configs(members=((0, 0.03), (1, 0.0003)), steps=100, schedule="constant", stop_after=2, batch_size=32)
    records = train_ensemble(group)
    expected = [sequential(config) for config in group]
    assert [r.final.stopped for r in expected] == ["learned", "cap"]  # the fast lr learns, the slow one does not
    for got, want in zip(records, expected):
        assert_same_run(got, want)
