"""The suite runner: run every configuration not yet recorded, locally or on a Ray cluster, and keep going on failure.

Each finished run's record is written atomically by this (the driver) process as ``OUT/runs/<run_id>.json``, so an
interrupted sweep (Ctrl-C, a crash, ``kill -9``) loses at most the runs in flight and never leaves a partial or
duplicate record; rerunning skips what is recorded. A run that raises is recorded with status ``failed`` and its error,
and is tried again on the next rerun.

The learning-rate grid grows on its own (see :mod:`spamlang.selection`): after the suite's runs, each configuration
whose chosen lr (on val) is an edge of the lrs tried gets the next value outward (x or / LR_FACTOR), for all its seeds,
round after round, until the chosen lr is inside the range, the upper edge diverged, or ``lr_rounds`` rounds are
spent. Each record's ``suite.lr_round`` says in which round its run was added (0: the suite's own grid).

A failure is checked against more data (a suite's ``extend_budget``, see :func:`budget_extensions`): after those
rounds, each configuration that most seeds did not learn at its chosen lr (``final.steps_to_learn`` None, the
learned criterion of :func:`spamlang.record.learned_from`) runs again at ``extend_budget`` times its budget, at the
chosen lr and its two neighbours (x and / LR_FACTOR), for all its seeds; the lr rounds then apply to those runs too.
Each record's ``suite.budget_round`` says which budget round added it (0: the suite's own budget, 1: the extension).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import math
import multiprocessing
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm.auto import tqdm

from . import record, tracking
from .config import EXECUTION_FIELDS, RunConfig
from .errors import SpamLangError
from .selection import LR_FACTOR, LR_ROUNDS, next_lrs, outward
from .selection import choose as choose_setting
from .suite import Suite, check_extend_budget
from .task import TASKS
from .threads import choose, idle_cores, step_flops
from .tracking import TrackerSpec

EXECUTORS = ("local", "ray")


def execute(config: dict, suite_info: record.SuiteInfo, threads: int, tracker: TrackerSpec | None = None,
            number: int = 0, on_step: Callable[[int, int, int], None] | None = None) -> record.RunRecord:
    """Train one run on ``threads`` intra-op threads and return its record; an exception (of the run or of its
    ``tracker``, which logs each evaluation and the record) becomes a ``failed`` record (never raised). ``on_step``
    (default: this worker process's slot of the live step counts, if any) is called with (``number``, steps done,
    steps) after each step."""
    from .harness import train
    cfg = RunConfig.from_dict(config)
    on_step, run = on_step or _live_step, None

    def failed(exc: Exception, origin: str = "") -> record.RunRecord:
        return record.RunRecord.failed(cfg, f"{origin}{type(exc).__name__}: {exc}", traceback.format_exc(limit=8),
                                       threads)
    try:
        run = tracking.start(tracker, cfg.resolve()) if tracker else None
        rec = train(cfg, progress=False, threads=threads, on_eval=run and run.log_point,
                    on_step=lambda step, steps: on_step(number, step, steps))
    except Exception as exc:
        rec = failed(exc)
    finally:
        on_step(number, 0, 0)  # the run is no longer in flight
    rec = dataclasses.replace(rec, suite=suite_info)
    if run is not None:
        try:
            run.finish(rec)
        except Exception as exc:
            rec = dataclasses.replace(failed(exc, f"tracker {tracker.name}: "), suite=suite_info)
    return rec


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


def pending(configs: Iterable[RunConfig], runs_dir: Path) -> list[RunConfig]:
    """Runs with no ``ok``/``diverged`` record of the task's current version yet; stale temporary files from killed
    runs are removed.

    A file in the place of a record that is not one this version reads (unreadable, another schema, non-finite
    metrics for status ok) is never counted as done nor overwritten: SpamLangError names it.
    """
    for tmp in runs_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return [config for config in configs if run_state(config, runs_dir) != "recorded"]


def run_state(config: RunConfig, runs_dir: Path) -> str:
    """What ``runs_dir`` holds of ``config``: ``recorded`` (an ok or diverged record of the task's current version,
    which a run skips), ``failed``, ``stale`` (a record of another task version) or ``new``. A file in the record's
    place that is not one this version reads raises SpamLangError (see :func:`spamlang.record.read_replaceable`)."""
    rec = record.read_replaceable(runs_dir / f"{config.run_id}.json")
    if rec is None:
        return "new"
    if rec.status == "failed":
        return "failed"
    return "recorded" if rec.task_version == TASKS.get(config.task).version else "stale"


def _configurations(configs: Iterable[RunConfig]) -> list[dict[float, list[RunConfig]]]:
    """The runs of each configuration (every setting but seed and lr), by lr."""
    groups: dict[str, dict[float, list[RunConfig]]] = {}
    for config in configs:
        key = json.dumps({k: v for k, v in config.to_dict().items()
                          if k not in ("seed", "lr", *EXECUTION_FIELDS)}, sort_keys=True, default=str)
        groups.setdefault(key, {}).setdefault(config.lr, []).append(config)
    return list(groups.values())


def lr_extensions(configs: Iterable[RunConfig], runs_dir: Path, factor: float = LR_FACTOR) -> list[RunConfig]:
    """The runs one more round of the adaptive lr grid adds: per configuration (every setting but seed and lr), the
    :func:`spamlang.selection.next_lrs` of its recorded outcomes, for each of its seeds. A run without a record counts
    as failed."""
    new = []
    for by_lr in _configurations(configs):
        outcomes = {lr: [_outcome(_record(runs_dir, c)) for c in runs] for lr, runs in by_lr.items()}
        seeds = {c.seed: c for runs in by_lr.values() for c in runs}
        new += [dataclasses.replace(c, lr=lr) for lr in next_lrs(outcomes, factor) for c in seeds.values()]
    return new


def budget_extensions(configs: Iterable[RunConfig], runs_dir: Path, budget_factor: float,
                      lr_factor: float = LR_FACTOR) -> list[RunConfig]:
    """The runs the budget round adds: each configuration (every setting but seed and lr) whose chosen lr
    (:func:`spamlang.selection.choose` on val) most of its seeds did not learn (no record of status ok with a
    ``final.steps_to_learn``), at ``budget_factor`` times its budget (see :func:`scaled_budget`), at the chosen lr and
    at it x and / ``lr_factor``, for each of its seeds. A configuration whose seeds all failed at the chosen lr (an
    error, not a result) is not extended."""
    new = []
    for by_lr in _configurations(configs):
        records = {lr: [_record(runs_dir, c) for c in runs] for lr, runs in by_lr.items()}
        chosen = choose_setting({lr: [_outcome(r) for r in records[lr]] for lr in sorted(records)})
        if all(r is None or r.status == "failed" for r in records[chosen]):
            continue
        learned = sum(r is not None and r.status == "ok" and r.final.steps_to_learn is not None
                      for r in records[chosen])
        if 2 * learned > len(records[chosen]):
            continue
        seeds = {c.seed: c for runs in by_lr.values() for c in runs}
        lrs = dict.fromkeys([outward(chosen, 1 / lr_factor), chosen, outward(chosen, lr_factor)])
        new += [dataclasses.replace(scaled_budget(c, budget_factor), lr=lr) for lr in lrs for c in seeds.values()]
    return new


def scaled_budget(config: RunConfig, factor: float) -> RunConfig:
    """``config`` with ``factor`` times its budget: its ``examples_per_symbol`` where it sets one (the steps follow
    at resolution; a whole number is an int, so that 4 and 4.0 give the same run), else its ``steps`` (rounded up)."""
    if config.examples_per_symbol is not None:
        examples = float(round(config.examples_per_symbol * factor, 9))
        return dataclasses.replace(config, examples_per_symbol=int(examples) if examples.is_integer() else examples)
    return dataclasses.replace(config, steps=math.ceil(round(config.steps * factor, 9)))


def _record(runs_dir: Path, config: RunConfig) -> record.RunRecord | None:
    """The record of a run, None when it is missing or unreadable."""
    try:
        return record.read(runs_dir / f"{config.run_id}.json")
    except SpamLangError:
        return None


def _outcome(rec: record.RunRecord | None) -> tuple[str, float | None]:
    """(status, final val loss) of a run's record; a missing or unreadable one counts as failed."""
    if rec is None:
        return "failed", None
    return rec.status, rec.final.val_loss if rec.final is not None else None


