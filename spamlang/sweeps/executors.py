"""Executors: where a suite's runs train. A work item is one run or an ensemble of runs that differ only in seed and
lr (:func:`execute_group`). ``local`` runs the items in this process or in worker processes (spawned, each claiming a
slot of live step counts in shared memory); ``ray`` hands each item to a Ray cluster, one GPU per item where the
cluster has GPUs. Every executor yields finished records; the runner writes them.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import multiprocessing
import os
import signal
import threading
import traceback
import warnings
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

from spamlang import record
from spamlang.config import RunConfig
from spamlang.errors import SpamLangError
from spamlang.system.threads import choose, idle_cores, step_flops
from spamlang.training import tracking
from spamlang.training.tracking import TrackerSpec

EXECUTORS = ("local", "ray")


def execute(config: dict, suite_info: record.SuiteInfo, threads: int, tracker: TrackerSpec | None = None,
            number: int = 0, on_step: Callable[[int, int, int], None] | None = None,
            snapshots: Snapshots | None = None) -> record.RunRecord:
    """Train one run on ``threads`` intra-op threads and return its record; an exception (of the run or of its
    ``tracker``, which logs each evaluation and the record) becomes a ``failed`` record (never raised). ``on_step``
    (default: this worker process's slot of the live step counts, if any) is called with (``number``, steps done,
    steps) after each step. With ``snapshots``, the run keeps its snapshot there and resumes from one."""
    from spamlang.training.loop import train
    cfg = RunConfig.from_dict(config)
    on_step, run = on_step or _live_step, None
    try:
        run = tracking.start(tracker, cfg.resolve()) if tracker else None
        rec = train(cfg, progress=False, threads=threads, on_eval=run and run.log_point,
                    on_step=lambda step, steps: on_step(number, step, steps),
                    **(snapshots.arguments(cfg.run_id) if snapshots else {}))
    except Exception as exc:
        rec = _failed(cfg, exc, threads)
    finally:
        on_step(number, 0, 0)  # the run is no longer in flight
    rec = dataclasses.replace(rec, suite=suite_info)
    if run is not None:
        try:
            run.finish(rec)
        except Exception as exc:
            rec = dataclasses.replace(_failed(cfg, exc, threads, f"tracker {tracker.name}: "), suite=suite_info)
    return rec


def execute_group(configs: list[dict], suite_info: record.SuiteInfo, threads: int, tracker: TrackerSpec | None = None,
                  number: int = 0, on_step: Callable[[int, int, int], None] | None = None,
                  snapshots: Snapshots | None = None) -> list[record.RunRecord]:
    """Train the runs ``configs`` (numbered from ``number``; equal but for seed and lr) as one ensemble
    (:func:`spamlang.training.ensemble.train_ensemble`) on ``threads`` threads and return their records in order,
    never raising. A single run, or a group whose batched computation raises (a warning says so), trains run by run
    with :func:`execute`: the group's error never fails a run that trains alone. Each member gets its own ``tracker``
    run, which logs its evaluations and record once the group is done (a group that falls back has logged nothing).
    ``on_step`` is called with (``number``, steps done, steps): the group's step, under its first run's number.
    ``snapshots``: where the group keeps its snapshot (under its first run's id; dropped if the group raises) and each
    run that trains alone its own."""
    records, first = None, RunConfig.from_dict(configs[0]).run_id
    if len(configs) > 1:
        from spamlang.training import ensemble
        on_step, points, shown = on_step or _live_step, [[] for _ in configs], [0]

        def group_step(member: int, step: int, steps: int) -> None:  # once per step, not once per member
            if step != shown[0]:
                shown[0] = step
                on_step(number, step, steps)
        try:
            records = ensemble.train_ensemble([RunConfig.from_dict(c) for c in configs], threads=threads,
                                              on_eval=(lambda i, point: points[i].append(point)) if tracker else None,
                                              on_step=group_step,
                                              **(snapshots.arguments(first) if snapshots else {}))
        except Exception as exc:
            if snapshots:
                snapshots.drop(first)
            warnings.warn(f"the ensemble of runs {number}-{number + len(configs) - 1} raised {type(exc).__name__}: "
                          f"{exc}; training them one by one", RuntimeWarning)
        finally:
            on_step(number, 0, 0)  # the group is no longer in flight
    if records is None:
        return [execute(config, suite_info, threads, tracker, number + i, on_step, snapshots)
                for i, config in enumerate(configs)]
    return [_tracked(dataclasses.replace(rec, suite=suite_info), tracker, member_points, threads)
            for rec, member_points in zip(records, points)]


def _tracked(rec: record.RunRecord, tracker: TrackerSpec | None, points: list, threads: int) -> record.RunRecord:
    """``rec`` after logging its run's evaluation ``points`` and itself to a new ``tracker`` run; a tracker error
    becomes a ``failed`` record."""
    if tracker is None:
        return rec
    try:
        run = tracking.start(tracker, rec.config)
        for point in points:
            run.log_point(point)
        run.finish(rec)
    except Exception as exc:
        return dataclasses.replace(_failed(rec.config, exc, threads, f"tracker {tracker.name}: "), suite=rec.suite)
    return rec


def _failed(config: RunConfig, exc: Exception, threads: int, origin: str = "") -> record.RunRecord:
    """The ``failed`` record of a run that raised ``exc`` (``origin`` prefixes its error)."""
    return record.RunRecord.failed(config, f"{origin}{type(exc).__name__}: {exc}", traceback.format_exc(limit=8),
                                   threads)


@dataclasses.dataclass(frozen=True)
class Snapshots:
    """Where a suite's runs in flight keep their snapshots (in its runs folder, which this process and the workers
    share) and how often they write one (see :mod:`spamlang.training.snapshot`)."""

    runs_dir: str
    every: float

    def path(self, run_id: str) -> Path:
        from spamlang.training.snapshot import path_for
        return path_for(self.runs_dir, run_id)

    def arguments(self, run_id: str) -> dict:
        """The snapshot arguments of ``spamlang.train`` (and ``train_ensemble``) for the run (group) ``run_id``."""
        return {"snapshot": self.path(run_id), "snapshot_every": self.every}

    def drop(self, run_id: str) -> None:
        self.path(run_id).unlink(missing_ok=True)


#: this worker process's slot in the live step counts shared with the driver: (array, slot), see :class:`Live`
_WORKER_SLOT: tuple | None = None


def _live_step(number: int, step: int, steps: int) -> None:
    if _WORKER_SLOT is not None:
        array, slot = _WORKER_SLOT
        array[3 * slot:3 * slot + 3] = [number, step, steps]


class Live:
    """The step counts of the runs in flight, in memory shared with the local worker processes: one slot (run
    number, steps done, steps) per worker, claimed by each worker as it starts."""

    def __init__(self, ctx, workers: int):
        self.array = ctx.Array("q", 3 * workers, lock=False)
        self.claimed = ctx.Value("i", 0)

    def in_flight(self) -> dict[int, tuple[int, int]]:
        """{run number: (steps done, steps)} of the runs training now."""
        values = list(self.array)
        slots = (values[i:i + 3] for i in range(0, len(values), 3))
        return {number: (step, steps) for number, step, steps in slots if steps > 0}


def _device(config: RunConfig, override: str | None, slot: int, executor: str) -> str:
    """The run's device: ``override`` (``--device``) or the suite's. Local CUDA workers are spread over the visible
    GPUs (and share them beyond that); a Ray task sees only the GPU Ray gave it, so it keeps the name as it is."""
    import torch
    device = override or config.device
    if executor == "local" and device in ("auto", "cuda") and torch.cuda.device_count() > 1:
        return f"cuda:{slot % torch.cuda.device_count()}"
    return device


def _threads(item: list[dict], workers: int, override: int | None, cores: int | None = None,
             idle: float | None = None) -> int:
    """The intra-op threads of a work item among ``workers`` sharing ``cores`` (see :mod:`spamlang.system.threads`):
    those of one of its runs, so that an ensemble's members train on the threads they would alone."""
    return choose(step_flops(RunConfig.from_dict(item[0])), workers, cores, override, idle)


