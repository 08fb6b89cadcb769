"""The thread policy: the rule, its overrides, the restored count, the recorded count, and agreement across counts."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from spamlang.config import RunConfig
from spamlang.errors import SpamLangError
from spamlang.scoring import floorfit
from spamlang.sweeps.runner import run_suite
from spamlang.sweeps.suite import load
from spamlang.system import threads
from spamlang.task import Targets
from spamlang.training.loop import train
from tests.conftest import assert_user_error

SMALL = RunConfig(task="spam", vocab_size=2048, d_model=32, layers=1, seq_len=8, batch_size=64)  # 2.2e8 FLOPs
LARGE = RunConfig(task="spam", vocab_size=32768, d_model=64, layers=2, seq_len=16, batch_size=64)  # 1.3e10 FLOPs
TINY = RunConfig(task="spam", vocab_size=64, d_model=16, layers=1, seq_len=8, steps=20, eval_every=10,
                 eval_sequences=32, diag_tokens=32, device="cpu")


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)


def test_step_flops_counts_backbone_and_head():
    assert threads.step_flops(SMALL) == 3 * (12 * 32**2 + 2 * 2048 * 32) * 64 * 8
    assert threads.step_flops(SMALL) < threads.SERIAL_FLOPS < threads.step_flops(LARGE)


@pytest.mark.parametrize("cores,workers,expected", [(2, 1, 2), (16, 1, 16), (16, 4, 4), (16, 3, 5), (2, 4, 1)])
def test_large_work_gets_its_share_of_the_cores(cores, workers, expected):
    assert threads.choose(threads.step_flops(LARGE), workers, cores, idle=cores) == expected


@pytest.mark.parametrize("idle,expected", [(2.0, 2), (1.6, 2), (1.4, 1), (0.0, 1)])
def test_large_work_takes_no_more_than_the_idle_cores(idle, expected):
    assert threads.choose(threads.step_flops(LARGE), cores=2, idle=idle) == expected


def test_idle_cores_are_measured_among_the_cores_this_process_may_use():
    idle = threads.idle_cores(window=0.05)
    assert idle is None or 0 <= idle <= threads.available_cores()


@pytest.mark.parametrize("cores,workers", [(2, 1), (64, 1), (64, 8)])
def test_small_work_gets_one_thread(cores, workers):
    assert threads.choose(threads.step_flops(SMALL), workers, cores) == 1


def test_cores_come_from_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert threads.available_cores() == 6
    assert threads.choose(threads.step_flops(LARGE), workers=2, idle=6) == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.available_cores() == 3


def test_flag_wins_over_environment_which_wins_over_the_rule(monkeypatch):
    small = threads.step_flops(SMALL)
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.choose(small, cores=2) == 3
    assert threads.choose(small, cores=2, override=5) == 5
    monkeypatch.setenv(threads.ENV, "")
    assert threads.choose(small, cores=2) == 1


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_environment_value_is_refused(monkeypatch, value):
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(SpamLangError, match=threads.ENV):
        threads.choose(1.0)


def test_using_restores_the_previous_count():
    before = torch.get_num_threads()
    with threads.using(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), threads.using(1):
        raise RuntimeError("the count is restored on errors too")
    assert torch.get_num_threads() == before


def test_train_records_and_restores_the_count(monkeypatch):
    before = torch.get_num_threads()
    assert train(TINY).env.threads == 1  # small work: the rule's one thread
    assert train(TINY, threads=2).env.threads == 2
    monkeypatch.setenv(threads.ENV, "2")
    assert train(TINY).env.threads == 2
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("contexts,vocab_size,expected", [(64, 64, 1), (4096, 4096, 2)])
def test_floor_fits_run_on_the_policy_count(monkeypatch, contexts, vocab_size, expected):
    """A fit's size is 6 C V D FLOPs a step: 64 contexts x V = 64 is small, 4,096 x 4,096 at D = 16 is not."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads, "idle_cores", lambda window=0.1: 2.0)
    seen = []
    wrapped = floorfit._thread_policy(lambda targets, head, **options: seen.append(torch.get_num_threads()))
    probs = torch.full((contexts, vocab_size), 1 / vocab_size)
    wrapped(Targets(probs, torch.full((contexts,), 1 / contexts), True),
            floorfit.build_head("linear", vocab_size, 16, None))
    assert seen == [expected]


def test_cli_flag_and_bad_environment(run_cli, tmp_path, monkeypatch):
    args = ["train", "--task", "spam", "--vocab-size", "64", "--d-model", "16", "--layers", "1", "--seq-len", "8",
            "--steps", "5", "--eval-every", "5", "--eval-sequences", "16", "--device", "cpu", "--out", tmp_path,
            "--json"]
    result = run_cli(*args, "--threads", "2")
    assert result.code == 0 and json.loads(result.out)["env"]["threads"] == 2
    assert_user_error(run_cli(*args, "--threads", "0"), "--threads")
    monkeypatch.setenv(threads.ENV, "many")
    assert_user_error(run_cli(*args), threads.ENV, "'many'")


def suite_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('[suite]\nname = "tiny"\n[defaults]\nd_model = 16\nlayers = 1\nseq_len = 8\nsteps = 5\n'
                    'eval_every = 5\neval_sequences = 16\ndevice = "cpu"\n[[grid]]\ntask = "spam"\n'
                    'vocab_size = [32, 64]\n')
    return str(path)


@pytest.mark.parametrize("workers,flag,expected", [(1, None, 1), (2, None, 1), (2, 3, 3)])
def test_runner_records_each_workers_count(tmp_path, workers, flag, expected):
    out = tmp_path / "out"
    counts = run_suite(load(suite_file(tmp_path)), out, workers=workers, progress=False, lr_rounds=0,
                       threads=flag)
    assert counts["ok"] == 2
    assert {json.loads(p.read_text())["env"]["threads"] for p in (out / "runs").glob("*.json")} == {expected}


AGREEMENT = RunConfig(**{**TINY.to_dict(), "vocab_size": 2048, "d_model": 32, "steps": 60, "eval_every": 20})


def _history_in_fresh_process(env: dict, threads_count: int) -> list:
    code = ("import json, sys; from spamlang.config import RunConfig; from spamlang.training.loop import train; "
            f"print(json.dumps(train(RunConfig(**json.loads(sys.argv[1])), threads={threads_count})"
            ".to_dict()['history']))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(AGREEMENT.to_dict())], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_the_same_count_gives_the_same_bits_however_it_is_set():
    """OMP_NUM_THREADS=1 at start-up and one thread set inside the process give a bit-identical history."""
    assert _history_in_fresh_process({"OMP_NUM_THREADS": "1"}, 1) == _history_in_fresh_process({}, 1)


def test_other_counts_agree_to_float32_precision():
    """1 and 2 threads split some reductions differently: the histories agree to about 1e-7 relative, not bitwise
    (see README, 'Threads')."""
    one, two = (train(AGREEMENT, threads=n).to_dict()["history"] for n in (1, 2))
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert value == (pytest.approx(b[key], rel=1e-5) if isinstance(value, float) else b[key]), key