def _device(config: RunConfig, override: str | None, slot: int, executor: str) -> str:
    """The run's device: ``override`` (``--device``) or the suite's. Local CUDA workers are spread over the visible
    GPUs (and share them beyond that); a Ray task sees only the GPU Ray gave it, so it keeps the name as it is."""
    import torch
    device = override or config.device
    if executor == "local" and device in ("auto", "cuda") and torch.cuda.device_count() > 1:
        return f"cuda:{slot % torch.cuda.device_count()}"
    return device


def _threads(config: dict, workers: int, override: int | None, cores: int | None = None,
             idle: float | None = None) -> int:
    """The intra-op threads of one run among ``workers`` sharing ``cores`` (see :mod:`spamlang.threads`)."""
    return choose(step_flops(RunConfig.from_dict(config)), workers, cores, override, idle)


def _local(configs: list[dict], info: record.SuiteInfo, workers: int, threads: int | None,
           tracker: TrackerSpec | None = None, first: int = 1,
           show: Callable[[dict[int, tuple[int, int]]], None] = lambda live: None,
           poll: float = 0.5) -> Iterator[record.RunRecord]:
    """Run ``configs`` (numbered from ``first``) on ``workers`` local processes (in this one when 1), yielding each
    record as it finishes; ``show`` is called with the step counts of the runs in flight (see
    :meth:`Live.in_flight`): after each step in this process, else every ``poll`` seconds."""
    if workers == 1:
        for number, config in enumerate(configs, first):
            yield execute(config, info, _threads(config, 1, threads), tracker, number,
                          lambda n, step, steps: show({n: (step, steps)} if steps else {}))
        return
    idle = idle_cores()  # once, before any worker starts
    counts = [_threads(config, workers, threads, idle=idle) for config in configs]  # a bad value fails before any run
    ctx = multiprocessing.get_context("spawn")
    live = Live(ctx, workers)
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                  initargs=(live.array, live.claimed))
    futures = {pool.submit(execute, config, info, n, tracker, number)
               for number, (config, n) in enumerate(zip(configs, counts), first)}
    try:
        while futures:
            done, futures = cf.wait(futures, timeout=poll, return_when=cf.FIRST_COMPLETED)
            for future in done:
                yield future.result()
            show(live.in_flight())
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


