"""The first hour: progress lines when output is not a terminal, the step counts of the runs in flight, a closing
summary with every file, and Ctrl-C."""
from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from spamlang import record
from spamlang.sweeps.executors import _local, _stop
from spamlang.sweeps.progress import Postfix, postfix
from spamlang.sweeps.runner import run_suite
from spamlang.sweeps.suite import load
from tests.test_suite import tiny


def test_one_line_per_finished_run_with_counts_and_elapsed_time(tmp_path):
    lines = []
    counts = run_suite(load(str(tiny(tmp_path))), tmp_path / "out", progress=False, lr_rounds=0, log=lines.append)
    assert counts["ok"] == 6 and len(lines) == 7
    assert lines[0] == f"suite tiny: 6 of 6 runs to do (0 already recorded) -> {tmp_path / 'out' / 'runs'}"
    for k, line in enumerate(lines[1:], 1):
        assert re.fullmatch(rf"\[{k}/6\] spam V=(16|32) (linear|lowrank:2) lr=0.003 seed=[01]: ok, test loss "
                            rf"\d+\.\d{{4}} \| {k} ok, 0 diverged, 0 failed \| \d+m\d\ds", line), line
    again = []
    run_suite(load(str(tiny(tmp_path))), tmp_path / "out", progress=False, lr_rounds=0, log=again.append)
    assert again == []  # nothing to do, nothing said


def test_run_on_a_non_terminal_reports_progress_summary_and_files(run_cli, tmp_path):
    out = tmp_path / "out"
    path = tiny(tmp_path)
    r = run_cli("run", path, "--out", out, "--lr-rounds", 0)
    assert r.code == 0, r.err
    err = r.err.strip().splitlines()
    assert sum(line.startswith("[") for line in err) == 6
    assert err[-3].startswith("suite tiny: 6 runs (0 added by 0 lr round(s)), 0 already recorded, 6 ok")
    assert err[-2].startswith("heads: 1 ") and "verdicts of " in err[-2]
    # 3 plots and 2 fit figures (V spans a grid), each PNG and SVG; md, the provenance file, 4 CSV (ranking,
    # configurations, fit, control) and html
    assert err[-1].startswith("wrote 17 files: ")
    for name in ("leaderboard.md", "leaderboard.csv", "configurations.csv", "leaderboard.provenance.json",
                 "leaderboard.html", "learnability.png"):
        assert str(out / name) in err[-1] and (out / name).is_file()
    assert "](learnability.png)" not in r.out  # the terminal gets no image links
    assert f"- command: `spamlang run {path} --out {out} --lr-rounds 0`" in (out / "leaderboard.md").read_text()
    assert "[" not in run_cli("run", path, "--out", out, "--quiet", "--lr-rounds", 0).err.split("suite tiny:")[0]


def test_ctrl_c_says_a_rerun_resumes(run_cli, tmp_path, monkeypatch):
    import spamlang.sweeps.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(spamlang.sweeps.runner, "run_suite", interrupted)
    r = run_cli("run", tiny(tmp_path), "--out", tmp_path / "out")
    assert r.code == 130
    assert r.err.strip() == (f"spamlang: error: interrupted; the finished runs are kept in {tmp_path / 'out' / 'runs'}"
                             f": rerun the same command to resume")


def test_stop_terminates_busy_workers_at_once():
    pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(time.sleep, 60) for _ in range(4)]
    deadline = time.time() + 60
    while time.time() < deadline and sum(f.running() for f in futures) < 2:
        time.sleep(0.05)
    processes = list(pool._processes.values())
    started = time.monotonic()
    _stop(pool)
    assert time.monotonic() - started < 30  # far less than the 60 s the workers would otherwise sleep
    assert processes and not any(p.is_alive() for p in processes)
    assert not any(f.done() and not f.cancelled() and f.exception() is None for f in futures)


def test_sigint_with_workers_stops_children_and_keeps_records(tmp_path):
    path, out = tiny(tmp_path, steps=400), tmp_path / "out"
    cmd = [sys.executable, "-m", "spamlang.cli", "run", str(path), "--out", str(out), "--workers", "2"]
    # SIGINT back to its default in the driver: a shell starts a background job (`pytest &`) with SIGINT ignored,
    # which the driver would inherit, and rightly obey
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "runs").glob("*.json")):
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    proc.send_signal(signal.SIGINT)  # to the driver only, as when output is not a terminal
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith("rerun the same command to resume")
    assert len(workers) == 2 and not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    assert 1 <= len(list((out / "runs").glob("*.json"))) < 6


def _tiny_items(tmp_path, steps: int, n: int) -> list[list[dict]]:
    """The first ``n`` runs of the tiny suite, each a work item of its own."""
    return [[c.to_dict()] for c in load(str(tiny(tmp_path, steps=steps))).runs[:n]]


INFO = record.SuiteInfo(name="tiny", version=1, source="tiny.toml", sweep=())


def test_the_bar_shows_the_step_of_the_run_in_flight(tmp_path):
    seen = []
    records = list(_local(_tiny_items(tmp_path, 5, 2), INFO, 1, None, first=3, show=seen.append))
    assert [r.status for r in records] == ["ok", "ok"]
    assert seen == [{3: (s, 5)} for s in range(1, 6)] + [{}] + [{4: (s, 5)} for s in range(1, 6)] + [{}]
    assert postfix({"ok": 2, "diverged": 0, "failed": 1}, {7: (40, 400), 6: (120, 400)}) == \
        "2 ok, 0 diverged, 1 failed | run 6: step 120/400, run 7: step 40/400"
    assert postfix({"ok": 0, "diverged": 0, "failed": 0}, {}) == "0 ok, 0 diverged, 0 failed"
    screen = io.StringIO()
    with tqdm(total=4, file=screen) as bar:
        show = Postfix(bar, {"ok": 1, "diverged": 0, "failed": 0}, interval=3600)
        show({2: (7, 50)})  # the first call draws
        show({2: (8, 50)})  # within the interval: kept, not drawn
        assert screen.getvalue().rstrip().endswith("1 ok, 0 diverged, 0 failed | run 2: step 7/50]")
        show(show.live, force=True)
        assert screen.getvalue().rstrip().endswith("run 2: step 8/50]")


def test_the_bar_shows_an_ensemble_as_its_runs(tmp_path):
    seen = []
    group = [[c for [c] in _tiny_items(tmp_path, 5, 2)]]  # seeds 0 and 1 of one configuration
    records = list(_local(group, INFO, 1, None, first=3, show=seen.append))
    assert [r.status for r in records] == ["ok", "ok"]
    assert seen == [{3: (s, 5)} for s in range(1, 6)] + [{}]  # the group's step, once per step
    assert postfix({"ok": 2, "diverged": 0, "failed": 0}, {3: (4, 5), 5: (1, 5)}, spans={3: 4}) == \
        "2 ok, 0 diverged, 0 failed | runs 3-4: step 4/5, run 5: step 1/5"


def test_worker_processes_report_their_steps_to_the_driver(tmp_path):
    seen = []
    records = list(_local(_tiny_items(tmp_path, 300, 2), INFO, 2, 1, first=5, show=seen.append, poll=0.01))
    assert sorted(r.status for r in records) == ["ok", "ok"]
    steps = [(k, step, total) for live in seen for k, (step, total) in live.items()]
    assert steps and all(k in (5, 6) and 0 < step <= total == 300 for k, step, total in steps)
    assert seen[-1] == {}  # nothing in flight once both runs are done
