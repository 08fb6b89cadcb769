"""Snapshots of runs in progress: a run stopped after a snapshot resumes from it to the history of an uninterrupted
run, bit for bit on the CPU; a snapshot that is not the run's is ignored with a warning."""
from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spamlang import record
from spamlang.config import RunConfig
from spamlang.sweeps.runner import run_suite
from spamlang.sweeps.suite import load
from spamlang.training import loop, snapshot
from spamlang.training.loop import train

BASE = dict(task="spam", vocab_size=64, d_model=16, seq_len=4, layers=1, batch_size=16, steps=40, eval_every=5,
            eval_sequences=64, diag_tokens=32, warmup=5, device="cpu", seed=3)
#: the step in whose on_step callback the first session is stopped: after the snapshot of step 25's evaluation
STOP_AT = 27


class Stop(Exception):
    pass


def stop_at(step: int):
    def on_step(done: int, steps: int) -> None:
        if done == step:
            raise Stop
    return on_step


def same_history(got, expected) -> bool:
    """Every evaluation and final metric the same bits (repr of a float is exact), wall times aside."""
    final = dataclasses.replace(got.final, tokens_per_second=expected.final.tokens_per_second)
    return (repr(got.history), repr(final), got.status, got.timing.steps) == \
        (repr(expected.history), repr(expected.final), expected.status, expected.timing.steps)


_uninterrupted: dict[str, object] = {}


def uninterrupted(config: RunConfig):
    if config.run_id not in _uninterrupted:
        _uninterrupted[config.run_id] = train(config, threads=1)
    return _uninterrupted[config.run_id]


def interrupted(config: RunConfig, path, **resume):
    """The run stopped at STOP_AT after snapshots at every evaluation, then resumed from its snapshot; the record and
    the first step the second session trained."""
    with pytest.raises(Stop):
        train(config, threads=1, snapshot=path, snapshot_every=0, on_step=stop_at(STOP_AT))
    assert path.exists()
    steps = []
    rec = train(config, threads=1, snapshot=path, snapshot_every=0, on_step=lambda done, _: steps.append(done),
                **resume)
    return rec, steps[0]


@pytest.mark.parametrize("settings", [dict(), dict(head="sampled", head_params={"negatives": 8}),
                                      dict(optimizer="sgd", grad_clip=0.5, schedule="wsd")],
                         ids=["linear", "sampled", "sgd"])
def test_a_stopped_run_resumes_to_the_uninterrupted_history(tmp_path, settings):
    config = RunConfig(**{**BASE, **settings})
    rec, first = interrupted(config, tmp_path / "run.pt")
    assert first == 26  # it resumed from the snapshot of step 25, not from the start
    assert same_history(rec, uninterrupted(config))
    assert rec.timing.eval_seconds > 0 and rec.env.threads == 1


@pytest.mark.parametrize("settings, lost", [(dict(), "optimizer"),
                                            (dict(head="sampled", head_params={"negatives": 8}), "generators")])
def test_a_resume_that_loses_state_is_caught(tmp_path, monkeypatch, settings, lost):
    """The comparison above sees a resume that resets the optimizer or the sampled head's generator."""
    config = RunConfig(**{**BASE, **settings})
    restore = loop.restore

    def forgetful(trainer, state):
        fresh = {"optimizer": trainer.optimizer.state_dict(),
                 "generators": snapshot.generator_states(trainer.model)}[lost]
        restore(trainer, {**state, lost: fresh})
    monkeypatch.setattr(loop, "restore", forgetful)
    rec, first = interrupted(config, tmp_path / "run.pt")
    assert first == 26 and not same_history(rec, uninterrupted(config))


def test_a_snapshot_of_something_else_is_ignored(tmp_path):
    config = RunConfig(**BASE)
    path = tmp_path / "run.pt"
    other = dataclasses.replace(config, lr=0.01)
    with pytest.raises(Stop):
        train(other, threads=1, snapshot=path, snapshot_every=0, on_step=stop_at(STOP_AT))
    with pytest.warns(RuntimeWarning, match="snapshot .* ignored .* other runs"):
        rec = train(config, threads=1, snapshot=path, snapshot_every=0)
    assert same_history(rec, uninterrupted(config))
    path.write_bytes(b"not a snapshot")
    with pytest.warns(RuntimeWarning, match="snapshot .* ignored"):
        assert snapshot.load(path, "run", [config]) is None


