"""Ensemble training against sequential runs, on a slice of the cliff suite.

Run:  pytest benchmarks/test_ensemble_perf.py --benchmark-only      (plain ``pytest`` collects only tests/)

``test_nine_runs``: the nine runs of one cliff configuration (spam, D = 32, 1 layer, T = 2, batch V / 16, 100 steps,
an evaluation every 16 steps on 512 sequences; seeds 0, 1, 2 x lr 0.003, 0.01, 0.03) at V = 256 and 1,024, trained
``sequential``-ly (nine ``spamlang.train`` calls) and as one ``ensemble`` (``training.ensemble.train_ensemble``), on one thread
each. extra_info holds the wall time of the nine runs and their training time (the sum of their records'
``timing.train_seconds``: for the ensemble, the wall time of its batched steps), and, once both arms of a V have
run, ``speedup_train`` and ``speedup_whole_run`` (sequential / ensemble, setup and evaluations included): ratios
measured in the same session, so that a loaded machine slows both arms alike.
"""
from __future__ import annotations

import statistics

import pytest

from spamlang.config import RunConfig
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
