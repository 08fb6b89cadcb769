"""Run records to DataFrames: one row per run (:func:`load_runs`) or per evaluation (:func:`history`), each setting
and metric a typed column."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spamlang import record
from spamlang.config import RunConfig
from spamlang.errors import SpamLangError
from spamlang.heads.base import head_label
from spamlang.params import scalar_fields, type_of
from spamlang.scoring.floors import CACHE_NAME
from spamlang.system.processes import fork_map
from spamlang.system.threads import available_cores
from spamlang.task import TASKS

#: JSON files SpamLang writes beside the run records that are not records: the floor cache and the leaderboard's
#: provenance, and the fit's (``spamlang leaderboard FOLDER`` and ``fit FOLDER`` read and write the same folder)
NOT_RECORDS = (CACHE_NAME, "leaderboard.provenance.json", "fit.provenance.json")
#: the number of record files from which :func:`load_runs` reads (and verifies) them on all the cores
PARALLEL_FILES = 256
#: the run settings, each a column of the frame
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
#: the prefix of a run's final metrics (record.Final) as columns of the run frame
FINAL = "final_"
_RECORD_FIELDS = {f.name: f for f in dataclasses.fields(record.RunRecord)}
#: the type (int, float, bool or str) of each scalar column of the run frame
RUN_TYPES = {**{f.name: type_of(f) for f in scalar_fields(RunConfig)},
             **{name: type_of(_RECORD_FIELDS[name]) for name in ("task_version", "bayes_loss", "deterministic",
                                                                  "rank")},
             **{FINAL + f.name: type_of(f) for f in dataclasses.fields(record.Final)}}
#: the type of each field of an evaluation (record.EvalPoint)
EVAL_TYPES = {f.name: type_of(f) for f in dataclasses.fields(record.EvalPoint)}
#: the run columns each row of :func:`history` repeats
HISTORY_RUN_COLUMNS = ("run_id", *CONFIG_FIELDS, "head_spec", "task_version", "bayes_loss", "deterministic", "status")


def config_key(value: Any) -> Any:
    """A hashable, order-independent stand-in for a config value (dicts and lists become canonical JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def value_order(value: Any) -> tuple:
    """Sort key: numbers (Python's or numpy's, as pandas' group keys may be) in numerical order, then strings, then
    missing values (None, NaN)."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return (2, "")
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return (0, value) if number else (1, str(value))


def load_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run record found under ``folder`` (recursively): its config fields, plus ``run_id``, ``path``,
    ``head_spec`` (see :func:`spamlang.heads.base.head_label`), ``task_version``, ``bayes_loss``, ``deterministic``,
    ``rank``, ``status``, ``error``, the final metrics as ``final_loss``, ``final_accuracy``, ... (every
    :class:`~spamlang.record.Final` field, prefixed ``final_``; NaN for a failed run), ``history`` (a tuple of
    :class:`~spamlang.record.EvalPoint`; :func:`history` spreads it into rows), ``final`` (the
    :class:`~spamlang.record.Final`, None for a failed run), ``sweep`` (the fields its suite swept, or None), and for
    provenance ``suite``, ``env`` and ``created``.

    Numeric columns (``RUN_TYPES``) have numeric dtypes: int64 where no run lacks the value, else float64 with NaN
    for missing (``head_rank`` of a linear head, ``embed_dim`` left at D); ``compile`` and, when known for every run,
    ``deterministic`` are bool. :func:`python_values` turns the frame back into Python values.

    From ``PARALLEL_FILES`` files on, the records are read on all the cores (the same frame). A file that is not a
    valid record (other than the NOT_RECORDS files) is reported (warnings.warn, naming it and the
    malformed field) and skipped, as is a second record of a run already read; no record at all raises SpamLangError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpamLangError(f"run folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*.json") if p.name not in NOT_RECORDS and p.is_file())
    processes = available_cores() if len(files) >= PARALLEL_FILES else 1
    rows, problems, seen = [], [], {}
    for row in fork_map(_read_row, files, processes, chunksize=32):
        if isinstance(row, str):
            problems.append(row)
        elif row["run_id"] in seen:
            problems.append(f"{row['path']}: a second record of run {row['run_id']} (first: {seen[row['run_id']]})")
        else:
            seen[row["run_id"]] = row["path"]
            rows.append(row)
    if not rows:
        detail = f": {len(problems)} file(s) skipped, first {problems[0]}" if problems else " (no *.json files)"
        raise SpamLangError(f"no run records under {folder}{detail}")
    for problem in problems:
        warnings.warn(f"skipped {problem}", RuntimeWarning, stacklevel=2)
    return _typed(pd.DataFrame(rows, dtype=object), RUN_TYPES)


def history(runs: str | Path | pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation of every run (a folder of records, or :func:`load_runs`'s frame of them): the run's
    ``HISTORY_RUN_COLUMNS`` (``run_id``, its settings, ``head_spec``, ...) followed by the
    :class:`~spamlang.record.EvalPoint` fields (``step``, ``tokens``, ``test_loss``, ...), typed as in
    :func:`load_runs`. An evaluation field named like a run setting gets the prefix ``eval_``: ``eval_lr`` is the
    learning rate at that step, ``lr`` the run's peak. A failed run has no rows."""
    if not isinstance(runs, pd.DataFrame):
        runs = load_runs(runs)
    rows = np.repeat(np.arange(len(runs)), runs["history"].map(len).to_numpy())  # each run once per evaluation
    base = runs.iloc[rows][list(HISTORY_RUN_COLUMNS)].reset_index(drop=True)
    points = pd.DataFrame([dataclasses.asdict(p) for evaluations in runs["history"] for p in evaluations],
                          columns=list(EVAL_TYPES), dtype=object)
    points = _typed(points, EVAL_TYPES).rename(columns=lambda c: "eval_" + c if c in base.columns else c)
    return pd.concat([base, points], axis=1)


def python_values(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of a run frame with Python values in its typed columns (None for NaN, int for whole numbers of an int
    column), the form the scorer and the leaderboard compute on."""
    out = runs.astype(object)
    for column, kind in RUN_TYPES.items():
        if column in out.columns:
            out[column] = pd.Series([None if is_missing(v) else kind(v) for v in out[column]], out.index, object)
    return out


def is_missing(value: Any) -> bool:
    """Whether ``value`` stands for a missing one: None, ``pd.NA`` or NaN."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _typed(frame: pd.DataFrame, types: dict[str, type]) -> pd.DataFrame:
    """``frame`` with numeric dtypes in its int and float columns (int64 when complete, else float64 with NaN) and
    bool ones in complete bool columns; other columns are left as objects."""
    for column, kind in types.items():
        values = frame[column]
        complete = not any(map(is_missing, values))
        if kind is bool and complete:
            frame[column] = values.astype(bool)
        elif kind in (int, float):
            numbers = pd.to_numeric(values.map(lambda v: math.nan if is_missing(v) else v), errors="raise")
            frame[column] = numbers.astype("int64" if kind is int and complete else "float64")
    return frame


def _read_row(path: Path) -> dict | str:
    """The DataFrame row of the record at ``path``, or what is wrong with the file."""
    try:
        return _row(record.read(path), path)
    except SpamLangError as exc:
        return str(exc)


def _row(rec: record.RunRecord, path: Path) -> dict:
    """The DataFrame row of one record."""
    config = rec.config.to_dict()
    version = rec.task_version
    if version is None:  # a run that failed before its task was built: it ran the version registered now, if any
        version = TASKS.get(config["task"]).version if config["task"] in TASKS.names() else None
    suite = rec.suite
    final = {FINAL + f.name: getattr(rec.final, f.name) if rec.final else None
             for f in dataclasses.fields(record.Final)}
    return {**config, "run_id": rec.run_id, "path": str(path),
            "head_spec": head_label(config["head"], config["head_rank"], config["head_params"]),
            "task_version": version, "bayes_loss": rec.bayes_loss, "deterministic": rec.deterministic,
            "rank": rec.rank, "status": rec.status, "error": rec.error, **final, "history": rec.history,
            "final": rec.final,
            "sweep": list(suite.sweep) if suite else None, "suite": dataclasses.asdict(suite) if suite else None,
            "env": dataclasses.asdict(rec.env), "created": rec.created}
