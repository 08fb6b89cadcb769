"""Loading result folders for a leaderboard: run records merged across folders, one task version per task."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd

from spamlang.errors import SpamLangError
from spamlang.publishing import models as models
from spamlang.scoring.frames import load_runs, python_values


def load_folders(folders: Iterable[str | Path]) -> pd.DataFrame:
    """The run records of every folder (see :func:`spamlang.scoring.frames.load_runs`) merged as Python values
    (:func:`spamlang.scoring.frames.python_values`), with ``folder`` added.

    A folder without records, or a task recorded in different versions, raises SpamLangError; a run id already read
    from an earlier folder is skipped with a warning. A folder holding ``spamlang measure`` records is set aside in
    ``attrs["measurements"]`` for the models table (:mod:`spamlang.publishing.models`).
    """
    frames, measured = [], []
    for folder in folders:
        if models.load([folder]):  # a folder of measurement records feeds the models table
            measured.append(str(folder))
            continue
        frame = load_runs(folder)
        frame["folder"] = str(folder)
        frames.append(frame)
    if not frames and not measured:
        raise SpamLangError("no result folders given")
    if not frames:
        runs = pd.DataFrame()
        runs.attrs = {"folders": [], "measurements": measured}
        return runs
    runs = python_values(pd.concat(frames, ignore_index=True))
    repeated = runs["run_id"].duplicated()
    if repeated.any():
        first = runs[~repeated].set_index("run_id")["path"]
        example = runs[repeated].iloc[0]
        warnings.warn(f"{int(repeated.sum())} run(s) appear in more than one folder; kept the first copy of each "
                      f"(e.g. {example['path']} repeats {first[example['run_id']]})", RuntimeWarning, stacklevel=2)
        runs = runs[~repeated].reset_index(drop=True)
    check_versions(runs)
    runs.attrs = {"folders": [str(f) for f in dict.fromkeys(runs["folder"])], "measurements": measured}
    return runs


def check_versions(runs: pd.DataFrame) -> None:
    """Raise SpamLangError if a task's records come in more than one task version, naming one file of each."""
    known = runs[runs["task_version"].notna()]
    for task, group in known.groupby("task", sort=True):
        files = group.groupby("task_version", sort=True)["path"].first()
        if len(files) > 1:
            versions = ", ".join(f"v{version} ({path})" for version, path in files.items())
            raise SpamLangError(f"task '{task}' has records of {len(files)} task versions, which one ranking cannot "
                                f"compare: {versions}; rank each version separately")
