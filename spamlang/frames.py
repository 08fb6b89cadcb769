"""Run records to a DataFrame: one row per run, its configuration spread into columns."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from . import record
from .config import RunConfig
from .errors import SpamLangError
from .floors import CACHE_NAME
from .task import TASKS

#: the run settings, each a column of the frame
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def config_key(value: Any) -> Any:
    """A hashable, order-independent stand-in for a config value (dicts and lists become canonical JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def value_order(value: Any) -> tuple:
    """Sort key: numbers in numerical order, then strings, then missing values (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, "")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value) if number else (1, str(value))


def load_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run record found under ``folder`` (recursively): its config fields, plus ``run_id``, ``path``,
    ``task_version``, ``bayes_loss``, ``deterministic``, ``rank``, ``status``, ``error``, ``history`` (a tuple of
    :class:`~spamlang.record.EvalPoint`), ``final`` (a :class:`~spamlang.record.Final`, None for a failed run),
    ``sweep`` (the fields its suite swept, or None), and for provenance ``suite``, ``env`` and ``created``.

    A file that is not a valid record is reported (warnings.warn, naming it and the malformed field) and skipped, as
    is a second record of a run already read; no record at all raises SpamLangError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpamLangError(f"run folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*.json") if p.name != CACHE_NAME and p.is_file())
    rows, problems, seen = [], [], {}
    for path in files:
        try:
            row = _row(record.read(path), path)
        except SpamLangError as exc:
            problems.append(str(exc))
            continue
        if row["run_id"] in seen:
            problems.append(f"{path}: a second record of run {row['run_id']} (first: {seen[row['run_id']]})")
        else:
            seen[row["run_id"]] = path
            rows.append(row)
    if not rows:
        detail = f": {len(problems)} file(s) skipped, first {problems[0]}" if problems else " (no *.json files)"
        raise SpamLangError(f"no run records under {folder}{detail}")
    for problem in problems:
        warnings.warn(f"skipped {problem}", RuntimeWarning, stacklevel=2)
    return pd.DataFrame(rows, dtype=object)  # object: keep ints, None and records' parts as they are


def _row(rec: record.RunRecord, path: Path) -> dict:
    """The DataFrame row of one record."""
    config = rec.config.to_dict()
    version = rec.task_version
    if version is None:  # a run that failed before its task was built: it ran the version registered now, if any
        version = TASKS.get(config["task"]).version if config["task"] in TASKS.names() else None
    suite = rec.suite
    return {**config, "run_id": rec.run_id, "path": str(path), "task_version": version,
            "bayes_loss": rec.bayes_loss, "deterministic": rec.deterministic, "rank": rec.rank,
            "status": rec.status, "error": rec.error, "history": rec.history, "final": rec.final,
            "sweep": list(suite.sweep) if suite else None, "suite": dataclasses.asdict(suite) if suite else None,
            "env": dataclasses.asdict(rec.env), "created": rec.created}
