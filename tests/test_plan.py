"""Part of a suite on the command line: --filter, --limit, --dry-run, the cost estimate it shares with `suites`, and
the JSON outputs of run and leaderboard."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from spamlang import record
from spamlang.config import RunConfig
from spamlang.errors import SpamLangError
from spamlang.sweeps.plan import NOMINAL_FLOPS, calibrate, estimate, parse_filters, run_flops, select
from spamlang.sweeps.suite import load
from tests.conftest import assert_user_error
from tests.records import make_record
from tests.test_suite import tiny


def picked(suite, *filters, limit=None):
    return [(c.vocab_size, c.head, c.head_rank, c.seed) for c in select(suite.runs, parse_filters(filters), limit)]


def test_filters_keep_matching_runs_in_suite_order(tmp_path):
    suite = load(str(tiny(tmp_path)))  # V 16/32 x linear/lowrank:2 x seeds 0/1, less lowrank:2 at V=16: 6 runs
    assert picked(suite, "head=lowrank:2") == [(32, "lowrank", 2, 0), (32, "lowrank", 2, 1)]
    assert picked(suite, "head=lowrank") == picked(suite, "head_rank=2")
    assert picked(suite, "head=linear", "vocab_size=16") == [(16, "linear", None, 0), (16, "linear", None, 1)]
    assert len(picked(suite, "seed=0", "seed=1")) == 6  # one key repeated: alternatives
    assert picked(suite, "head_rank=none", "seed=1") == [(16, "linear", None, 1), (32, "linear", None, 1)]
    assert len(picked(suite, "lr=0.003", "compile=false")) == 6  # numbers compare as numbers, flags as flags
    everything = picked(suite)
    assert picked(suite, limit=2) == everything[:2] and picked(suite, "seed=1", limit=1) == [everything[1]]


def test_filters_on_task_parameters(tmp_path):
    suite = load(str(tiny(tmp_path, extra=BAG)))
    assert picked(suite, "task_params.k=4") == [(16, "linear", None, 0)]
    assert picked(suite, "task_params.k=8.0", "task=bag") == [(16, "linear", None, 0)] == picked(suite, "task=bag")[1:]
    assert len(picked(suite, "task_params.k=4", "task_params.k=8")) == 2  # runs without the parameter never match
    with pytest.raises(SpamLangError, match=r"task_params 'q' \(they have: k\)"):
        picked(suite, "task_params.q=1")


BAG = """
[[grid]]
task = "bag"
task_params = { k = [4, 8] }
vocab_size = 16
"""


@pytest.mark.parametrize("item,fragment", [
    ("vocab_size=64", "keeps no run (values of vocab_size among the runs left: 16, 32)"),
    ("head=wide", "values of head among the runs left: linear, lowrank:2"),
    ("vocab_size=big", "'vocab_size' must be int, got 'big'"),
    ("frobs=1", "unknown key 'frobs'"),
    ("task_params.q=1", "no run of the suite has task_params 'q' (they have: none)"),
    ("mystery.q=1", "unknown key 'mystery.q'"),
    ("vocab_size", "--filter expects KEY=VALUE, got 'vocab_size'"),
    ("=3", "--filter expects KEY=VALUE"),
])
def test_bad_filters_are_one_line_errors_and_write_nothing(run_cli, tmp_path, item, fragment):
    out = tmp_path / "out"
    assert_user_error(run_cli("run", tiny(tmp_path), "--out", out, "--filter", item), fragment)
    assert_user_error(run_cli("run", tiny(tmp_path), "--out", out, "--filter", item, "--dry-run"), fragment)
    assert not out.exists()
    with pytest.raises(SpamLangError):
        select(load(str(tiny(tmp_path))).runs, parse_filters([item]))


def test_calibration_uses_this_machines_ok_records_only():
    config = {"task": "spam", "vocab_size": 32, "d_model": 8, "layers": 1, "n_heads": 2, "seq_len": 4,
              "batch_size": 8, "steps": 200}
    mine = make_record(**config)
    elsewhere = dataclasses.replace(mine, env=dataclasses.replace(mine.env, platform="Plan9"))
    gpu = dataclasses.replace(mine, env=dataclasses.replace(mine.env, device="NVIDIA H100"))
    failed = make_record(status="failed", **config)
    rate = calibrate([mine, mine, elsewhere, gpu, failed], "cpu")
    assert rate.records == 2 and rate.flops_per_second == pytest.approx(run_flops(mine.config) / 1.2)
    assert "measured on 2 recorded run(s)" in rate.basis
    assert calibrate([elsewhere, gpu, failed], "cpu").flops_per_second == NOMINAL_FLOPS
    assert calibrate([mine], None).records == 0  # a device this machine lacks: nothing to calibrate on


@pytest.mark.parametrize("vocab,measured", [(32_768, 374), (65_536, 1_561), (131_072, 6_264)])
def test_the_nominal_estimate_of_a_wide_run_is_near_its_measured_time(vocab, measured):
    """spam at D = 64, T = 2, batch V/16, 64 examples per symbol (1,024 steps, 22 evaluations): one thread of the
    2-core CPU took 0.33, 1.46 and 5.97 s a step and 1.5, 3.0 and 7.0 s an evaluation (results/perf/README.md). The
    estimate counts the head on the predictable positions at the matmul rate, not T tokens at the small runs' rate."""
    config = RunConfig(task="spam", vocab_size=vocab, d_model=64, seq_len=2, batch_size=vocab // 16,
                       examples_per_symbol=64).resolve()
    _, seconds = estimate([config], calibrate([], None))
    assert 0.9 * measured < seconds < 1.5 * measured