def test_a_short_run_writes_no_snapshot(tmp_path):
    path = tmp_path / "run.pt"
    train(RunConfig(**{**BASE, "steps": 10}), threads=1, snapshot=path)
    assert not path.exists()


#: a group in which one member diverges at step 2, one learns and stops at step 60 and one goes on to the cap
GROUP = [RunConfig(**{**BASE, "batch_size": 32, "steps": 100, "eval_every": 10, "stop_after": 2,
                      "schedule": "constant", "seed": seed, "lr": lr}) for seed, lr in ((0, 0.03), (1, 3e-4), (2, 1e7))]


def test_a_stopped_ensemble_resumes_to_the_uninterrupted_records(tmp_path, monkeypatch):
    """Stopped at step 75, after the snapshot of step 70 (past the stop of two members), then resumed: each member's
    record is the uninterrupted group's; a resume that resets the optimizer's moments is caught."""
    from spamlang.training import ensemble
    path = tmp_path / "group.pt"
    expected = ensemble.train_ensemble(GROUP, threads=1)
    assert [(r.status, r.timing.steps) for r in expected] == [("ok", 60), ("ok", 100), ("diverged", 2)]

    def stopped_and_resumed():
        path.unlink(missing_ok=True)
        with pytest.raises(Stop):
            ensemble.train_ensemble(GROUP, threads=1, snapshot=path, snapshot_every=0,
                                    on_step=lambda i, done, steps: stop_at(75)(done, steps))
        steps = []
        records = ensemble.train_ensemble(GROUP, threads=1, snapshot=path, snapshot_every=0,
                                          on_step=lambda i, done, _: steps.append(done))
        assert steps[0] == 71
        return records

    for got, want in zip(stopped_and_resumed(), expected):
        assert same_history(got, want) and got.env.ensemble
    resumed = ensemble._resumed

    def forgetful(members, state):
        return resumed(members, {**state, "moments": [m.zero_() for m in state["moments"]]})
    monkeypatch.setattr(ensemble, "_resumed", forgetful)
    assert not same_history(stopped_and_resumed()[1], expected[1])


LONG = """
[suite]
name = "long"
description = "runs long enough to be killed mid-way"

[defaults]
d_model = 16
layers = 1
seq_len = 4
batch_size = 16
steps = {steps}
eval_every = 20
eval_sequences = 64
diag_tokens = 32
device = "cpu"

[[grid]]
task = "spam"
vocab_size = 64
seed = {seeds}
"""


def _records(out: Path) -> dict[str, record.RunRecord]:
    return {p.stem: record.read(p) for p in (out / "runs").glob("*.json")}


def test_a_sweep_killed_after_a_snapshot_resumes_its_runs_to_the_uninterrupted_records(tmp_path):
    """``spamlang run`` (an ensemble of two runs) killed with SIGKILL once it has written a snapshot (at every
    evaluation here); the runner, run again into the same folder, resumes the group from it (its records keep the
    first session's start time) and ends with the records of an uninterrupted sweep; no snapshot is left. (The rerun
    is in this process: the command's leaderboard would take longer than the runs.)"""
    steps = 200
    path = tmp_path / "long.toml"
    path.write_text(LONG.format(steps=steps, seeds="[0, 1]"))
    out, partial = tmp_path / "out", tmp_path / "out" / "runs" / ".partial"
    cmd = [sys.executable, "-m", "spamlang", "run", str(path), "--out", str(out), "--quiet", "--lr-rounds", "0",
           "--threads", "1", "--snapshot-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # this checkout's spamlang
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(partial.glob("*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        killed = datetime.datetime.now(datetime.timezone.utc)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    snapshots = list(partial.glob("*.pt"))
    assert snapshots and not _records(out), proc.stderr.read().decode()  # killed mid-way, after a snapshot
    step = torch.load(snapshots[0], weights_only=True)["state"]["step"]
    assert 0 < step < steps
    time.sleep(1.0)  # a run started over would have a later start time (records keep whole seconds)
    suite = load(str(path))
    assert run_suite(suite, out, progress=False, lr_rounds=0, threads=1)["ok"] == 2
    expected = tmp_path / "expected"
    run_suite(suite, expected, progress=False, lr_rounds=0, threads=1)
    got, want = _records(out), _records(expected)
    assert sorted(got) == sorted(want) and len(got) == 2
    for run_id, rec in got.items():
        assert same_history(rec, want[run_id]), run_id
        assert datetime.datetime.fromisoformat(rec.created) <= killed  # resumed, not started over
    assert not list(partial.iterdir())
