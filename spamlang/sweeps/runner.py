"""The suite runner: run every configuration not yet recorded, locally or on a Ray cluster, and keep going on failure.

Each finished run's record is written atomically by this (the driver) process as ``OUT/runs/<run_id>.json``, so an
interrupted sweep (Ctrl-C, a crash, ``kill -9``) never leaves a partial or duplicate record; rerunning skips what is
recorded, and resumes a run in flight from its snapshot (``OUT/runs/.partial``, see :mod:`spamlang.training.snapshot`),
so the sweep loses at most what such a run trained since its last one. A run that raises is recorded with status
``failed`` and its error, and is tried again on the next rerun.

The learning-rate grid grows on its own (see :mod:`spamlang.sweeps.lrgrid`): after the suite's runs, each configuration
whose chosen lr (on val) is an edge of the lrs tried gets the next value outward (x or / LR_FACTOR), for all its seeds,
round after round, until the chosen lr is inside the range, the upper edge diverged, or ``lr_rounds`` rounds are
spent. Each record's ``suite.lr_round`` says in which round its run was added (0: the suite's own grid).

A failure is checked against more data (a suite's ``extend_budget``, see :func:`budget_extensions`): after those
rounds, each configuration that most seeds did not learn at its chosen lr (by the learned rule,
:func:`spamlang.record.learned.learned_from`, of each record's history) runs again at ``extend_budget`` times its
budget, at the chosen lr and its two neighbours (x and / LR_FACTOR), for all its seeds; the lr rounds then apply to
those runs too.
Each record's ``suite.budget_round`` says which budget round added it (0: the suite's own budget, 1: the extension).

Runs that can share one computation train as an ensemble (:func:`work_items`, :mod:`spamlang.training.ensemble`): the
pending runs of one configuration that differ only in seed and lr, small enough for batching to pay, in groups of up to
``ensemble.max_members``. Each member still yields its own record, written as above; a group whose batched computation
raises trains run by run. ``ensemble=False`` (``spamlang run --no-ensemble``) trains every run alone.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from spamlang import record
from spamlang.config import EXECUTION_FIELDS, RunConfig
from spamlang.errors import SpamLangError
from spamlang.record.learned import learned_from
from spamlang.scoring.configurations import choose, lr_groups, outcome
from spamlang.sweeps.executors import EXECUTORS, Snapshots, _device, _local, _ray, numbered
from spamlang.sweeps.lrgrid import LR_FACTOR, LR_ROUNDS, next_lrs, outward
from spamlang.sweeps.progress import Postfix, progress_line
from spamlang.sweeps.suite import Suite, check_extend_budget
from spamlang.task import TASKS
from spamlang.training import snapshot, tracking
from spamlang.training.tracking import TrackerSpec


def pending(configs: Iterable[RunConfig], runs_dir: Path) -> list[RunConfig]:
    """Runs with no ``ok``/``diverged`` record of the task's current version yet; stale temporary files from killed
    runs are removed, and so are the snapshots of recorded runs (killed between writing the record and dropping the
    snapshot).

    A file in the place of a record that is not one this version reads (unreadable, another schema, non-finite
    metrics for status ok) is never counted as done nor overwritten: SpamLangError names it.
    """
    for tmp in [*runs_dir.glob(".*.tmp"), *(runs_dir / snapshot.FOLDER).glob(".*.tmp")]:
        tmp.unlink(missing_ok=True)
    todo = []
    for config in configs:
        if run_state(config, runs_dir) == "recorded":
            snapshot.path_for(runs_dir, config.run_id).unlink(missing_ok=True)
        else:
            todo.append(config)
    return todo


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


def lr_extensions(configs: Iterable[RunConfig], runs_dir: Path, factor: float = LR_FACTOR) -> list[RunConfig]:
    """The runs one more round of the adaptive lr grid adds: per configuration (every setting but seed and lr), the
    :func:`spamlang.sweeps.lrgrid.next_lrs` of its recorded outcomes, for each of its seeds. A run without a record
    counts as failed."""
    new = []
    for by_lr in lr_groups(configs):
        outcomes = {lr: [_outcome(_record(runs_dir, c)) for c in runs] for lr, runs in by_lr.items()}
        seeds = {c.seed: c for runs in by_lr.values() for c in runs}
        new += [dataclasses.replace(c, lr=lr) for lr in next_lrs(outcomes, factor) for c in seeds.values()]
    return new


def budget_extensions(configs: Iterable[RunConfig], runs_dir: Path, budget_factor: float,
                      lr_factor: float = LR_FACTOR) -> list[RunConfig]:
    """The runs the budget round adds: each configuration (every setting but seed and lr) whose chosen lr
    (:func:`spamlang.scoring.configurations.choose` on val) most of its seeds did not learn (no record of status ok
    learned by the current rule, :func:`spamlang.record.learned.learned_from` of its history: a stored
    ``final.steps_to_learn`` is an older harness's answer), at ``budget_factor`` times its budget (see
    :func:`scaled_budget`), at the chosen lr and
    at it x and / ``lr_factor``, for each of its seeds. A configuration whose seeds all failed at the chosen lr (an
    error, not a result) is not extended."""
    new = []
    for by_lr in lr_groups(configs):
        records = {lr: [_record(runs_dir, c) for c in runs] for lr, runs in by_lr.items()}
        chosen = choose({lr: [_outcome(r) for r in records[lr]] for lr in sorted(records)})
        if all(r is None or r.status == "failed" for r in records[chosen]):
            continue
        learned = sum(r is not None and r.status == "ok" and learned_from(r.history, r.bayes_loss) is not None
                      for r in records[chosen])  # the rule as it is now, not as an older harness stored it
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


def work_items(configs: list[RunConfig], ensemble: bool = True) -> list[list[RunConfig]]:
    """The runs ``configs`` as work items, each at the place of its first run: with ``ensemble``, the runs of one
    configuration (:func:`spamlang.scoring.configurations.lr_groups`, with the same execution fields) that
    :func:`spamlang.training.ensemble.batchable` admits are split evenly into groups of at most
    :func:`~spamlang.training.ensemble.max_members`; every other run is an item of its own."""
    if not ensemble:
        return [[c] for c in configs]
    from spamlang.training.ensemble import max_members
    items = []
    for by_lr in lr_groups(configs):
        runs: dict[tuple, list[RunConfig]] = {}
        for c in (c for lr_runs in by_lr.values() for c in lr_runs):
            runs.setdefault(tuple(getattr(c, f) for f in EXECUTION_FIELDS), []).append(c)
        for group in runs.values():
            size = max_members(group[0])
            parts = -(-len(group) // size)  # ceil
            items += [group[i * len(group) // parts:(i + 1) * len(group) // parts] for i in range(parts)]
    first = {}
    for i, c in enumerate(configs):
        first.setdefault(c.run_id, i)
    return sorted(items, key=lambda item: min(first[c.run_id] for c in item))


def _record(runs_dir: Path, config: RunConfig) -> record.RunRecord | None:
    """The record of a run, None when it is missing or unreadable."""
    try:
        return record.read(runs_dir / f"{config.run_id}.json")
    except SpamLangError:
        return None


def _outcome(rec: record.RunRecord | None) -> tuple[str, float | None]:
    """(status, final val loss) of a run's record; a missing or unreadable one counts as failed."""
    return ("failed", None) if rec is None else outcome(rec.status, rec.final)


