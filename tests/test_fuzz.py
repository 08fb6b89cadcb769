"""Malformed input across every verb, suite files and run records: exit status 2, exactly one line on stderr, no
traceback, no file created, changed or removed."""
from __future__ import annotations

import dataclasses
import json

import pytest

from spamlang.sweeps.suite import load
from tests.test_leaderboard import make_record, write_all
from tests.test_outputs import user_files
from tests.test_suite import TINY

T = ["train", "--task", "spam", "--vocab-size", "16", "--d-model", "8"]
G = ["generate", "spam", "-V", "16", "-T", "8", "-n", "10"]
V = ["tasks", "validate", "bag"]
SUITE = TINY.format(steps=2).replace("{{", "{").replace("}}", "}")
EXCLUDE = 'exclude = [{ head = "lowrank:2", vocab_size = 16 }]'

MALFORMED = [
    # tasks and tasks validate
    ["tasks", "--frobnicate"], ["tasks", "validate"], ["tasks", "validate", "nope"], [*V, "-n", "0"], [*V, "-n", "-3"],
    [*V, "-n", "1"], [*V, "-V", "1"], [*V, "-T", "1"], [*V, "-p", "k=0"], [*V, "-p", "k=4", "-p", "k=5"],
    [*V, "-p", "q=1"], [*V, "-p", "k"], ["tasks", "--tasks-dir", "missing-dir"],
    # generate
    [*G, "--out", ".", "--force"], [*G, "--out", "..", "--force"], [*G, "--out", "keep.txt", "--force"],
    [*G, "--out", "userdir", "--force"], [*G, "--out", "userdir"], [*G, "--out", "keep.txt/sub"],
    ["generate", "spam", "-V", "16", "-T", "100000", "-n", "2000000000", "--out", "big"],
    ["generate", "spam", "-V", "0", "-T", "8", "-n", "10", "--out", "o"],
    ["generate", "spam", "-V", "2147483648", "-T", "8", "-n", "10", "--out", "o"],
    ["generate", "spam", "-V", "nan", "-T", "8", "-n", "10", "--out", "o"],
    ["generate", "spam", "-V", "16", "-T", "0", "-n", "10", "--out", "o"],
    ["generate", "spam", "-V", "16", "-T", "8", "-n", "0", "--out", "o"],
    ["generate", "spam", "-V", "16", "-T", "8", "-n", "-1", "--out", "o"],
    [*G, "--seed", "-1", "--out", "o"], [*G, "--seed", str(2 ** 32), "--out", "o"],
    ["generate", "bag", "-V", "16", "-T", "8", "-n", "10", "-p", "k=4", "-p", "k=4", "--out", "o"],
    [*G, "-p", "=3", "--out", "o"], ["generate", "spamm", "-V", "16", "-T", "8", "-n", "10", "--out", "o"],
    # train
    ["train", "--task", "spam", "--vocab-size", "2000000000", "--d-model", "64"], [*T[:4], "1"],
    [*T, "--lr", "nan"], [*T, "--lr", "inf"], [*T, "--lr", "0"], [*T, "--lr", "-1"], [*T, "--weight-decay", "nan"],
    [*T, "--grad-clip", "inf"], [*T, "--steps", "0"], [*T, "--batch-size", "0"], [*T, "--eval-every", "0"],
    [*T, "--seed", "-1"], [*T, "--head", "lowrank", "--head-rank", "0"], [*T, "--head", "lowrank", "--head-rank", "99"],
    [*T, "--head", "nope"], [*T, "--device", "tpu"], [*T, "--schedule", "bogus"],
    ["train", "--task", "bag", "--vocab-size", "16", "-p", "k=2", "-p", "k=3"],
    [*T, "--head", "mos", "--head-param", "components=2", "--head-param", "components=3"],
    [*T, "--out", "keep.txt"],
    # score and leaderboard
    ["score", "missing-dir"], ["score", "emptydir"], ["score", "runs", "--tolerance", "nan"],
    ["score", "runs", "--tolerance", "inf"], ["score", "runs", "--tolerance", "-0.1"],
    ["score", "runs", "--tolerance", "0"],
    ["score", "runs", "--format", "xml"], ["score", "ghosts"], ["leaderboard"], ["leaderboard", "runs", "ghosts"],
    ["leaderboard", "ghosts"], ["leaderboard", "runs", "--out", "keep.txt"],
    ["leaderboard", "runs", "--out", "userboard"],
    ["leaderboard", "runs", "--format", "pdf"],
    # run
    ["run", "nope"], ["run", "exclude.toml"], ["run", "broken.toml"], ["run", "name.toml"], ["run", "future.toml"],
    ["run", "tiny.toml", "--workers", "0"], ["run", "tiny.toml", "--executor", "dask"],
    ["run", "tiny.toml", "--device", "tpu"],
    # probe, heads, suites, the group
    ["probe", "missing.pt"], ["probe", "keep.txt"], ["probe", "x.pt", "--batches", "0"], ["heads", "--frob"],
    ["suites", "--frob"], ["frobnicate"], ["--frobnicate"],
]