def test_the_cost_counts_predictable_positions_heads_and_evaluations():
    base = dict(vocab_size=4096, seq_len=16, steps=300)
    spam, cycle = (run_flops(RunConfig(task=t, **base).resolve()) for t in ("spam", "cycle"))
    assert cycle < spam  # a 3-cycle predicts 12 of 15 positions
    low = run_flops(RunConfig(task="spam", head="lowrank", head_rank=2, **base).resolve())
    assert low < spam  # a rank-2 head's products are smaller
    rare = run_flops(RunConfig(task="spam", eval_every=300, **base).resolve())
    assert rare < spam


def test_limit_runs_part_then_dry_run_shows_the_rest(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", tiny(tmp_path), "--out", out, "--limit", "2", "--lr-rounds", "0", "--quiet", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert (summary["total"], summary["ok"], summary["skipped"]) == (2, 2, 0)
    assert {"suite", "runs_dir", "files", "summary", "ranking"} <= set(summary)
    assert summary["ranking"] and {"rank", "head", "learnability", "p_holm"} <= set(summary["ranking"][0])
    assert len(list((out / "runs").glob("*.json"))) == 2
    before = sorted(p.name for p in out.rglob("*"))

    r = run_cli("run", tiny(tmp_path), "--out", out, "--dry-run", "--lr-rounds", "0")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert sum(line.endswith("  recorded  -") for line in lines) == 2 and sum("  new  " in line for line in lines) == 4
    assert "6 run(s) selected, 2 already recorded, 4 to run" in r.out
    assert "measured on 2 recorded run(s) of this machine, device cpu" in r.out
    assert lines[-1] == "nothing was trained"

    r = run_cli("run", tiny(tmp_path), "--out", out, "--dry-run", "--json", "--filter", "seed=0")
    plan = json.loads(r.out)
    assert (plan["selected"], plan["recorded"], plan["to_run"], plan["calibration_runs"]) == (3, 1, 2, 2)
    todo = [run for run in plan["runs"] if run["state"] != "recorded"]
    assert plan["seconds"] == pytest.approx(sum(run["flops"] for run in todo) / plan["flops_per_second"])
    assert {run["head_spec"] for run in plan["runs"]} == {"linear", "lowrank:2"}
    assert sorted(p.name for p in out.rglob("*")) == before  # a dry run writes nothing


def test_dry_run_marks_failed_and_stale_records(run_cli, tmp_path):
    suite = load(str(tiny(tmp_path)))
    runs = tmp_path / "out" / "runs"
    first, second = suite.runs[:2]
    record.write(make_record(status="failed", **first.to_dict()), runs)
    record.write(make_record(task_version=99, **second.to_dict()), runs)
    plan = json.loads(run_cli("run", tiny(tmp_path), "--out", tmp_path / "out", "--dry-run", "--json").out)
    assert [run["state"] for run in plan["runs"][:3]] == ["failed", "stale", "new"]
    assert plan["to_run"] == 6


def test_leaderboard_and_score_json(run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli("run", tiny(tmp_path), "--out", out, "--lr-rounds", "0", "--quiet").code == 0
    r = run_cli("leaderboard", out / "runs", "--out", tmp_path / "board", "--json")
    assert r.code == 0, r.err
    board = json.loads(r.out)
    assert len(board["configurations"]) == 3 and len(board["ranking"]) == 2
    assert {"verdict", "vocab_size", "head", "floor"} <= set(board["configurations"][0])
    assert any(path.endswith("leaderboard.html") for path in board["files"])
    scored = json.loads(run_cli("score", out / "runs", "--json").out)
    assert [row["verdict"] for row in scored] == [row["verdict"] for row in board["configurations"]]


def test_suites_and_dry_run_share_one_cost_estimate_calibrated_on_this_machine(run_cli, tmp_path):
    config = {"task": "spam", "vocab_size": 32, "d_model": 8, "layers": 1, "n_heads": 2, "seq_len": 4,
              "batch_size": 8, "steps": 200}
    for seed in (0, 1):
        record.write(make_record(seed=seed, **config), tmp_path / "out" / "runs")
    r = run_cli("suites", "--json", "--calibrate-on", tmp_path / "out")
    assert r.code == 0, r.err
    rows = {row["name"]: row for row in json.loads(r.out)}
    smoke = rows["smoke"]
    assert smoke["calibration_runs"] == 2 and smoke["flops_per_second"] != NOMINAL_FLOPS
    assert smoke["seconds"] == pytest.approx(smoke["flops"] / smoke["flops_per_second"])
    plan = json.loads(run_cli("run", "smoke", "--out", tmp_path / "out", "--dry-run", "--json").out)
    assert plan["to_run"] == smoke["runs"] and plan["seconds"] == pytest.approx(smoke["seconds"])
    for row in rows.values():  # the estimate is the table's: no description states a duration of its own
        assert not re.search(r"\d\s*(min|h)\b", row["description"]), row["description"]
    text = run_cli("suites", "--calibrate-on", tmp_path / "out").out
    assert "measured on 2 recorded run(s) of this machine, device cpu" in text.splitlines()[-1]
    nominal = json.loads(run_cli("suites", "--json", "--calibrate-on", tmp_path / "none").out)
    assert {row["flops_per_second"] for row in nominal} == {NOMINAL_FLOPS}
