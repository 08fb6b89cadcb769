"""The thread policy: how many intra-op threads torch uses for one piece of work (a training run, a floor fit).

Small models are overhead-bound: a training step is hundreds of tiny kernels, and with two or more OpenMP threads
every kernel ends at a barrier where the threads wait on each other. On a machine where anything else runs, one of
them is often descheduled and the others wait for it: a SpamLang run at V = 2,048, D = 32 was 2.4-7x slower on
two threads than on one beside other work, and only 1.4x faster on a quiet machine (``results/perf/threads.md``).
Large head-dominated steps (V = 32,768, D = 64) gain from more threads, but only on cores that nothing else uses.

The rule (:func:`choose`), in order:

1. ``--threads N`` where the command takes it, else the ``SPAMLANG_THREADS`` environment variable, if set.
2. One thread when the work is below :data:`SERIAL_FLOPS` floating-point operations per step.
3. Otherwise the process's share of the cores it may use: ``len(os.sched_getaffinity(0))`` (``os.cpu_count()``
   where affinity is not available) divided by the number of worker processes sharing them, and no more than the
   cores idle right now (:func:`idle_cores`, rounded; at least one): large steps on two threads were 2.8x slower
   than on one while other processes kept the cores busy.

:func:`using` applies a count for the duration of a ``with`` block and restores the previous one after.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

from spamlang.errors import SpamLangError

#: the environment variable that overrides the rule (a positive integer)
ENV = "SPAMLANG_THREADS"
#: below this many FLOPs per step one thread (``results/perf/threads.md``, a 2-core AMD EPYC, torch 2.13, OpenMP):
#: there two threads gain little on a quiet machine (1.13x at 2.2e8 FLOPs/step, V = 2,048, D = 32, T = 8, batch 64)
#: and lose 4-10x on a shared one, and one thread everywhere makes a small run's metrics bitwise the same on every
#: machine under any load; from 8.2e8 (V = 8,192) two free cores gain 1.3-1.8x.
SERIAL_FLOPS = 5e8


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_cores(window: float = 0.1) -> float | None:
    """How many of the cores this process may use were idle over the next ``window`` seconds, from the kernel's
    per-CPU counters (``/proc/stat``); None where those are not readable (not Linux)."""
    def counters() -> dict[str, tuple[int, int]]:  # cpu name -> (idle + iowait jiffies, all jiffies)
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu") and not line.startswith("cpu ")]
        return {row[0]: (int(row[4]) + int(row[5]), sum(map(int, row[1:9]))) for row in rows}
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = counters()
        time.sleep(window)
        after = counters()
    except (OSError, AttributeError, ValueError, IndexError):
        return None
    idle = 0.0
    for cpu in mine & before.keys() & after.keys():
        total = after[cpu][1] - before[cpu][1]
        idle += (after[cpu][0] - before[cpu][0]) / total if total > 0 else 1.0
    return idle


def from_env() -> int | None:
    """The count ``SPAMLANG_THREADS`` asks for, None when unset or empty; SpamLangError when it is not a positive
    integer."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise SpamLangError(f"{ENV} must be a positive integer, got {value!r}")
    return int(value)


def step_flops(config) -> float:
    """Training FLOPs of one step of a run configuration: 3 x (forward matmul FLOPs per token) x tokens, with
    12 L D² per token for the backbone and 2 V D for the head."""
    per_token = 12 * config.layers * config.d_model ** 2 + 2 * config.vocab_size * config.d_model
    return 3 * per_token * config.batch_size * config.seq_len


def choose(flops: float, workers: int = 1, cores: int | None = None, override: int | None = None,
           idle: float | None = None) -> int:
    """Intra-op threads for work of ``flops`` per step run by each of ``workers`` processes sharing ``cores``
    (default: :func:`available_cores`) of which ``idle`` are free (default: measured by :func:`idle_cores` when it
    matters); ``override`` (a ``--threads`` flag) wins over ``SPAMLANG_THREADS``, which wins over the rule."""
    if override is not None:
        if override < 1:
            raise SpamLangError(f"--threads must be >= 1, got {override}")
        return override
    requested = from_env()
    if requested is not None:
        return requested
    if flops < SERIAL_FLOPS:
        return 1
    share = max(1, (cores or available_cores()) // max(1, workers))
    if share > 1 and idle is None:
        idle = idle_cores()
    return share if idle is None else max(1, min(share, round(idle)))


@contextlib.contextmanager
def using(threads: int) -> Iterator[int]:
    """Run torch's intra-op parallel regions on ``threads`` threads inside the block; restore the count after."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