# every run setting of 'train' given a value it must refuse: not a number, nan, inf, below or above its range
NUMBERS = [(flag, value) for flag in ("--vocab-size", "--d-model", "--layers", "--n-heads", "--seq-len", "--batch-size",
                                      "--steps", "--warmup", "--eval-every", "--eval-sequences", "--diag-tokens",
                                      "--seed", "--eval-seed", "--embed-dim", "--head-rank")
           for value in ("x", "-1", "1.5")] + \
          [(flag, value) for flag in ("--lr", "--weight-decay", "--grad-clip", "--examples-per-symbol", "--momentum")
           for value in ("x", "nan", "-inf", "-1")] + \
          [("--steps", "1000000001"), ("--seed", str(2 ** 32)), ("--momentum", "1"), ("--examples-per-symbol", "1e30"),
           ("--eval-sequences", "1000000000"), ("--diag-tokens", "10000000000"), ("--batch-size", "100000000000")]
MALFORMED += [args for args in ([*T, flag, value] for flag, value in NUMBERS) if args not in MALFORMED]
MALFORMED += [["train"], ["train", "--task", "spam"], ["train", "--vocab-size", "16"],
              [*T, "--steps", "5", "--examples-per-symbol", "2"], [*T, "--head", "lowrank:2", "--head-rank", "4"],
              [*T, "--head", "lowrank:x"], [*T, "--out", "/"], [*T, "--tracker", "wandb"], [*T, "--tracker", "nope"],
              [*T, "--optimizer", "lion"],
              [*T, "--momentum", "0.5"], [*T, "--precision", "fp8"], [*T, "--device", "cuda:x"]]

# suites: each file is refused by 'run' and by 'run --dry-run', before anything is written
BAD_SUITES = {
    "rank": ("", 'head = "lowrank:2"\nhead_rank = 4'), "both": ("examples_per_symbol = 4", ""),
    "seed": ('sweep = ["seed"]', ""), "task": ('sweep = ["task", "lr"]', ""), "sweep1": ('sweep = ["warmup"]', ""),
    "sweepx": ('sweep = ["nope"]', ""), "sweepstr": ('sweep = "lr"', ""), "absurd": ("", "steps = 1000000001"),
    "eps": ("", "examples_per_symbol = 1e30\nsteps = 1"), "extend": ("extend_budget = 0.5", ""),
    "extendinf": ("extend_budget = inf", ""), "nanlr": ("", "lr = nan"), "neglr": ("", "lr = -0.1"),
    "big": ("", "lr = [" + ", ".join(str(0.001 * i) for i in range(1, 101)) + "]\nwarmup = [" +
            ", ".join(map(str, range(100))) + "]\neval_every = [" + ", ".join(map(str, range(1, 101))) + "]"),
    "head": ("", 'head = "nope"'), "device": ("", 'device = "tpu"'), "version": ('version = 0', ""),
    "key": ("", "frobnicate = 1"), "params": ("", "task_params = { k = 3 }"), "empty": ("", "seed = []"),
}
MALFORMED += [["run", f"bad-{name}.toml", *extra] for name in BAD_SUITES for extra in ([], ["--dry-run"])]
MALFORMED += [["run", "tiny.toml", "--dry-run", "--extend-budget", v] for v in ("inf", "nan", "0.5", "x")]
MALFORMED += [["run", "tiny.toml", "--out", "userboard"], ["run", "tiny.toml", "--dry-run", "--out", "userboard"],
              ["run", "tiny.toml", "--dry-run", "--tracker", "wandb"], ["run", "tiny.toml", "--out", "/"],
              ["run", "tiny.toml", "--limit", "0"], ["run", "tiny.toml", "--filter", "lr=x"]]

