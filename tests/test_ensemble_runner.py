"""Ensembles in the suite runner: which runs share one computation, records that do not depend on it (in-process,
worker processes, Ray, the command line's --no-ensemble), a diverging member, a group that raises, kill -9 mid-group."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

from spamlang import record
from spamlang.config import RunConfig
from spamlang.sweeps.runner import run_suite, work_items
from spamlang.sweeps.suite import load
from spamlang.training.ensemble import ENSEMBLE_FLOPS, MAX_MEMBERS, max_members, train_ensemble
from tests.test_ensemble import assert_same_run
from tests.test_suite import tiny


def suite_file(tmp_path, steps: int = 20, eval_every: int = 10, seeds: str = "[0, 1, 2]",
               lrs: str = "[0.01, 1e7]"):
    """The tiny suite cut to two configurations (linear at V = 16, lowrank:2 at V = 32) of ``seeds`` x ``lrs`` runs
    (lr 1e7 diverges at step 3)."""
    path = tiny(tmp_path, steps=steps)
    text = path.read_text().replace(f"eval_every = {steps}", f"eval_every = {eval_every}")
    grid = 'vocab_size = [16, 32]\nhead = ["linear", "lowrank:2"]\n'
    text = text.replace(f'{grid}seed = [0, 1]\nexclude = [{{ head = "lowrank:2", vocab_size = 16 }}]',
                        f'{grid}seed = {seeds}\nlr = {lrs}\nexclude = [{{ head = "lowrank:2", vocab_size = 16 }}, '
                        f'{{ head = "linear", vocab_size = 32 }}]')
    assert f"seed = {seeds}" in text
    path.write_text(text)
    return path


def records(out) -> dict[str, record.RunRecord]:
    return {p.stem: record.read(p) for p in (out / "runs").glob("*.json")}


def assert_same_records(got: dict, expected: dict) -> None:
    """The same runs with the same records up to float rounding; a diverged run is compared on its status, its step
    and its evaluations before the blow-up (the values after are chaotic, see tests/test_ensemble.py)."""
    assert got.keys() == expected.keys()
    for run_id, rec in expected.items():
        if rec.status == "diverged":
            assert (got[run_id].status, got[run_id].final.steps) == ("diverged", rec.final.steps)
            assert len(got[run_id].history) == len(rec.history) and got[run_id].history[0] == rec.history[0]
        else:
            assert_same_run(got[run_id], rec)


def test_work_items_group_the_runs_of_a_configuration_that_batching_pays_for():
    base = dict(task="spam", vocab_size=64, d_model=16, seq_len=4, layers=1, batch_size=16, steps=40, device="cpu")
    runs = [RunConfig(**base, seed=s, lr=lr) for lr in (0.01, 0.03) for s in (0, 1, 2)]
    other = [RunConfig(**{**base, "head": "lowrank", "head_rank": 2}, seed=s) for s in (0, 1)]
    mixed = [runs[0], other[0], *runs[1:], other[1]]
    assert work_items(mixed) == [runs, other]  # each at the place of its first run
    assert work_items(mixed, ensemble=False) == [[c] for c in mixed]
    # not batchable: a head without a batched form, compile, an accelerator, a step above ENSEMBLE_FLOPS
    for change in (dict(head="mos"), dict(compile=True), dict(device="auto"), dict(vocab_size=4096, batch_size=256)):
        alone = [dataclasses.replace(c, **change) for c in runs[:2]]
        assert work_items(alone) == [[c] for c in alone] and max_members(alone[0]) == 1, change
    big = RunConfig(**{**base, "vocab_size": 2048, "batch_size": 128, "seq_len": 2, "d_model": 32})
    assert max_members(big) == 5 and max_members(runs[0]) == MAX_MEMBERS  # 6e8 / 1.1e8 FLOPs per step
    many = [dataclasses.replace(big, seed=s) for s in range(11)]
    assert [len(item) for item in work_items(many)] == [3, 4, 4]  # at most 5 members, as even as possible
    assert ENSEMBLE_FLOPS < 2.2e8  # the smoke suite's V = 2,048 (T = 8) gained 1.2x in training: not grouped


def test_records_do_not_depend_on_grouping_and_a_diverging_member_keeps_its_nan(run_cli, tmp_path, monkeypatch):
    import spamlang.training.ensemble
    groups = []

    def spy(configs, **kwargs):
        groups.append(len(configs))
        return train_ensemble(configs, **kwargs)
    monkeypatch.setattr(spamlang.training.ensemble, "train_ensemble", spy)
    path = suite_file(tmp_path)
    seq, ens, workers = tmp_path / "seq", tmp_path / "ens", tmp_path / "workers"
    r = run_cli("run", path, "--out", seq, "--lr-rounds", 0, "--quiet", "--no-ensemble")
    assert r.code == 0, r.err
    counts = run_suite(load(str(path)), ens, progress=False, lr_rounds=0)
    assert (counts["ok"], counts["diverged"], counts["failed"]) == (6, 6, 0) and groups == [6, 6]
    sequential, grouped = records(seq), records(ens)
    assert {r.env.ensemble for r in grouped.values()} == {True}
    assert {r.env.ensemble for r in sequential.values()} == {False}
    assert sum(r.status == "diverged" and r.config.lr == 1e7 and r.final.steps == 3 for r in grouped.values()) == 6
    assert_same_records(grouped, sequential)
    run_suite(load(str(path)), workers, progress=False, lr_rounds=0, workers=2)  # groups in worker processes
    assert_same_records(records(workers), sequential)
    # K = 1 and K = 3 give the runner's records
    configs = sorted(load(str(path)).runs, key=lambda c: c.run_id)
    ok = [c for c in configs if c.lr == 0.01 and c.head == "linear"]
    alone, = train_ensemble(ok[:1])
    assert_same_run(alone, grouped[ok[0].run_id])
    for rec in train_ensemble(ok):
        assert_same_run(rec, grouped[rec.run_id])


def test_ray_trains_ensembles(tmp_path):
    ray = pytest.importorskip("ray")
    path = suite_file(tmp_path, lrs="0.01")
    run_suite(load(str(path)), tmp_path / "seq", progress=False, lr_rounds=0, ensemble=False)
    try:
        run_suite(load(str(path)), tmp_path / "ray", executor="ray", workers=2, progress=False, lr_rounds=0)
    finally:
        ray.shutdown()
    got = records(tmp_path / "ray")
    assert {r.env.ensemble for r in got.values()} == {True}
    assert_same_records(got, records(tmp_path / "seq"))


def test_a_group_that_raises_trains_run_by_run(tmp_path, monkeypatch):
    """Every member is then trained alone, as with --no-ensemble: a healthy run is never recorded as failed; a run
    that raises alone too is failed alone, and each member gets one tracker run."""
    pytest.importorskip("tensorboard")
    import spamlang.training.ensemble
    import spamlang.training.loop
    from spamlang.training.tracking import TrackerSpec
    path = suite_file(tmp_path, lrs="0.01")
    suite = load(str(path))
    seq = tmp_path / "seq"
    run_suite(suite, seq, progress=False, lr_rounds=0, ensemble=False)

    def broken(configs, **kwargs):
        raise RuntimeError("linalg.eigh: the algorithm failed to converge")
    monkeypatch.setattr(spamlang.training.ensemble, "train_ensemble", broken)
    real, sick = spamlang.training.loop.train, suite.runs[1]

    def train(config, *args, **kwargs):
        if config.run_id == sick.run_id:
            raise RuntimeError("its own bug")
        return real(config, *args, **kwargs)
    monkeypatch.setattr(spamlang.training.loop, "train", train)
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning, match=r"the ensemble of runs 1-3 raised RuntimeError: linalg.eigh: .*; "
                                            r"training them one by one"):
        counts = run_suite(suite, out, progress=False, lr_rounds=0, tracker=TrackerSpec("tensorboard", str(out)))
    assert (counts["ok"], counts["failed"]) == (5, 1)
    got = records(out)
    assert got[sick.run_id].status == "failed" and "its own bug" in got[sick.run_id].error
    assert_same_records({k: v for k, v in got.items() if k != sick.run_id},
                        {k: v for k, v in records(seq).items() if k != sick.run_id})
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == sorted(got)  # one tracker run per member


def test_kill_9_in_the_middle_of_a_group_then_resume_loses_and_duplicates_nothing(tmp_path):
    path, out = suite_file(tmp_path, steps=1000, eval_every=1000, lrs="0.01"), tmp_path / "out"  # two groups of three
    cmd = [sys.executable, "-m", "spamlang.cli", "run", str(path), "--out", str(out), "--quiet", "--lr-rounds", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the second group is training: none of its records is written yet
    proc.wait()
    first = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    group = [record.read(out / "runs" / name) for name in first]
    assert len(group) == 3 and len({(r.config.vocab_size, r.created) for r in group}) == 1  # one group: one start
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    files = sorted((out / "runs").iterdir())
    assert len(files) == 6 and all(f.suffix == ".json" and not f.name.startswith(".") for f in files)
    assert {record.read(f).run_id for f in files} == {c.run_id for c in load(str(path)).runs}
    assert all((out / "runs" / name).read_bytes() == data for name, data in first.items())  # not redone
