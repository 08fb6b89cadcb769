"""Time to learn, a censored measure: each run's time (in steps, examples per symbol and tokens) from the first
evaluation at which it is learned with evidence to its end, or its cap when it is not (right-censored there); per
setting, the Kaplan–Meier median with its interval; and the setting that learns fastest, the one a time measure is
read at (a loss measure is read at the setting with the lowest val loss, :func:`configurations.choose`).
The statistics: docs/survival.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from spamlang.config import examples_seen
from spamlang.errors import SpamLangError
from spamlang.record.learned import learned_from
from spamlang.scoring.configurations import choose, outcome
from spamlang.scoring.frames import config_key
from spamlang.scoring.stats import is_finite
from spamlang.scoring.survival import km_median
from spamlang.task import make_task

UNITS = ("steps", "examples", "tokens")


def run_budget(run: Mapping) -> tuple[float, float, float]:
    """(steps, tokens, examples per symbol) a run trained for: as its final states them; for older records, from its
    last evaluation, and steps x batch x the task's symbols per sequence / V (NaN where the task is not known here)."""
    final, last = run["final"], run["history"][-1]
    steps = final.steps if final is not None and final.steps is not None else last.step
    tokens = final.tokens if final is not None and final.tokens is not None else last.tokens
    if final is not None and is_finite(final.examples_per_symbol):
        return steps, tokens, final.examples_per_symbol
    try:
        per_sequence = make_task(run["task"], run["task_params"]).symbols_per_sequence(run["seq_len"])
    except SpamLangError:
        return steps, tokens, math.nan
    return steps, tokens, examples_seen(steps, run["vocab_size"], run["batch_size"], per_sequence)


def cap_budget(run: Mapping) -> tuple[float, float, float]:
    """(steps, tokens, examples per symbol) of a run's cap, its configured steps: what it trained for, or would have
    had it not stopped early once learned (see :func:`run_budget`)."""
    steps, tokens, examples = run_budget(run)
    cap = max(steps, run["steps"] or steps)
    return cap, tokens * cap / steps if steps else math.nan, examples * cap / steps if steps else math.nan


@dataclass(frozen=True)
class Time:
    """A run's time to learn in ``steps``, ``examples`` per symbol and ``tokens``: when it learned (``observed``),
    or its cap when it did not (right-censored)."""

    steps: float
    examples: float
    tokens: float
    observed: bool


def time_to_learn(run: Mapping, tolerance: float) -> Time | None:
    """The time of one run (a row of a run frame): its learned step (:func:`~spamlang.record.learned.learned_from`),
    or censored at its cap (the configured steps; a run stopped early once learned is never censored); None for a
    failed run, which has no time."""
    if run["status"] == "failed" or not run["history"]:
        return None
    cap, tokens, examples = cap_budget(run)
    learned = learned_from(run["history"], run["bayes_loss"], tolerance) if run["status"] == "ok" else None
    at = cap if learned is None else learned
    return Time(at, at * examples / cap, at * tokens / cap, learned is not None)


def median_time(times: Sequence[Time | None], unit: str = "steps") -> tuple[float, float, float]:
    """(median, low, high) of the runs' time to learn in ``unit`` (Kaplan–Meier, 95% interval; inf: not reached)."""
    known = [t for t in times if t is not None]
    if not known or not all(math.isfinite(getattr(t, unit)) for t in known):  # e.g. examples of an unknown task
        return math.nan, math.nan, math.nan
    return km_median([getattr(t, unit) for t in known], [t.observed for t in known])


def fastest(runs: pd.DataFrame, swept: Sequence[str], tolerance: float) -> pd.DataFrame:
    """The runs of one configuration at the setting of ``swept`` that learns fastest across seeds: the smallest
    Kaplan–Meier median time in steps, then the smallest upper bound of its interval; where no setting's median is
    reached (or nothing is swept), the setting a loss measure chooses (:func:`configurations.choose`)."""
    settings: dict[tuple, list] = {}
    for i, run in runs.iterrows():
        settings.setdefault(tuple(config_key(run[f]) for f in swept), []).append(i)
    medians = {s: median_time([time_to_learn(runs.loc[i], tolerance) for i in index]) for s, index in settings.items()}
    reached = {s: m for s, m in medians.items() if math.isfinite(m[0])}
    if reached:
        best = min(reached, key=lambda s: (reached[s][0], reached[s][2]))
    else:
        best = choose({s: [outcome(runs.at[i, "status"], runs.at[i, "final"]) for i in index]
                       for s, index in settings.items()})
    return runs.loc[settings[best]]


def time_columns(runs: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """The time columns of a configuration's row from its runs at the fastest setting: ``steps_to_learn``,
    ``examples_to_learn`` and ``tokens_to_learn`` (Kaplan–Meier medians, None where not reached) each with ``_low``
    and ``_high`` (the 95% interval; None: unbounded or unknown), and ``n_learned`` (seeds learned)."""
    times = [time_to_learn(run, tolerance) for _, run in runs.iterrows()]
    row: dict[str, Any] = {}
    for unit in UNITS:
        median, low, high = median_time(times, unit)
        cast = int if unit != "examples" else float
        row.update({f"{unit}_to_learn{end}": cast(value) if math.isfinite(value) else None
                    for end, value in (("", median), ("_low", low), ("_high", high))})
    row["n_learned"] = sum(t is not None and t.observed for t in times)
    return row
