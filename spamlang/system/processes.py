"""Process hygiene: worker processes that die with their parent, the lock that keeps two sweeps out of one folder, and
a map over forked processes for the read-only work of scoring and publishing.

A worker calls :func:`die_with_parent` as it starts: on Linux the kernel kills it when its parent dies
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``, ``kill -9`` of the parent included), and everywhere a daemon thread ends it
within about a second of its parent's pid changing (the portable fallback). :class:`FolderLock` is an exclusive
``flock`` on a file in a folder, held while a command writes there and released when it exits, however it exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from spamlang.errors import SpamLangError

#: prctl option: the signal the kernel sends this process when its parent thread dies (linux/prctl.h)
PR_SET_PDEATHSIG = 1
#: seconds between the watchdog's looks at the parent pid
WATCH_INTERVAL = 0.5
#: the lock file a sweep holds in its runs folder
LOCK_NAME = ".spamlang.lock"

T = TypeVar("T")
R = TypeVar("R")


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL | None:
    """The C library on Linux (looked up once: the lookup runs ``ldconfig``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _set_death_signal(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent dies; False where that is not possible."""
    libc = _libc()
    try:
        return libc is not None and libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except AttributeError:
        return False


def _watch(parent: int, interval: float) -> None:
    import time
    while True:
        if os.getppid() != parent:
            os._exit(1)  # orphaned: nothing of this worker's is worth keeping (the driver writes the records)
        time.sleep(interval)


def die_with_parent(parent: int | None = None, interval: float = WATCH_INTERVAL) -> None:
    """Make this (worker) process end when its parent ``parent`` (default: the current parent) dies."""
    parent = os.getppid() if parent is None else parent
    _set_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, interval), name="spamlang-parent-watchdog", daemon=True).start()


def fork_map(function: Callable[[T], R], items: Sequence[T], processes: int, chunksize: int = 1) -> list[R]:
    """``[function(item) for item in items]`` on up to ``processes`` forked processes, which inherit this process's
    state (only the items, the results and the name of ``function``, a module-level one, are pickled) and die with
    it; in this process where fork is not available, one process is asked for, there are fewer than two items, or
    this process is itself a pool's worker. The results are the same either way, in the order of ``items``."""
    import multiprocessing
    processes = min(processes, len(items))
    if processes < 2 or "fork" not in multiprocessing.get_all_start_methods() \
            or multiprocessing.current_process().daemon:
        return [function(item) for item in items]
    _libc()  # looked up here, once, rather than in every worker
    with multiprocessing.get_context("fork").Pool(processes, initializer=_pool_worker) as pool:
        return pool.map(function, items, chunksize=chunksize)


def _pool_worker() -> None:
    """A :func:`fork_map` worker: it dies with its parent, and at once on SIGTERM (the pool's way to end it), not
    through the handler a command installs for itself, which would unwind the worker mid-queue."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


class FolderLock:
    """An exclusive lock on ``folder/.spamlang.lock`` (created with the folder), refused at once when another process
    holds it: SpamLangError naming the folder and the holder's pid. Use as a context manager; the kernel releases it
    when the process exits, ``kill -9`` included."""

    def __init__(self, folder: str | Path, what: str = "spamlang run"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # not a Unix: no lock
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                raise SpamLangError(f"{self.folder} is in use by another {self.what} (pid {holder or 'unknown'}); "
                                    f"wait for it to finish or give another --out") from None
            try:  # the holder before may have removed the file between our open and our lock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: no one else holds this file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
