"""Part of a suite and what it costs: ``spamlang run --filter KEY=VALUE --limit N --dry-run``.

A filter keeps the runs whose setting ``KEY`` equals ``VALUE``: any run setting (``vocab_size=512``, ``lr=0.01``,
``head=lowrank`` or, with its rank, ``head=lowrank:2``), or a task or head parameter (``task_params.k=16``). Filters on
different keys must all hold; values given for the same key are alternatives. The cost of a run
(:func:`run_flops`) is the arithmetic of its training steps and evaluations plus their fixed costs, in FLOPs at the
nominal rate, turned into wall time by a rate: the recorded runs of this machine's platform and device in the results
folder (their cost over their wall time), else the nominal :data:`NOMINAL_FLOPS`.
"""
from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from spamlang import record
from spamlang.config import ResolvedConfig, RunConfig
from spamlang.errors import SpamLangError
from spamlang.heads.base import HEADS, head_label, head_params
from spamlang.params import parse_value, scalar_fields
from spamlang.scoring.frames import value_order
from spamlang.sweeps.runner import run_state
from spamlang.task import make_task

NESTED = ("task_params", "head_params")
SETTINGS = {f.name: f for f in scalar_fields(RunConfig)}


# -- selection ------------------------------------------------------------------------------------------------------
def parse_filters(items: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``KEY=VALUE`` strings as {key: (values, ...)}; a key given twice keeps both values (alternatives)."""
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise SpamLangError(f"--filter expects KEY=VALUE, got {item!r}")
        filters.setdefault(key, []).append(value)
    return {key: tuple(values) for key, values in filters.items()}


def setting(config: RunConfig, key: str) -> Any:
    """The value of filter key ``key`` in ``config`` (``head`` is shown with its rank when it has one); KeyError for a
    parameter the run does not have."""
    if "." in key:
        group, name = key.split(".", 1)
        return getattr(config, group)[name]
    if key == "head":
        return head_label(config.head, config.head_rank, None)
    return getattr(config, key)


def _equal(config: RunConfig, key: str, text: str) -> bool:
    try:
        actual = setting(config, key)
    except KeyError:
        return False
    if key == "head":
        return text == (actual if ":" in text else config.head)
    if "." not in key:
        if text.lower() == "none" and SETTINGS[key].default is None:
            return actual is None
        return actual == parse_value("--filter", SETTINGS[key], text)
    if isinstance(actual, bool):
        return text.lower() == str(actual).lower()
    if isinstance(actual, (int, float)):
        try:
            return float(text) == actual
        except ValueError:
            return False
    return str(actual) == text


def _check_key(key: str, runs: Sequence[RunConfig]) -> None:
    if "." in key:
        group, name = key.split(".", 1)
        if group not in NESTED:
            raise SpamLangError(f"--filter: unknown key '{key}' (a parameter is task_params.NAME or head_params.NAME)")
        names = sorted({n for c in runs for n in getattr(c, group)})
        if name not in names:
            raise SpamLangError(f"--filter: no run of the suite has {group} '{name}' "
                                f"(they have: {', '.join(names) or 'none'})")
    elif key not in SETTINGS:
        raise SpamLangError(f"--filter: unknown key '{key}' (keys: {', '.join(sorted(SETTINGS))}, task_params.NAME, "
                            f"head_params.NAME)")


def _values(key: str, runs: Sequence[RunConfig]) -> str:
    found = set()
    for config in runs:
        try:
            found.add(setting(config, key))
        except KeyError:
            continue
    return ", ".join(str(v) for v in sorted(found, key=value_order))


def select(runs: Sequence[ResolvedConfig], filters: dict[str, tuple[str, ...]],
           limit: int | None = None) -> list[ResolvedConfig]:
    """The runs that pass every filter, in the suite's order, the first ``limit`` of them when given; SpamLangError
    for an unknown key, a value of the wrong type, or filters that keep no run (naming the values the suite has)."""
    for key in filters:
        _check_key(key, runs)
    kept = list(runs)
    for key, values in filters.items():
        narrowed = [c for c in kept if any(_equal(c, key, v) for v in values)]
        if not narrowed:
            given = " or ".join(f"{key}={v}" for v in values)
            raise SpamLangError(f"--filter {given} keeps no run (values of {key} among the runs left: "
                                f"{_values(key, kept)})")
        kept = narrowed
    if limit is not None:
        if limit < 1:
            raise SpamLangError(f"--limit must be >= 1, got {limit}")
        kept = kept[:limit]
    return kept


# -- cost -----------------------------------------------------------------------------------------------------------
#: the nominal machine, one run at a time (``results/perf/``: one core of the 2-core CPU, torch 2.13): the rate of a
#: step's matrix products (the fused head reaches 65-77 GFLOP/s there at V = 32,768-131,072, D = 64)
NOMINAL_FLOPS = 6e10
#: fixed seconds of one training step beyond its arithmetic at NOMINAL_FLOPS: a few hundred small kernels, the
#: optimizer (9-10 ms steps at V = 256-1,024, D = 32, T = 16, batch 64 hold 3-6 ms of arithmetic)
STEP_SECONDS = 6e-3
#: fixed seconds of one evaluation, and of each held-out input token's forward beyond its arithmetic (small kernels:
#: 0.3 s for 2 x 2,048 sequences of 16 tokens at V = 256, D = 32)
EVAL_SECONDS, HELD_OUT_TOKEN_SECONDS = 0.025, 3.5e-6
#: FLOP-equivalents at NOMINAL_FLOPS of the passes over each held-out logit besides its product (log-softmax, the
#: target's, the top-1 test): 1.2 s for 2 x 2,048 x 15 positions at V = 4,096, 3.5 s for 2 x 2,048 at V = 131,072
LOGIT_FLOPS = 200
#: FLOP-equivalents per diagnostic position, symbol and width: the float64 logit gradient, its projection on the head's
#: basis, the SVDs and the update cosine's gradient and forward-mode pass (2.9 s at 256 x 131,072 x 64)
DIAG_FLOPS = 80


def _positions(config: RunConfig) -> int:
    """Predictable positions per sequence (every one after the first for a task this process cannot build)."""
    try:
        return int(make_task(config.task, config.task_params).predictable_mask(config.seq_len)[1:].sum())
    except SpamLangError:
        return config.seq_len - 1


def _head_macs(config: RunConfig) -> float:
    """The head's multiply-adds per predictable position of a training step, forward and backward."""
    try:
        head = HEADS.get(config.head)
        return head.train_macs(config.vocab_size, config.d_model, config.head_rank,
                               head_params(head, config.head_params, from_strings=True))
    except SpamLangError:
        return 3.0 * config.vocab_size * config.d_model


def evaluations(config: RunConfig) -> int:
    """Evaluations of a run that does not stop early: at step 0, every ``eval_every`` steps and after the last."""
    return 1 + -(-config.steps // config.eval_every)


def run_flops(config: RunConfig) -> float:
    """The cost of a run in FLOPs at :data:`NOMINAL_FLOPS`: the arithmetic of its training steps (the backbone, about
    24 L D² FLOPs per input token forward, three times that with the backward, on the T - 1 input tokens of each
    sequence; the head's ``train_macs`` on its predictable positions) and of its evaluations (both held-out streams'
    forward, :data:`LOGIT_FLOPS` per logit, the diagnostics), plus the fixed costs (:data:`STEP_SECONDS` a step,
    :data:`EVAL_SECONDS` an evaluation, :data:`HELD_OUT_TOKEN_SECONDS` a held-out token) as FLOPs at the nominal rate.
    A run that stops early costs less."""
    v, d, inputs, positions = config.vocab_size, config.d_model, config.seq_len - 1, _positions(config)
    backbone = 24 * config.layers * d * d  # forward FLOPs per input token
    step = config.batch_size * (3 * backbone * inputs + 2 * _head_macs(config) * positions)
    held_out = 2 * config.eval_sequences * (inputs * (backbone + HELD_OUT_TOKEN_SECONDS * NOMINAL_FLOPS)
                                            + positions * v * (2 * d + LOGIT_FLOPS))
    evaluation = held_out + DIAG_FLOPS * config.diag_tokens * v * d + EVAL_SECONDS * NOMINAL_FLOPS
    return config.steps * (step + STEP_SECONDS * NOMINAL_FLOPS) + evaluations(config) * evaluation


@dataclass(frozen=True)
class Rate:
    """Cost (:func:`run_flops`) per wall-clock second, and where the number comes from."""
    flops_per_second: float
    records: int  # recorded runs it was measured on (0: the nominal rate)
    basis: str


def calibrate(records: Iterable[record.RunRecord], device: str | None) -> Rate:
    """The FLOP rate of the ``ok`` records that ran on this machine's platform and on ``device`` (a device name as
    records write it, e.g. ``cpu``): their total cost (:func:`run_flops`) over their total wall time. Without such
    records, or without a ``device``, the nominal :data:`NOMINAL_FLOPS`."""
    here = platform.platform()
    flops = seconds = 0.0
    count = 0
    for rec in records:
        if rec.status != "ok" or rec.env.device != device or rec.env.platform != here or rec.timing is None:
            continue
        if rec.timing.total_seconds > 0:
            flops += run_flops(rec.config)
            seconds += rec.timing.total_seconds
            count += 1
    if count and device is not None:
        return Rate(flops / seconds, count, f"measured on {count} recorded run(s) of this machine, device {device}")
    return Rate(NOMINAL_FLOPS, 0, "the nominal CPU rate: no recorded run of this machine to calibrate on")


def machine_rate(runs_dirs: Iterable[Path], device: str | None) -> Rate:
    """:func:`calibrate` on the records of every folder in ``runs_dirs``, read for what a rate needs only (each
    file's status, device, platform, wall time and the settings of its FLOPs, not its history: see
    :func:`timings`), through a cache of those few fields by file, size and modification time."""
    here = platform.platform()
    flops = seconds = 0.0
    count = 0
    for row in timings([p for folder in runs_dirs for p in sorted(Path(folder).glob("*.json"))]):
        if row["status"] == "ok" and row["device"] == device and row["platform"] == here and row["seconds"] > 0:
            flops += row["flops"]
            seconds += row["seconds"]
            count += 1
    if count and device is not None:
        return Rate(flops / seconds, count, f"measured on {count} recorded run(s) of this machine, device {device}")
    return Rate(NOMINAL_FLOPS, 0, "the nominal CPU rate: no recorded run of this machine to calibrate on")


#: the cache of :func:`timings`, in the user's cache folder (see spamlang.scoring.floors.user_cache_dir)
TIMINGS_CACHE = "timings.cache.json"
TIMINGS_VERSION = 1


def _timing(path: Path) -> dict | None:
    """What a rate needs of one record file, or None for a file that is not a record whose run id is the hash of
    its configuration (a changed record times nothing)."""
    import json

    from spamlang.config import RunConfig, config_hash
    try:
        data = json.loads(path.read_text())
        config = data["config"]
        if data["run_id"] != config_hash(config):
            return None
        timing, env = data.get("timing") or {}, data["env"]
        seconds = float(timing.get("total_seconds") or 0.0)
        flops = run_flops(RunConfig.from_dict(config))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, SpamLangError):
        return None
    if not (seconds >= 0 and flops >= 0):
        return None
    return {"status": data.get("status"), "device": env.get("device"), "platform": env.get("platform"),
            "seconds": seconds, "flops": flops}


def timings(paths: Sequence[Path]) -> list[dict]:
    """:func:`_timing` of each record file, cached by path, size and modification time."""
    import json

    from spamlang.scoring.floors import user_cache_dir
    from spamlang.system import atomic
    cache_path = user_cache_dir() / TIMINGS_CACHE
    try:
        cache = json.loads(cache_path.read_text())
        entries = cache["entries"] if cache.get("version") == TIMINGS_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        entries = {}
    rows, changed = [], False
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
        entry = entries.get(key)
        if not isinstance(entry, dict) or entry.get("stamp") != stamp:
            entry, changed = {"stamp": stamp, "row": _timing(path)}, True
            entries[key] = entry
        if entry["row"] is not None:
            rows.append(entry["row"])
    if changed:
        try:
            atomic.write_text(cache_path, json.dumps({"version": TIMINGS_VERSION, "entries": entries}) + "\n")
        except OSError:
            pass  # a cache that cannot be written only costs time
    return rows


def estimate(runs: Iterable[RunConfig], rate: Rate) -> tuple[float, float]:
    """(cost in FLOPs, estimated wall seconds one run at a time) of ``runs`` at ``rate``: the one cost model of
    ``spamlang suites`` and ``spamlang run --dry-run``."""
    flops = sum(run_flops(c) for c in runs)
    return flops, flops / rate.flops_per_second


def recorded_runs(runs_dir: Path) -> list[record.RunRecord]:
    """The readable run records in ``runs_dir`` (others are left out)."""
    found = []
    for path in sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else ():
        try:
            found.append(record.read(path))
        except SpamLangError:
            continue
    return found


# -- the plan -------------------------------------------------------------------------------------------------------
def plan(runs: Sequence[ResolvedConfig], runs_dir: Path, rate: Rate) -> dict:
    """What ``spamlang run`` would do with ``runs`` given what ``runs_dir`` holds: one entry per run (its settings,
    state: recorded, failed, stale (an older task version) or new, FLOPs and estimated seconds) and the totals of
    the runs to do."""
    rows = []
    for config in runs:
        state = run_state(config, runs_dir)
        flops, seconds = estimate([config], rate)
        rows.append({"run_id": config.run_id, "task": config.task, "task_params": dict(config.task_params),
                     "vocab_size": config.vocab_size, "head_spec": head_label(config.head, config.head_rank,
                                                                              config.head_params),
                     "lr": config.lr, "seed": config.seed, "steps": config.steps, "device": config.device,
                     "state": state, "flops": flops, "seconds": seconds})
    todo = [r for r in rows if r["state"] != "recorded"]
    return {"runs_dir": str(runs_dir), "selected": len(rows), "recorded": len(rows) - len(todo), "to_run": len(todo),
            "flops": sum(r["flops"] for r in todo), "seconds": sum(r["seconds"] for r in todo),
            "flops_per_second": rate.flops_per_second, "calibration_runs": rate.records, "basis": rate.basis,
            "runs": rows}


def duration(seconds: float) -> str:
    """A wall time as people read it: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def varying(runs: Sequence[RunConfig]) -> list[str]:
    """Run settings (besides those every plan shows) whose value differs between ``runs``."""
    shown = {"task", "task_params", "vocab_size", "head", "head_rank", "head_params", "lr", "seed", "steps", "device"}
    return [f.name for f in dataclasses.fields(RunConfig)
            if f.name not in shown and len({str(getattr(c, f.name)) for c in runs}) > 1]


def plan_text(runs: Sequence[ResolvedConfig], result: dict) -> str:
    """The plan as a plain table, one line per run, and a closing line with the totals and the rate's basis."""
    extra = varying(runs)
    header = ["#", "run_id", "task", "V", "head", *extra, "lr", "seed", "steps", "state", "est."]
    lines = []
    for i, (config, row) in enumerate(zip(runs, result["runs"]), 1):
        task = row["task"] + ("(" + ", ".join(f"{k}={v}" for k, v in row["task_params"].items()) + ")"
                              if row["task_params"] else "")
        lines.append([str(i), row["run_id"], task, str(row["vocab_size"]), row["head_spec"],
                      *(str(getattr(config, name)) for name in extra), f"{row['lr']:g}", str(row["seed"]),
                      str(row["steps"]), row["state"], "-" if row["state"] == "recorded" else duration(row["seconds"])])
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *lines])
    return (f"{text}\n{result['selected']} run(s) selected, {result['recorded']} already recorded, {result['to_run']} "
            f"to run: {result['flops']:.2e} FLOPs, ~{duration(result['seconds'])} one run at a time at "
            f"{result['flops_per_second']:.2e} FLOP/s ({result['basis']})\n")