def run_suite(suite: Suite, out: str | Path, executor: str = "local", workers: int = 1, device: str | None = None,
              progress: bool = True, lr_rounds: int = LR_ROUNDS, threads: int | None = None,
              log: Callable[[str], None] | None = None, extend_budget: float | None = None,
              tracker: TrackerSpec | None = None, ensemble: bool = True,
              snapshot_every: float = snapshot.SNAPSHOT_EVERY) -> dict:
    """Run what is missing of ``suite`` into ``out/runs``, then extend each configuration's lr grid for up to
    ``lr_rounds`` rounds (none when the suite does not sweep ``lr``); then, with a budget factor (``extend_budget``,
    default the suite's; 1: none), rerun the configurations not learned at that factor times their budget
    (:func:`budget_extensions`) and extend their lr grids the same way. With ``ensemble``, the pending runs that can
    share one computation train as ensembles (:func:`work_items`); the records are the same up to float rounding.
    Return counts {total, skipped, ok, diverged, failed, lr_rounds (rounds that added runs), lr_added (runs they
    added), budget_added (runs the budget round added, before its lr rounds)}.

    Each run uses ``threads`` intra-op threads, or the thread policy's choice for it given ``workers``. ``progress``
    shows a bar over the runs, with the step counts of the runs in flight (local executor); ``log`` (for output that
    is not a terminal) is called with one line per finished run. With ``tracker``, each run is also logged to that
    experiment tracker (see :mod:`spamlang.training.tracking`).

    A run in flight (locally; not on Ray) writes a snapshot of itself to ``out/runs/.partial`` at an evaluation at
    most every ``snapshot_every`` seconds (0: at every evaluation; see :mod:`spamlang.training.snapshot`), so that a
    rerun resumes it where it was, to the same record; a run shorter than that writes none. The snapshot is dropped
    once the run's record is written (kept for a failed run, whose retry resumes from it).
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
    rounds = _Rounds(runs_dir, executor, workers, device, threads, lr_rounds, log, counts, time.monotonic(), tracker,
                     ensemble, snapshot_every)
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
    ensemble: bool = True
    snapshot_every: float = snapshot.SNAPSHOT_EVERY

    def run(self, batch: list[RunConfig], info: record.SuiteInfo, bar, what: str, prefix: str = "") -> \
            list[RunConfig]:
        """Run what ``batch`` lacks, then up to ``lr_rounds`` lr rounds over it; return every configuration run.
        ``what`` names the batch in the log, ``prefix`` its lr rounds."""
        counts, runs_dir, workers = self.counts, self.runs_dir, self.workers
        run = _local if self.executor == "local" else _ray
        snapshots = Snapshots(str(runs_dir), self.snapshot_every)
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
            groups = work_items([dataclasses.replace(c, device=self.device or c.device) for c in todo], self.ensemble)
            items = [[{**c.to_dict(), "device": _device(c, self.device, i % workers, self.executor)} for c in group]
                     for i, group in enumerate(groups)]
            first = sum(counts[k] for k in ("skipped", "ok", "diverged", "failed")) + 1
            show = Postfix(bar, counts, spans={number: number + len(item) - 1
                                               for number, item in zip(numbered(items, first), items)})
            for rec in run(items, dataclasses.replace(info, lr_round=round_), workers, self.threads, self.tracker,
                           first, show, snapshots=snapshots):
                record.write(rec, runs_dir)
                if rec.status != "failed":
                    snapshots.drop(rec.run_id)
                counts[rec.status] += 1
                bar.update(1)
                show(show.live, force=True)
                if self.log:
                    self.log(progress_line(rec, counts, time.monotonic() - self.started))
        return configs