def _worker_init(array=None, claimed=None) -> None:
    """Worker processes leave Ctrl-C to the driver, which stops them (see :func:`_stop`), give tqdm a thread lock
    (its default is a named semaphore, which a stopped worker would leak), and claim their slot of the live step
    counts (``array``, ``claimed``: see :class:`Live`)."""
    global _WORKER_SLOT
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


def _ray(configs: list[dict], info: record.SuiteInfo, workers: int, threads: int | None,
         tracker: TrackerSpec | None = None, first: int = 1, show=None, poll=None) -> Iterator[record.RunRecord]:
    """Each run is a Ray task asking for the CPUs it trains on (its share of the largest node's cores) and a GPU
    when the cluster has one (see :func:`ray_request`); no live step counts (``show`` is not called)."""
    try:
        import ray
    except ImportError:
        raise SpamLangError("--executor ray needs Ray: pip install 'spamlang[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, include_dashboard=False)
    cluster, cores = ray.cluster_resources(), ray_cores(ray.nodes())
    remote = ray.remote(max_retries=0)(execute)
    counts = [_threads(config, 1, threads, cores, idle=cores) for config in configs]  # node load: Ray's business
    refs = [remote.options(**ray_request(cluster, n)).remote(config, info, n, tracker, number)
            for number, (config, n) in enumerate(zip(configs, counts), first)]
    try:
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            yield ray.get(done[0])
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise


def run_suite(suite: Suite, out: str | Path, executor: str = "local", workers: int = 1, device: str | None = None,
              progress: bool = True, lr_rounds: int = LR_ROUNDS, threads: int | None = None,
              log: Callable[[str], None] | None = None, extend_budget: float | None = None,
              tracker: TrackerSpec | None = None) -> dict:
    """Run what is missing of ``suite`` into ``out/runs``, then extend each configuration's lr grid for up to
    ``lr_rounds`` rounds (none when the suite does not sweep ``lr``); then, with a budget factor (``extend_budget``, default the suite's; 1: none), rerun the
    configurations not learned at that factor times their budget (:func:`budget_extensions`) and extend their lr grids
    the same way. Return counts {total, skipped, ok, diverged, failed, lr_rounds (rounds that added runs), lr_added
    (runs they added), budget_added (runs the budget round added, before its lr rounds)}.

    Each run uses ``threads`` intra-op threads, or the thread policy's choice for it given ``workers``. ``progress``
    shows a bar over the runs, with the step counts of the runs in flight (local executor); ``log`` (for output that
    is not a terminal) is called with one line per finished run. With ``tracker``, each run is also logged to that
    experiment tracker (see :mod:`spamlang.tracking`).
    """
    if executor not in EXECUTORS:
        raise SpamLangError(f"unknown executor '{executor}' (executors: {', '.join(EXECUTORS)})")
    if workers < 1:
        raise SpamLangError(f"--workers must be >= 1, got {workers}")
    if lr_rounds < 0:
        raise SpamLangError(f"--lr-rounds must be >= 0, got {lr_rounds}")
    factor = suite.extend_budget if extend_budget is None else extend_budget
    if factor is not None and factor != 1:
        check_extend_budget(factor, "--extend-budget")
    runs_dir = Path(out) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if tracker:
        tracking.prepare(tracker)
    info = record.SuiteInfo(name=suite.name, version=suite.version, source=suite.source, sweep=tuple(suite.sweep))
    counts = {"total": 0, "skipped": 0, "ok": 0, "diverged": 0, "failed": 0, "lr_rounds": 0, "lr_added": 0,
              "budget_added": 0}
    lr_rounds = lr_rounds if "lr" in suite.sweep else 0
    rounds = _Rounds(runs_dir, executor, workers, device, threads, lr_rounds, log, counts, time.monotonic(), tracker)
    with tqdm(total=len(suite.runs), unit="run", disable=not progress, desc=f"suite {suite.name}") as bar:
        configs = rounds.run(list(suite.runs), dataclasses.replace(info, budget_round=0), bar, f"suite {suite.name}")
        if factor is not None and factor != 1:
            extended = budget_extensions(configs, runs_dir, factor)
            if extended:
                bar.total += len(extended)
                counts["budget_added"] = len(extended)
                what = f"budget round 1 ({factor:g}x budget)"
                rounds.run(extended, dataclasses.replace(info, budget_round=1), bar, what, f"{what}, ")
    return counts


@dataclasses.dataclass
class _Rounds:
    """How :func:`run_suite` runs a batch of configurations and the lr rounds that follow it, keeping ``counts``."""

    runs_dir: Path
    executor: str
    workers: int
    device: str | None
    threads: int | None
    lr_rounds: int
    log: Callable[[str], None] | None
    counts: dict
    started: float
    tracker: TrackerSpec | None = None

    def run(self, batch: list[RunConfig], info: record.SuiteInfo, bar, what: str, prefix: str = "") -> \
            list[RunConfig]:
        """Run what ``batch`` lacks, then up to ``lr_rounds`` lr rounds over it; return every configuration run.
        ``what`` names the batch in the log, ``prefix`` its lr rounds."""
        counts, runs_dir, workers = self.counts, self.runs_dir, self.workers
        run = _local if self.executor == "local" else _ray
        configs = list(batch)
        for round_ in range(self.lr_rounds + 1):
            if round_:
                batch = lr_extensions(configs, runs_dir)
                if not batch:
                    break
                configs += batch
                counts["lr_rounds"] = max(counts["lr_rounds"], round_)
                counts["lr_added"] += len(batch)
                bar.total += len(batch)
            todo = pending(batch, runs_dir)
            counts["total"] += len(batch)
            counts["skipped"] += len(batch) - len(todo)
            bar.update(len(batch) - len(todo))
            if self.log and todo:
                label = f"{prefix}lr round {round_}" if round_ else what
                self.log(f"{label}: {len(todo)} of {len(batch)} runs to do "
                         f"({len(batch) - len(todo)} already recorded) -> {runs_dir}")
            items = [{**c.to_dict(), "device": _device(c, self.device, i % workers, self.executor)}
                     for i, c in enumerate(todo)]
            show = _Postfix(bar, counts)
            first = sum(counts[k] for k in ("skipped", "ok", "diverged", "failed")) + 1
            for rec in run(items, dataclasses.replace(info, lr_round=round_), workers, self.threads, self.tracker,
                           first, show):
                record.write(rec, runs_dir)
                counts[rec.status] += 1
                bar.update(1)
                show(show.live, force=True)
                if self.log:
                    self.log(progress_line(rec, counts, time.monotonic() - self.started))
        return configs


class _Postfix:
    """Shows the counts of finished runs and the step counts of the runs in flight in the bar's postfix, e.g.
    ``3 ok, 0 diverged, 0 failed | run 4: step 120/400``, redrawn at most every ``interval`` seconds."""

    def __init__(self, bar, counts: dict, interval: float = 0.5):
        self.bar, self.counts, self.interval, self.drawn = bar, counts, interval, -math.inf
        self.live: dict[int, tuple[int, int]] = {}

    def __call__(self, live: dict[int, tuple[int, int]], force: bool = False) -> None:
        self.live = live
        if self.bar.disable or not (force or time.monotonic() - self.drawn >= self.interval):
            return
        self.bar.set_postfix_str(postfix(self.counts, live), refresh=True)
        self.drawn = time.monotonic()


def postfix(counts: dict, live: dict[int, tuple[int, int]]) -> str:
    """The bar's postfix: counts of finished runs, then ``run k: step s/S`` for each run in flight by number."""
    text = f"{counts['ok']} ok, {counts['diverged']} diverged, {counts['failed']} failed"
    steps = ", ".join(f"run {k}: step {step}/{steps}" for k, (step, steps) in sorted(live.items()))
    return f"{text} | {steps}" if steps else text


def progress_line(rec: record.RunRecord, counts: dict, elapsed: float) -> str:
    """One line about a finished run: position in the suite, what ran, its outcome, the counts and elapsed time."""
    c = rec.config
    head = c.head + (f":{c.head_rank}" if c.head_rank else "")
    loss = rec.final.loss if rec.final is not None else None
    outcome = rec.status + (f", test loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else "")
    done = sum(counts[k] for k in ("skipped", "ok", "diverged", "failed"))
    minutes, seconds = divmod(int(elapsed), 60)
    return (f"[{done}/{counts['total']}] {c.task} V={c.vocab_size} {head} lr={c.lr:g} seed={c.seed}: "
            f"{outcome} | {counts['ok']} ok, {counts['diverged']} diverged, {counts['failed']} failed | "
            f"{minutes}m{seconds:02d}s")
