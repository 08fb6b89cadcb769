"""Suites (TOML grids checked before any run) and the runner (resume, failures, kill -9, worker processes, Ray)."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spamlang import record
from spamlang.errors import SpamLangError
from spamlang.sweeps.runner import run_suite
from spamlang.sweeps.suite import builtin_names, load
from tests.conftest import assert_user_error
from tests.records import make_record

TINY = textwrap.dedent("""
    [suite]
    name = "tiny"
    description = "test suite"

    [defaults]
    d_model = 8
    layers = 1
    n_heads = 2
    seq_len = 4
    batch_size = 8
    steps = {steps}
    eval_every = {steps}
    eval_sequences = 8
    diag_tokens = 8
    device = "cpu"

    [[grid]]
    task = "spam"
    vocab_size = [16, 32]
    head = ["linear", "lowrank:2"]
    seed = [0, 1]
    exclude = [{{ head = "lowrank:2", vocab_size = 16 }}]
""")


def tiny(tmp_path: Path, steps: int = 3, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(steps=steps) + extra)
    return path


def test_builtin_suites_load_and_are_valid():
    assert {"smoke", "paper", "paper-cpu", "heads"} <= set(builtin_names())
    smoke = load("smoke")
    assert len({c.seed for c in smoke.runs}) >= 2
    assert len({c.vocab_size for c in smoke.runs if c.task == "spam"}) >= 3
    heads = {(c.head, c.head_rank) for c in smoke.runs}
    assert {"linear", "gradproj"} <= {h for h, _ in heads} and len({r for h, r in heads if h == "lowrank"}) >= 2
    assert "bag" in {c.task for c in smoke.runs}


def test_grid_expansion_and_exclude(tmp_path):
    suite = load(str(tiny(tmp_path)))
    combos = sorted((c.vocab_size, c.head, c.head_rank, c.seed) for c in suite.runs)
    assert len(combos) == 6 and (16, "lowrank", 2, 0) not in combos and (32, "lowrank", 2, 1) in combos
    assert len({c.run_id for c in suite.runs}) == 6


@pytest.mark.parametrize("change,fragment", [
    ("[bogus]\n", "unknown section 'bogus'"),
    ("[[grid]]\ntask = 'spam'\nvocab_size = 16\nfrobs = 1\n", "grid[1].frobs"),
    ("[[grid]]\ntask = 'nope'\nvocab_size = 16\n", "unknown task 'nope'"),
    ("[[grid]]\ntask = 'spam'\nvocab_size = 16\nhead = 'lowrank:9'\n", "head_rank"),
    ("[[grid]]\ntask = 'spam'\nvocab_size = 16\nhead = 'wide'\n", "unknown head 'wide'"),
    ("[[grid]]\ntask = 'bag'\nvocab_size = 16\ntask_params = { k = 99 }\n", "k=99"),
    ("[[grid]]\ntask = 'spam'\nvocab_size = [16, 'x']\n", "vocab_size"),
    ("x = [", "not a valid TOML"),
])
def test_malformed_suites_are_rejected_before_any_run(run_cli, tmp_path, change, fragment):
    path = tiny(tmp_path, extra="\n" + change)
    with pytest.raises(SpamLangError, match="tiny.toml") as err:
        load(str(path))
    assert fragment in str(err.value)
    out = tmp_path / "out"
    assert_user_error(run_cli("run", path, "--out", out), fragment)
    assert not out.exists()


def test_unknown_suite_name(run_cli):
    assert_user_error(run_cli("run", "no-such-suite"), "unknown suite 'no-such-suite'")


def test_a_folder_named_after_a_builtin_suite_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()  # e.g. the results of an earlier `spamlang run smoke --out smoke`
    assert load("smoke").name == "smoke"
    with pytest.raises(SpamLangError, match="unknown suite 'results'"):
        (tmp_path / "results").mkdir()
        load("results")


def test_run_resume_and_failures(tmp_path, monkeypatch):
    suite = load(str(tiny(tmp_path)))
    out = tmp_path / "out"
    import spamlang.training.loop as train_module
    real = train_module.train

    def flaky(config, progress=None, checkpoint=None, threads=None, **callbacks):
        if config.vocab_size == 32 and config.head == "linear" and config.seed == 1:
            raise RuntimeError("simulated crash")
        return real(config, progress, threads=threads, **callbacks)

    monkeypatch.setattr(train_module, "train", flaky)
    counts = run_suite(suite, out, progress=False, lr_rounds=0, ensemble=False)  # every run through train
    assert counts == {"total": 6, "skipped": 0, "ok": 5, "diverged": 0, "failed": 1, "lr_rounds": 0, "lr_added": 0,
                      "budget_added": 0}
    records = [record.read(p) for p in (out / "runs").glob("*.json")]
    assert len(records) == 6
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) == 1 and "simulated crash" in failed[0].error
    assert all(r.suite.name == "tiny" for r in records)
    monkeypatch.setattr(train_module, "train", real)
    counts = run_suite(suite, out, progress=False, lr_rounds=0, ensemble=False)  # only the failed run is redone
    assert counts == {"total": 6, "skipped": 5, "ok": 1, "diverged": 0, "failed": 0, "lr_rounds": 0, "lr_added": 0,
                      "budget_added": 0}


def test_run_cli_prints_leaderboard_and_writes_files(run_cli, tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", tiny(tmp_path), "--out", out, "--quiet", "--lr-rounds", "1")
    assert r.code == 0, r.err
    assert "verdict" in r.out and "linear" in r.out
    assert "18 runs (12 added by 1 lr round(s))" in r.err  # one lr each: one below and one above it
    assert (out / "leaderboard.md").is_file() and (out / "leaderboard.csv").is_file()
    r2 = run_cli("run", tiny(tmp_path), "--out", out, "--quiet", "--lr-rounds", "1")
    assert "18 already recorded" in r2.err


def fake_training(monkeypatch, train) -> None:
    """Let ``train`` stand in for the harness, for runs alone and for the members of an ensemble."""
    import spamlang.training.ensemble
    import spamlang.training.loop
    monkeypatch.setattr(spamlang.training.loop, "train", train)
    monkeypatch.setattr(spamlang.training.ensemble, "train_ensemble",
                        lambda configs, **callbacks: [train(c) for c in configs])


def fake_train(diverge_above: float):
    """A stand-in for the harness: a record whose final val loss is lowest at lr 0.1, and that diverges above
    ``diverge_above``."""
    def train(config, progress=None, checkpoint=None, threads=None, **callbacks):
        val = (math.log10(config.lr) + 1) ** 2 + 0.1 * config.seed
        return make_record(**config.to_dict(), losses=(4.0, 3.0), val_losses=(4.0, val),
                           status="diverged" if config.lr > diverge_above else "ok")
    return train


@pytest.mark.parametrize("diverge_above, rounds, lrs", [
    (1.0, 3, [0.00333, 0.01, 0.03, 0.09, 0.27]),  # 0.09 chosen, inside the range after three rounds
    (0.05, 2, [0.00333, 0.01, 0.03, 0.09]),  # 0.09 diverges: 0.03 is inside
])
def test_the_lr_grid_grows_until_the_chosen_lr_is_inside(tmp_path, monkeypatch, diverge_above, rounds, lrs):
    fake_training(monkeypatch, fake_train(diverge_above))
    path = tiny(tmp_path)
    path.write_text(path.read_text().replace('head = ["linear", "lowrank:2"]', 'head = "lowrank:2"\nlr = 0.01'))
    out = tmp_path / "out"
    lines = []
    counts = run_suite(load(str(path)), out, progress=False, lr_rounds=5, log=lines.append)
    assert counts["lr_rounds"] == rounds and counts["lr_added"] == 2 * (len(lrs) - 1)  # two seeds per lr
    assert f"lr round 1: 4 of 4 runs to do (0 already recorded) -> {out / 'runs'}" in lines  # one lr each way
    records = [record.read(p) for p in (out / "runs").glob("*.json")]
    assert sorted({r.config.lr for r in records}) == lrs
    assert {r.config.lr: r.suite.lr_round for r in records}[lrs[-1]] == rounds
    assert run_suite(load(str(path)), out, progress=False, lr_rounds=5)["skipped"] == len(records)  # resumes
    few = run_suite(load(str(path)), tmp_path / "few", progress=False, lr_rounds=1)
    assert few["lr_rounds"] == 1 and few["total"] == 6
    path.write_text(path.read_text().replace("[suite]", "[suite]\nsweep = []"))  # lr fixed: no rounds at all
    fixed = run_suite(load(str(path)), tmp_path / "fixed", progress=False, lr_rounds=5)
    assert fixed["lr_rounds"] == 0 and fixed["total"] == 2


def test_worker_processes(tmp_path):
    out = tmp_path / "out"
    counts = run_suite(load(str(tiny(tmp_path))), out, workers=2, progress=False, lr_rounds=0)
    assert counts["ok"] == 6 and len(list((out / "runs").glob("*.json"))) == 6


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    path, out = tiny(tmp_path, steps=400), tmp_path / "out"  # runs long enough to kill mid-sweep
    cmd = [sys.executable, "-m", "spamlang.cli", "run", str(path), "--out", str(out), "--quiet", "--lr-rounds", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(list((out / "runs").glob("*.json")))
    assert 2 <= before < 6
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    files = sorted((out / "runs").iterdir())
    assert len(files) == 6 and all(f.suffix == ".json" and not f.name.startswith(".") for f in files)
    ids = {record.read(f).run_id for f in files}
    assert ids == {c.run_id for c in load(str(path)).runs}


def test_ray_executor_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "out"
    try:
        counts = run_suite(load(str(tiny(tmp_path))), out, executor="ray", workers=2, progress=False,
                           lr_rounds=0)
    finally:
        ray.shutdown()
    assert counts["ok"] == 6
    recs = [record.read(p) for p in (out / "runs").glob("*.json")]
    assert len(recs) == 6 and all(r.status == "ok" for r in recs)


@pytest.mark.parametrize("text,fragment", [
    ('[suite]\nversion = "abc"\n[[grid]]\ntask = "spam"\nvocab_size = 16\n', "suite.version must be an int"),
    ('[suite]\nname = 5\n[[grid]]\ntask = "spam"\nvocab_size = 16\n', "suite.name must be a str"),
    ('defaults = 3\n[[grid]]\ntask = "spam"\nvocab_size = 16\n', "must be tables"),
    ('[[grid]]\ntask = "spam"\nvocab_size = []\n', "no runs"),
    ('grid = 3\n', "array of tables"),
])
def test_malformed_suite_shapes(run_cli, tmp_path, text, fragment):
    path = tmp_path / "shape.toml"
    path.write_text(text)
    assert_user_error(run_cli("run", path, "--out", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_unavailable_device_is_refused_before_any_run(run_cli, tmp_path):
    assert_user_error(run_cli("run", tiny(tmp_path), "--device", "cuda:99", "--out", tmp_path / "out"),
                      "not available")
    assert not (tmp_path / "out").exists()


def test_external_task_reaches_worker_processes(run_cli, tmp_path):
    from tests.test_cli_tasks import TASK_FILE
    folder = tmp_path / "mytasks"
    folder.mkdir()
    (folder / "alternate.py").write_text(TASK_FILE.replace("{tag}", "workers"))
    path = tmp_path / "alt.toml"
    path.write_text(TINY.format(steps=2).replace('task = "spam"', 'task = "alternate-workers"'))
    r = run_cli("run", path, "--tasks-dir", folder, "--workers", 2, "--out", tmp_path / "out", "--quiet",
                "--lr-rounds", 0)
    assert r.code == 0, r.err
    recs = [record.read(p) for p in (tmp_path / "out" / "runs").glob("*.json")]
    assert len(recs) == 6 and {r.status for r in recs} == {"ok"}


def budget_train(learns_at: dict, best_lr: float = 0.01):
    """A stand-in for the harness whose runs learn (test loss reaches the Bayes loss 0) when their budget (steps, or
    examples per symbol where set) reaches ``learns_at[head]``, and whose final val loss is lowest at ``best_lr``."""
    def train(config, progress=None, checkpoint=None, threads=None, **callbacks):
        budget = config.examples_per_symbol if config.examples_per_symbol is not None else config.steps
        learned = budget >= learns_at[config.head]
        val = (math.log10(config.lr / best_lr)) ** 2 + 0.01 * config.seed
        return make_record(**config.to_dict(), losses=(4.0, 0.0 if learned else 3.0), val_losses=(4.0, val))
    return train


@pytest.mark.parametrize("budget", ["steps", "examples_per_symbol"])
def test_failures_get_a_larger_budget_at_the_chosen_lr_and_its_neighbours(tmp_path, monkeypatch, budget):
    fake_training(monkeypatch, budget_train({"linear": 1, "lowrank": 12}))
    path = tiny(tmp_path, extra="")
    text = path.read_text().replace('description = "test suite"', 'description = "test suite"\nextend_budget = 4')
    text = text.replace('seed = [0, 1]', 'seed = [0, 1]\nlr = [0.003, 0.01, 0.03]')
    if budget == "examples_per_symbol":
        text = text.replace("steps = 3\n", "examples_per_symbol = 3\n")
    path.write_text(text)
    out, lines = tmp_path / "out", []
    counts = run_suite(load(str(path)), out, progress=False, lr_rounds=2, log=lines.append)
    # only lowrank:2 at V = 32 (learns from a budget of 12, not 3) is extended: 3 lrs x 2 seeds at 4 x the budget
    assert counts["budget_added"] == 6 and counts["lr_added"] == 0 and counts["total"] == 18 + 6
    assert any(line.startswith("budget round 1 (4x budget): 6 of 6 runs to do") for line in lines)
    records = [record.read(p) for p in (out / "runs").glob("*.json")]
    extended = [r for r in records if r.suite.budget_round == 1]
    assert {(r.config.head, r.config.vocab_size, getattr(r.config, budget), r.config.lr) for r in extended} == \
        {("lowrank", 32, 12, lr) for lr in (0.00333, 0.01, 0.03)}
    assert {r.config.seed for r in extended} == {0, 1} and all(r.suite.lr_round == 0 for r in extended)
    assert all(r.final.steps_to_learn is not None for r in extended)
    assert {r.suite.budget_round for r in records if r not in extended} == {0}
    again = run_suite(load(str(path)), out, progress=False, lr_rounds=2)  # resumes: nothing to add
    assert again["skipped"] == again["total"] == 24 and again["ok"] == 0
    assert len(list((out / "runs").glob("*.json"))) == 24
    off = run_suite(load(str(path)), tmp_path / "off", progress=False, lr_rounds=0, extend_budget=1)
    assert off["budget_added"] == 0 and off["total"] == 18


def test_the_lr_rounds_apply_to_the_extended_budget(tmp_path, monkeypatch):
    fake_training(monkeypatch, budget_train({"linear": 100, "lowrank": 100}, best_lr=1.0))
    path = tiny(tmp_path)
    path.write_text(path.read_text().replace('head = ["linear", "lowrank:2"]', 'head = "lowrank:2"\nlr = 0.03'))
    out = tmp_path / "out"
    counts = run_suite(load(str(path)), out, progress=False, lr_rounds=1, extend_budget=2)
    records = [record.read(p) for p in (out / "runs").glob("*.json")]
    base = sorted({r.config.lr for r in records if r.suite.budget_round == 0})
    assert base == [0.01, 0.03, 0.09]  # the suite's lr and one round up and down
    extended = {(r.config.lr, r.suite.lr_round) for r in records if r.suite.budget_round == 1}
    # chosen 0.09 (the top edge): the extension tries 0.03, 0.09, 0.27, then one lr round tries 0.81
    assert extended == {(0.03, 0), (0.09, 0), (0.27, 0), (0.81, 1)}
    assert all(r.config.steps == 6 for r in records if r.suite.budget_round == 1)
    assert counts["budget_added"] == 6 and counts["lr_added"] == 4 + 2


@pytest.mark.parametrize("value", ['"4"', "1", "0.5", "true", "inf", "[4]"])
def test_extend_budget_must_be_a_factor_above_one(run_cli, tmp_path, value):
    path = tiny(tmp_path)
    path.write_text(path.read_text().replace('description = "test suite"',
                                             f'description = "test suite"\nextend_budget = {value}'))
    assert_user_error(run_cli("run", path, "--out", tmp_path / "out"), "suite.extend_budget must be a number above 1")
    assert not (tmp_path / "out").exists()
    r = run_cli("run", tiny(tmp_path), "--out", tmp_path / "out", "--extend-budget", "0.5")
    assert r.code == 2 and "--extend-budget" in r.err and not (tmp_path / "out").exists()


def test_the_cliff_suites_hold_examples_per_symbol_and_span_v_over_d():
    for name, top in (("cliff", 4096), ("cliff-gpu", 262144)):
        runs = load(name).runs
        assert {c.task for c in runs} == {"spam"} and {c.d_model for c in runs} == {16, 32, 64}
        assert max(c.vocab_size for c in runs) == top
        ratios = {c.vocab_size / c.d_model for c in runs}
        assert min(ratios) <= 4 and max(ratios) >= 256
        assert {(c.head, c.head_rank) for c in runs} == {("linear", None), ("tied", None), ("lowrank", 2),
                                                          ("lowrank", 8), ("gradproj", 2), ("gradproj", 8)}
        assert all(len({c.lr for c in runs if (c.vocab_size, c.d_model, c.head, c.head_rank, c.seed) == key}) >= 2
                   for key in {(c.vocab_size, c.d_model, c.head, c.head_rank, c.seed) for c in runs})
        for c in runs:  # >= 8 evaluations per run, and every run's test stream has >= 512 positions
            assert c.steps // c.eval_every >= 8 and c.eval_sequences * (c.seq_len - 1) >= 512


def test_the_cliff_suite_runs_both_protocols_at_the_same_points_with_the_same_seeds():
    suite = load("cliff")
    per_symbol = [c for c in suite.runs if c.examples_per_symbol is not None]
    fixed_tokens = [c for c in suite.runs if c.examples_per_symbol is None]
    assert suite.extend_budget is None  # the cap is the budget: no rerun of failures
    point = lambda c: (c.vocab_size, c.d_model, c.head, c.head_rank, c.seed, c.lr)  # noqa: E731
    assert {point(c) for c in per_symbol} == {point(c) for c in fixed_tokens}
    assert {c.seed for c in suite.runs} == {0, 1, 2, 3, 4}  # >= 5 seeds: exponents are published
    # per symbol: the same cap in examples per symbol at every V, a schedule that does not move with it, and one
    # evaluation per example per symbol
    assert {c.examples_per_symbol for c in per_symbol} == {64} and {c.schedule for c in per_symbol} == {"constant"}
    assert all(c.stop_after > 0 and c.eval_every * c.batch_size == c.vocab_size for c in per_symbol)
    # fixed tokens: the same steps and batch at every V, trained to the end
    assert len({(c.steps, c.batch_size) for c in fixed_tokens}) == 1 and {c.stop_after for c in fixed_tokens} == {0}


def test_the_wide_cliff_suite_spends_its_budget_where_the_question_is():
    runs = load("cliff-wide").runs
    per_symbol = [c for c in runs if c.examples_per_symbol is not None]
    fixed_tokens = [c for c in runs if c.examples_per_symbol is None]
    wide = {c.vocab_size for c in runs if c.vocab_size >= 16384}
    assert wide == {16384, 32768, 65536, 131072} and max(c.vocab_size / c.d_model for c in runs) == 4096
    for arm in (per_symbol, fixed_tokens):  # both arms: 3 seeds of three heads to V = 32,768, 2 of two above
        for vocab in (16384, 32768):
            assert {(c.head, c.head_rank) for c in arm if c.vocab_size == vocab} == {
                ("linear", None), ("lowrank", 8), ("gradproj", 8)}
            assert {c.seed for c in arm if c.vocab_size == vocab} == {0, 1, 2}
        for vocab in (65536, 131072):
            assert {(c.head, c.head_rank, c.seed) for c in arm if c.vocab_size == vocab} == {
                (h, r, s) for h, r in (("linear", None), ("lowrank", 8)) for s in (0, 1)}
        assert {c.vocab_size for c in arm if c.head_rank == 2} == {4096, 8192}  # the rank-2 anchors
    assert all(c.examples_per_symbol >= (256 if c.vocab_size <= 32768 else 64) for c in per_symbol)
    assert all(c.schedule == "constant" and c.stop_after > 0 for c in per_symbol)
    assert len({c.steps * c.batch_size for c in fixed_tokens}) == 1  # the same tokens at every V
    assert {c.schedule for c in fixed_tokens} == {"wsd"} and {c.stop_after for c in fixed_tokens} == {0}


def test_the_head_suite_tunes_lr_per_head_on_every_task():
    from spamlang.task import TASKS
    runs = load("heads").runs
    assert len({c.seed for c in runs}) >= 3 and "linear" in {c.head for c in runs}
    assert {c.task for c in runs} == builtin(TASKS, "spamlang.tasks.") - {"text"}  # text needs a corpus
    assert all(c.examples_per_symbol is not None for c in runs) and len({c.steps for c in runs}) == 1
    assert all(c.schedule == "constant" and c.stop_after > 0 for c in runs)  # times do not move with the cap
    assert all(len({c.lr for c in runs if (c.task, c.head) == (r.task, r.head)}) >= 2 for r in runs)


def test_the_remedies_suite_scores_every_remedy_under_both_protocols_at_three_ratios():
    from spamlang.heads.base import HEADS
    runs = load("remedies").runs
    remedies = builtin(HEADS, "spamlang.heads.") - {"tied"}  # tying is the heads board's (it needs D = embed width)
    for task in ("spam", "permutation"):
        for arm in (True, False):  # fixed examples per symbol, fixed tokens
            cell = [c for c in runs if c.task == task and (c.examples_per_symbol is not None) == arm]
            assert {c.head for c in cell} == remedies and {c.vocab_size / c.d_model for c in cell} == {8, 32, 128}
            assert {c.seed for c in cell} == {0, 1, 2}
            assert all(len({c.lr for c in cell if (c.head, c.head_rank, c.vocab_size) == (r.head, r.head_rank,
                                                                                         r.vocab_size)}) >= 2
                       for r in cell)
    assert {c.head_params["components"] for c in runs if c.head == "mos"} >= {1, 2, 4, 8, 16}


def builtin(registry, package):
    """The registry's names defined in ``package`` (other tests register tasks and heads of their own)."""
    return {name for name in registry.names() if registry.get(name).__module__.startswith(package)}


def test_every_builtin_head_is_on_a_head_leaderboard():
    from spamlang.heads.base import HEADS
    heads, remedies = load("heads"), load("remedies")
    assert heads.version >= 3 and remedies.version >= 2
    assert {c.head for c in heads.runs} | {c.head for c in remedies.runs} == builtin(HEADS, "spamlang.heads.")
