"""Tokens to target on synthetic loss curves with a known answer."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from spamlang.config import RunConfig
from spamlang.record import write
from spamlang.scoring.frames import load_runs
from spamlang.scoring.speedup import compare, format_speedup, loss_at, speedup_table, tokens_to_reach
from tests.records import make_record

TOKENS = 1000 * 2.0 ** np.arange(11)  # 1k .. 1.02M


def curve(shift: float = 1.0, noise: float = 0.0) -> np.ndarray:
    """A loss falling linearly in log(tokens), reaching at ``t`` what the reference reaches at ``t / shift``."""
    return 6.0 - 0.3 * np.log(TOKENS / shift) + noise


def test_a_curve_shifted_four_times_in_tokens_gives_four():
    result = compare(np.array([curve(4)[-1]]), TOKENS[-1], TOKENS, curve()[None, :])
    assert result["speedup"] == pytest.approx(4.0, rel=1e-9)
    assert result["ref_tokens"] == pytest.approx(TOKENS[-1] / 4)
    assert result["loss_gap"] == pytest.approx(0.3 * math.log(4))  # loss at equal tokens
    assert not result["censored"]


def test_interpolation_is_linear_in_log_tokens():
    assert tokens_to_reach([10, 1000], [2.0, 1.0], 1.5) == pytest.approx(100.0)
    assert tokens_to_reach([0, 10, 1000], [9.0, 2.0, 1.0], 2.5) == 10  # reached at the first evaluation
    assert math.isnan(tokens_to_reach([10, 1000], [2.0, 1.0], 0.5))  # never reached
    assert loss_at([10, 1000], [2.0, 1.0], 100) == pytest.approx(1.5)
    assert math.isnan(loss_at([10, 1000], [2.0, 1.0], 5000))


def test_bootstrap_interval_over_seeds():
    noise = np.array([-0.02, 0.0, 0.03])
    heads = np.array([curve(8, n)[-1] for n in noise])
    refs = np.stack([curve(1, n) for n in noise[::-1]])
    result = compare(heads, TOKENS[-1], TOKENS, refs, n_boot=500, seed=1)
    assert result["speedup"] == pytest.approx(8.0, rel=0.05)
    assert result["speedup_low"] < result["speedup"] < result["speedup_high"] < 16
    same = compare(heads, TOKENS[-1], TOKENS, refs, n_boot=500, seed=1)
    assert same == result  # seeded


def test_a_head_better_than_the_reference_is_censored():
    result = compare(np.array([curve(1)[-1] - 0.5]), TOKENS[-1], TOKENS, curve()[None, :], n_boot=50)
    assert result["censored"] and math.isnan(result["speedup"]) and math.isinf(result["speedup_high"])


def _runs(folder, heads: dict, lrs=(0.003,)) -> pd.DataFrame:
    """Loaded runs: one per head spec, seed and lr, each with the synthetic val curve of its shift at TOKENS."""
    for (head, rank), shift in heads.items():
        for seed in (0, 1):
            for lr in lrs:
                worse = 0.1 if lr != lrs[0] else 0.0
                losses = [float(v) for v in curve(shift, 0.01 * seed) + worse]
                rec = make_record(losses=losses, task="spam", vocab_size=64, head=head, head_rank=rank, seed=seed,
                                  lr=lr, accuracies=[max(0.0, 1 - loss / 8) for loss in losses])
                history = tuple(dataclasses.replace(p, tokens=int(t)) for p, t in zip(rec.history, TOKENS))
                write(dataclasses.replace(rec, history=history), folder)
    return load_runs(folder)


def test_speedup_table_picks_the_reference_and_best_lr(tmp_path):
    runs = _runs(tmp_path, {("linear", None): 1, ("lowrank", 4): 16, ("lowrank", 16): 2}, lrs=(0.003, 0.01))
    table = speedup_table(runs, n_boot=100)
    by_head = {(r["head"], r["head_rank"]): r for _, r in table.iterrows()}
    assert by_head[("lowrank", 4)]["speedup"] == pytest.approx(16, rel=0.02)
    assert by_head[("lowrank", 16)]["speedup"] == pytest.approx(2, rel=0.02)
    assert by_head[("linear", None)]["speedup"] == pytest.approx(1, rel=1e-9)
    assert set(table["lr"]) == {0.003} and set(table["n_seeds"]) == {2}
    text = format_speedup(table)
    assert "16.0" in text and "speedup" in text
    against = speedup_table(runs, reference="lowrank:16", n_boot=50)
    assert {(r["head"], r["head_rank"]): round(r["speedup"], 1) for _, r in against.iterrows()}[("lowrank", 4)] == 8.0


def test_no_reference_gives_an_empty_table(tmp_path):
    table = speedup_table(_runs(tmp_path, {("lowrank", 4): 2}), n_boot=10)
    assert table.empty and "no configuration" in format_speedup(table)


def test_speedup_cli(run_cli, tmp_path):
    from spamlang import record
    from spamlang.training.loop import train
    for head, rank in (("linear", None), ("lowrank", 2)):
        config = RunConfig(task="spam", vocab_size=32, d_model=16, layers=1, seq_len=8, batch_size=16, steps=20,
                           eval_every=5, eval_sequences=16, diag_tokens=16, head=head, head_rank=rank, device="cpu")
        record.write(train(config, progress=False), tmp_path / "runs")
    result = run_cli("speedup", tmp_path / "runs", "--plot", tmp_path / "tokens.png")
    assert result.code == 0, result.err
    assert "lowrank:2" in result.out and (tmp_path / "tokens.png").read_bytes()[:4] == b"\x89PNG"
    assert run_cli("speedup", tmp_path / "runs", "--reference", "lowrank:x").code == 2