def numbered(items: list[list], first: int) -> list[int]:
    """The number of each work item's first run, the runs numbered in order from ``first``."""
    return list(itertools.accumulate([len(item) for item in items[:-1]], initial=first))[:len(items)]


def _local(items: list[list[dict]], info: record.SuiteInfo, workers: int, threads: int | None,
           tracker: TrackerSpec | None = None, first: int = 1,
           show: Callable[[dict[int, tuple[int, int]]], None] = lambda live: None,
           poll: float = 0.5, snapshots: Snapshots | None = None) -> Iterator[record.RunRecord]:
    """Run the work ``items`` (their runs numbered from ``first``) on ``workers`` local processes (in this one when 1),
    yielding each record as its item finishes; ``show`` is called with the step counts of the items in flight, by
    their first run's number (see :meth:`Live.in_flight`): after each step in this process, else every ``poll``
    seconds. The runs keep their ``snapshots`` and resume from them."""
    if workers == 1:
        for number, item in zip(numbered(items, first), items):
            yield from execute_group(item, info, _threads(item, 1, threads), tracker, number,
                                     lambda n, step, steps: show({n: (step, steps)} if steps else {}), snapshots)
        return
    idle = idle_cores()  # once, before any worker starts
    counts = [_threads(item, workers, threads, idle=idle) for item in items]  # a bad value fails before any run
    ctx = multiprocessing.get_context("spawn")
    live = Live(ctx, workers)
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                  initargs=(live.array, live.claimed, os.getpid()))
    futures = {pool.submit(execute_group, item, info, n, tracker, number, snapshots=snapshots)
               for number, item, n in zip(numbered(items, first), items, counts)}
    try:
        while futures:
            done, futures = cf.wait(futures, timeout=poll, return_when=cf.FIRST_COMPLETED)
            for future in done:
                yield from future.result()
            show(live.in_flight())
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