# records: a folder holding one bad record has no record to read, for every verb that reads records
BAD_RECORDS = ["lr", "final_loss", "reversed", "repeated_step", "accuracy", "negative_loss", "nan", "learned_at",
               "final_steps", "cosine", "run_id", "schema", "nojson", "history_item", "extra_key", "missing_final"]
MALFORMED += [[verb, f"recs/{name}"] for name in BAD_RECORDS for verb in ("score", "leaderboard", "fit", "speedup")]

# the rest of the command line
MALFORMED += [["score", "runs", "--by", ","], ["score", "runs", "--by", "nope"],
              ["speedup", "runs", "--reference", "nope"], ["speedup", "runs", "--reference", "a:b"],
              ["leaderboard", "runs", "--out", "/"], ["fit", "runs", "--out", "/"],
              ["tasks", "validate", "spam", "-n", "10000000000"], ["tasks", "validate", "spam", "-n", "x"],
              ["prepare-text", "a.txt", "--out", "o", "--holdout", "nan"], ["doctor", "--seconds", "inf"],
              ["measure", "m", "--text", "t.txt", "--device", "tpu"],
              ["measure", "m", "--text", "t.txt", "--step-norm", "nan"],
              ["generate", "spam", "-V", "16", "-T", "8", "-n", "10", "--out", "/"]]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working folder with a user's files and the inputs the malformed commands point at."""
    user_files(tmp_path)
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "notes.txt").write_text("mine")
    (tmp_path / "userboard").mkdir()
    (tmp_path / "userboard" / "leaderboard.md").write_text("mine")
    (tmp_path / "emptydir").mkdir()
    write_all(tmp_path / "runs", [make_record(seed=s) for s in range(2)])
    rec = make_record()
    ghost = dataclasses.replace(rec.config, task="ghost")
    write_all(tmp_path / "ghosts", [dataclasses.replace(rec, config=ghost, run_id=ghost.run_id)])
    (tmp_path / "tiny.toml").write_text(SUITE)
    (tmp_path / "exclude.toml").write_text(SUITE.replace(EXCLUDE, 'exclude = [{ hed = "linear" }]'))
    (tmp_path / "broken.toml").write_text("[suite\n")
    (tmp_path / "name.toml").write_text(SUITE.replace('name = "tiny"', 'name = "../up"'))
    (tmp_path / "future.toml").write_text(SUITE.replace('name = "tiny"', 'name = "future"'))
    config = load(str(tmp_path / "future.toml")).runs[0]
    future = {**make_record().to_dict(), "schema": "spamlang.run/3", "run_id": config.run_id,
              "config": config.to_dict()}
    (tmp_path / "out" / "future" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "future" / "runs" / f"{config.run_id}.json").write_text(json.dumps(future))
    for name, (meta, grid) in BAD_SUITES.items():
        text = SUITE.replace("[suite]\n", f"[suite]\n{meta}\n").replace("[[grid]]\n", f"[[grid]]\n{grid}\n")
        if name in ("absurd", "eps", "nanlr", "neglr", "head", "device", "key", "params", "empty", "big"):
            text = text.replace("steps = 2\n", "")  # the grid's own value is the one given
        (tmp_path / f"bad-{name}.toml").write_text(text)
    for name in BAD_RECORDS:
        (tmp_path / "recs" / name).mkdir(parents=True)
        (tmp_path / "recs" / name / "r.json").write_text(_bad_record(name))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _bad_record(name: str) -> str:
    from tests.test_trust import _edit, _record_data
    data = _record_data(seed=3)
    if name == "run_id":
        data["run_id"] = "0123456789abcdef"
    elif name == "schema":
        data["schema"] = "spamlang.run/9"
    elif name == "nojson":
        return "{not json"
    elif name == "history_item":
        data["history"][1] = [1, 2]
    elif name == "extra_key":
        data["history"][0]["surprise"] = 1
    elif name == "missing_final":
        del data["final"]
    else:
        data = _edit(data, name)
    return json.dumps(data)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_enough_malformed_inputs():
    assert len(MALFORMED) >= 150 and len({tuple(args) for args in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize("args", MALFORMED, ids=" ".join)
def test_malformed_input_is_one_line_status_2_and_leaves_no_trace(run_cli, workspace, args):
    before = snapshot(workspace)
    r = run_cli(*args)
    lines = r.err.strip().splitlines()
    assert r.code == 2, (r.code, r.err)
    assert len(lines) == 1 and lines[0].startswith("spamlang: error: ") and "Traceback" not in r.err, r.err
    assert snapshot(workspace) == before
