"""Thread-policy benchmarks: the policy's thread count against fixed counts, on an idle machine and beside a busy
process.

Run:  pytest benchmarks/test_threads.py --benchmark-only      (plain ``pytest`` collects only tests/)

- ``test_small_run``: a whole small run through ``spamlang.training.loop.train`` (spam, V = 2,048, D = 32, 1 layer,
  T = 8, batch 64, 100 steps, 2 evaluations), on the policy's count (1 thread: the run is below ``SERIAL_FLOPS``) and
  on 2 threads, with the machine otherwise ``idle`` and with one ``busy`` competitor (a Python busy loop, started
  before and stopped after the measurement). extra_info holds, once both arms of a condition
  have run, ``speedup_vs_2_threads`` = time on 2 threads / time under the policy (target: >= 3 busy, >= 1 idle).
- ``test_large_step``: one training step (``Trainer.train_step``) of the head-dominated configuration (V = 32,768,
  D = 64, 2-layer transformer, batch 64 x 16 tokens) on the policy's count and on 1 thread, 2 threads and all the
  cores the process may use, idle and busy. extra_info holds, once every arm of a condition has run,
  ``policy_vs_best_fixed`` = policy tokens/s / best fixed-count tokens/s (target: >= 0.95).
- ``test_step_by_size``: the evidence for ``SERIAL_FLOPS``: one training step of spam at D = 32, 1 layer, T = 8,
  batch 64 and V from 2,048 to 16,384 (2.2e8 to 1.6e9 FLOPs) on 1 and 2 threads; extra_info holds
  ``speedup_2_over_1`` per size (above 1 where two threads are faster).
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from spamlang.config import RunConfig
from spamlang.system import threads
from spamlang.training.loop import train
from spamlang.training.trainer import Trainer

SMALL = RunConfig(task="spam", vocab_size=2048, d_model=32, layers=1, seq_len=8, batch_size=64, steps=100,
                  eval_every=50, eval_sequences=128, diag_tokens=128, lr=0.01, warmup=10, device="cpu")
LARGE = RunConfig(task="spam", vocab_size=32768, d_model=64, layers=2, seq_len=17, batch_size=64, eval_sequences=8,
                  device="cpu")  # seq_len 17: 16 predicted positions per row, as benchmarks/test_perf.py
_results: dict[tuple, float] = {}


@pytest.fixture(autouse=True)
def policy_without_override(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)


@pytest.fixture
def competitor(request):
    """Nothing (``idle``), or one Python busy loop on the machine for the duration of the test (``busy``)."""
    if request.param == "idle":
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # running before anything is timed or chosen
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("competitor", ["idle", "busy"], indirect=True)
@pytest.mark.parametrize("arm", ["policy", "2 threads"])
def test_small_run(benchmark, competitor, arm, request):
    condition = request.node.callspec.params["competitor"]
    count = threads.choose(threads.step_flops(SMALL)) if arm == "policy" else 2
    benchmark.pedantic(train, args=(SMALL,), kwargs={"threads": count}, rounds=3)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(threads=count, seconds=seconds)
    print(f"\nsmall run, {condition}, {arm} ({count} thread(s)): {seconds:.2f} s")
    _results[("small", condition, arm)] = seconds
    if ("small", condition, "policy") in _results and ("small", condition, "2 threads") in _results:
        ratio = _results[("small", condition, "2 threads")] / _results[("small", condition, "policy")]
        benchmark.extra_info["speedup_vs_2_threads"] = ratio
        print(f"speedup of the policy over 2 threads, {condition}: {ratio:.2f}x")


FIXED = {"1 thread": 1, "2 threads": 2, "all cores": threads.available_cores()}


@pytest.mark.parametrize("competitor", ["idle", "busy"], indirect=True)
@pytest.mark.parametrize("arm", [*FIXED, "policy"])
def test_large_step(benchmark, competitor, arm, request):
    condition = request.node.callspec.params["competitor"]
    count = threads.choose(threads.step_flops(LARGE)) if arm == "policy" else FIXED[arm]
    with threads.using(count):
        trainer = Trainer(LARGE)
        steps = iter(range(10**9))
        benchmark.pedantic(lambda: trainer.train_step(next(steps)), rounds=10, warmup_rounds=2)
    tokens_per_s = LARGE.batch_size * (LARGE.seq_len - 1) / benchmark.stats.stats.median
    benchmark.extra_info.update(threads=count, tokens_per_s=tokens_per_s)
    print(f"\nlarge step, {condition}, {arm} ({count} thread(s)): {tokens_per_s:,.0f} tokens/s")
    _results[("large", condition, arm)] = tokens_per_s
    fixed = [_results.get(("large", condition, a)) for a in FIXED]
    if ("large", condition, "policy") in _results and None not in fixed:
        ratio = _results[("large", condition, "policy")] / max(fixed)
        benchmark.extra_info["policy_vs_best_fixed"] = ratio
        print(f"policy / best fixed count, {condition}: {ratio:.3f}")


@pytest.mark.parametrize("vocab_size", [2048, 4096, 8192, 16384])
@pytest.mark.parametrize("count", [1, 2])
def test_step_by_size(benchmark, count, vocab_size):
    config = RunConfig(**{**SMALL.to_dict(), "vocab_size": vocab_size, "eval_sequences": 8})
    with threads.using(count):
        trainer = Trainer(config)
        steps = iter(range(10**9))
        benchmark.pedantic(lambda: trainer.train_step(next(steps)), rounds=20, warmup_rounds=3)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(flops_per_step=threads.step_flops(config), threads=count, seconds=seconds)
    print(f"\nstep at V = {vocab_size:,} ({threads.step_flops(config):.1e} FLOPs), {count} thread(s): "
          f"{seconds * 1e3:.1f} ms")
    _results[("size", vocab_size, count)] = seconds
    if ("size", vocab_size, 1) in _results and ("size", vocab_size, 2) in _results:
        ratio = _results[("size", vocab_size, 1)] / _results[("size", vocab_size, 2)]
        benchmark.extra_info["speedup_2_over_1"] = ratio
        print(f"two threads over one at V = {vocab_size:,}: {ratio:.2f}x")