def _worker_init(array=None, claimed=None, parent: int | None = None) -> None:
    """Worker processes die with the driver (``parent``; kill -9 included, see
    :func:`spamlang.system.processes.die_with_parent`), leave Ctrl-C to it, which stops them (see :func:`_stop`), give
    tqdm a thread lock (its default is a named semaphore, which a stopped worker would leak), and claim their slot of
    the live step counts (``array``, ``claimed``: see :class:`Live`)."""
    global _WORKER_SLOT
    from spamlang.system.processes import die_with_parent
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())
    if array is not None:
        with claimed.get_lock():
            _WORKER_SLOT, claimed.value = (array, claimed.value), claimed.value + 1


def _stop(pool: cf.ProcessPoolExecutor, timeout: float = 1.0) -> None:
    """Stop ``pool`` now: drop what has not started, terminate the workers and reap them (no run in flight is
    recorded; a rerun redoes it)."""
    processes = list(pool._processes.values())  # the executor offers no public way to stop running work
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
    pool.shutdown(wait=True, cancel_futures=True)  # the workers are gone: this only releases the queues


def ray_request(cluster: dict, cpus: int) -> dict:
    """The resources one Ray task asks for, given ``ray.cluster_resources()``: ``cpus`` CPUs, and one whole GPU when
    the cluster has one (a run trains on one device), else none."""
    return {"num_cpus": cpus, "num_gpus": 1 if cluster.get("GPU", 0) >= 1 else 0}


def ray_cores(nodes: list[dict]) -> int:
    """The CPUs of the largest live node of a Ray cluster (``ray.nodes()``), at least 1."""
    return int(max((node["Resources"].get("CPU", 1) for node in nodes if node["Alive"]), default=1))


def _ray(items: list[list[dict]], info: record.SuiteInfo, workers: int, threads: int | None,
         tracker: TrackerSpec | None = None, first: int = 1, show=None, poll=None,
         snapshots: Snapshots | None = None) -> Iterator[record.RunRecord]:
    """Each work item is a Ray task asking for the CPUs it trains on (its share of the largest node's cores) and a
    GPU when the cluster has one (see :func:`ray_request`); no live step counts (``show`` is not called) and no
    snapshots (a node of the cluster need not see the driver's folder: a run in flight starts over)."""
    try:
        import ray
    except ImportError:
        raise SpamLangError("--executor ray needs Ray: pip install 'spamlang[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, include_dashboard=False)
    cluster, cores = ray.cluster_resources(), ray_cores(ray.nodes())
    remote = ray.remote(max_retries=0)(execute_group)
    counts = [_threads(item, 1, threads, cores, idle=cores) for item in items]  # node load: Ray's business
    refs = [remote.options(**ray_request(cluster, n)).remote(item, info, n, tracker, number)
            for number, item, n in zip(numbered(items, first), items, counts)]
    try:
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            yield from ray.get(done[0])
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
