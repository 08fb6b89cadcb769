"""Process hygiene: workers die with the driver (kill -9 included), SIGTERM stops a sweep as Ctrl-C does, and two
sweeps never write into one folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spamlang.errors import SpamLangError
from spamlang.system.processes import LOCK_NAME, FolderLock
from tests.conftest import assert_user_error
from tests.test_suite import tiny

LONG = 20_000  # steps: runs that are still training when the test stops the sweep


def _workers(pid: int) -> list[int]:
    """The spawned worker processes (not the resource tracker) whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _sweep(tmp_path, out: Path) -> subprocess.Popen:
    path = tiny(tmp_path, steps=LONG)
    cmd = [sys.executable, "-m", "spamlang.cli", "run", str(path), "--out", str(out), "--workers", "2", "--quiet",
           "--lr-rounds", "0"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ,
                                                                                     "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_die_with_a_driver_killed_by_sigkill(tmp_path):
    proc = _sweep(tmp_path, tmp_path / "out")
    try:
        assert _wait(lambda: len(_workers(proc.pid)) == 2, 120), proc.stderr.read1().decode() if proc.poll() else ""
        workers = _workers(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait(lambda: not any(map(_alive, workers)), 10), "workers outlived their driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_sigterm_stops_a_sweep_like_ctrl_c_one_line_status_143_workers_gone_lock_released(tmp_path):
    out = tmp_path / "out"
    proc = _sweep(tmp_path, out)
    try:
        assert _wait(lambda: len(_workers(proc.pid)) == 2, 120)
        assert (out / "runs" / LOCK_NAME).read_text().strip() == str(proc.pid)
        workers = _workers(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 143, err
    assert lines[-1] == (f"spamlang: error: terminated (SIGTERM); the finished runs are kept in {out / 'runs'}: "
                         f"rerun the same command to resume") and "Traceback" not in err.decode()
    assert not any(map(_alive, workers))
    assert not (out / "runs" / LOCK_NAME).exists()


def test_a_second_run_into_the_same_folder_is_refused_with_the_holders_pid(run_cli, tmp_path):
    path = tiny(tmp_path, steps=2)
    runs = tmp_path / "out" / "runs"
    with FolderLock(runs):
        r = run_cli("run", path, "--out", tmp_path / "out", "--lr-rounds", "0")
        assert_user_error(r, str(runs), f"pid {os.getpid()}", "in use by another spamlang run")
        assert sorted(p.name for p in runs.iterdir()) == [LOCK_NAME]  # nothing trained
    assert run_cli("run", path, "--out", tmp_path / "out", "--lr-rounds", "0", "--quiet").code == 0
    assert len(list(runs.glob("*.json"))) == 6 and not (runs / LOCK_NAME).exists()


def test_the_lock_is_released_when_its_holder_dies_even_by_sigkill(tmp_path):
    folder = tmp_path / "runs"
    code = f"from spamlang.system.processes import FolderLock; FolderLock({str(folder)!r}).acquire(); print(1, " \
           f"flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"1"
        with pytest.raises(SpamLangError, match=rf"pid {holder.pid}\)"):
            FolderLock(folder).acquire()
        holder.kill()
        holder.wait()
        with FolderLock(folder):  # the kernel released it
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_die_with_parent_exits_a_child_whose_parent_is_already_gone():
    code = "import os; from spamlang.system.processes import die_with_parent; die_with_parent(os.getppid() + 10**7)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 1


def test_fork_map_keeps_order_and_ends_its_workers_under_a_command_s_sigterm_handler(tmp_path):
    """A command turns SIGTERM into an exception; the pool's workers must not inherit that: the pool ends them with
    SIGTERM, and a worker unwound mid-queue prints a traceback (and can hang the pool's teardown)."""
    script = tmp_path / "many.py"
    script.write_text(
        "import signal\n"
        "from spamlang.cli.app import _terminate\n"
        "from spamlang.system.processes import fork_map\n"
        "signal.signal(signal.SIGTERM, _terminate)\n"
        "for _ in range(30):\n"
        "    assert fork_map(abs, list(range(-50, 0)), 2) == list(range(50, 0, -1))\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def _pid(_) -> int:
    return os.getpid()


def test_fork_map_forks_only_when_more_than_one_process_is_asked_for():
    from spamlang.system.processes import fork_map
    assert fork_map(_pid, [1, 2, 3], 1) == [os.getpid()] * 3
    assert os.getpid() not in fork_map(_pid, [1, 2, 3], 2)
