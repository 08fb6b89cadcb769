"""Ensemble training against sequential runs: a slice of the cliff suite, and the per-step cost model of grouping.

Run:  pytest benchmarks/test_ensemble_perf.py --benchmark-only      (plain ``pytest`` collects only tests/)

``test_nine_runs``: the nine runs of one cliff configuration (spam, D = 32, 1 layer, T = 2, batch V / 16, 100 steps,
an evaluation every 16 steps on 512 sequences; seeds 0, 1, 2 x lr 0.003, 0.01, 0.03) at V = 256 and 1,024, trained
``sequential``-ly (nine ``spamlang.train`` calls) and as one ``ensemble`` (``training.ensemble.train_ensemble``), on
one thread each. extra_info holds the wall time of the nine runs and their training time (the sum of their records'
``timing.train_seconds``: for the ensemble, the wall time of its batched steps), and, once both arms of a V have
run, ``speedup_train`` and ``speedup_whole_run`` (sequential / ensemble, setup and evaluations included): ratios
measured in the same session, so that a loaded machine slows both arms alike.

``test_step_cost``: the evidence for ``ensemble.ENSEMBLE_FLOPS``, ``GROUP_FLOPS`` and ``MAX_MEMBERS``: the training
time per member step (records' ``timing.train_seconds`` / steps; no evaluation) of one run alone and of K = 3, 9 and
27 members, at D = 32, 1 layer, T = 2 (batch V / 16, at least 8) and T = 8 (batch 64), V = 128 to 4,096, on one
thread. extra_info holds ``step_flops`` and ``speedup`` per K (alone / per member).
"""
from __future__ import annotations

import statistics

import pytest

from spamlang.config import RunConfig
from spamlang.system.threads import step_flops
from spamlang.training.ensemble import train_ensemble
from spamlang.training.loop import train

SEEDS, LRS = (0, 1, 2), (0.003, 0.01, 0.03)
_results: dict[tuple, tuple[float, float]] = {}


def cliff_runs(vocab_size: int) -> list[RunConfig]:
    return [RunConfig(task="spam", vocab_size=vocab_size, d_model=32, layers=1, n_heads=4, seq_len=2,
                      batch_size=vocab_size // 16, steps=100, warmup=5, eval_every=16, eval_sequences=512,
                      diag_tokens=64, device="cpu", seed=seed, lr=lr) for seed in SEEDS for lr in LRS]


@pytest.mark.parametrize("vocab_size", [256, 1024])
@pytest.mark.parametrize("arm", ["sequential", "ensemble"])
def test_nine_runs(benchmark, arm, vocab_size):
    configs, train_seconds = cliff_runs(vocab_size), []

    def run():
        records = train_ensemble(configs, threads=1) if arm == "ensemble" else [train(c, threads=1) for c in configs]
        assert all(r.status == "ok" for r in records)
        train_seconds.append(sum(r.timing.train_seconds for r in records))
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    whole, trained = benchmark.stats.stats.median, statistics.median(train_seconds[1:])  # the warm-up round left out
    benchmark.extra_info.update(whole_seconds=whole, train_seconds=trained)
    print(f"\n{arm} V={vocab_size}: {whole:.2f} s in all, {trained:.2f} s training")
    _results[arm, vocab_size] = whole, trained
    if ("sequential", vocab_size) in _results and ("ensemble", vocab_size) in _results:
        (seq_whole, seq_train), (ens_whole, ens_train) = (_results[a, vocab_size] for a in ("sequential", "ensemble"))
        benchmark.extra_info.update(speedup_train=seq_train / ens_train, speedup_whole_run=seq_whole / ens_whole)
        print(f"V={vocab_size}: speedup_train = {seq_train / ens_train:.2f}, "
              f"speedup_whole_run = {seq_whole / ens_whole:.2f}")


@pytest.mark.parametrize("seq_len,vocab_size", [(2, 128), (2, 1024), (2, 2048), (2, 4096), (8, 128), (8, 512),
                                                (8, 2048), (8, 4096)])
def test_step_cost(benchmark, seq_len, vocab_size):
    def config(seed: int) -> RunConfig:
        batch = max(8, vocab_size // 16) if seq_len == 2 else 64
        return RunConfig(task="spam", vocab_size=vocab_size, d_model=32, layers=1, n_heads=4, seq_len=seq_len,
                         batch_size=batch, steps=60, warmup=5, eval_every=60, eval_sequences=8, diag_tokens=8,
                         device="cpu", seed=seed)

    def per_step(records) -> float:
        return sum(r.timing.train_seconds for r in records) / len(records) / records[0].timing.steps
    alone = min(per_step([train(config(0), threads=1)]) for _ in range(2))
    speedup = {}

    def run():
        for k in (3, 9, 27):
            speedup[k] = alone / per_step(train_ensemble([config(seed) for seed in range(k)], threads=1))
    benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(step_flops=step_flops(config(0)), alone_ms=alone * 1e3,
                                speedup={str(k): v for k, v in speedup.items()})
    print(f"\nT={seq_len} V={vocab_size} ({step_flops(config(0)):.1e} FLOPs/step): alone {alone * 1e3:.2f} ms/step, "
          + ", ".join(f"K={k} {v:.1f}x" for k, v in speedup.items()))
