"""What a configuration is, and which of its runs speak for it: the one definition for the runner, the scorer, the
fits and the speedups.

A *configuration* is every run setting but the seed, the swept ones and the execution ones (device, compile, ...),
plus the task version. A *setting* is one value of the swept fields (``lr`` and those a suite sweeps); its
*outcomes* are one ``(status, final val loss)`` pair per seed. The setting chosen for a configuration is the one
with the lowest mean final val loss (:func:`choose`); the scorer reports its runs, and the runner grows the lr grid
around it (:mod:`spamlang.sweeps.lrgrid`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Any, Hashable, Iterable, Mapping, Sequence

import pandas as pd

from spamlang.config import EXECUTION_FIELDS, RunConfig
from spamlang.errors import ConfigError
from spamlang.scoring.frames import CONFIG_FIELDS, config_key, python_values, value_order

Outcome = tuple[str, "float | None"]


def setting_key(outcomes: Sequence[Outcome]) -> tuple[float, int, float]:
    """The order of settings, best first: mean final val loss over seeds (a seed that is not ``ok`` counts as inf),
    then fewer seeds not ok, then the mean over the ok ones."""
    val = [v if status == "ok" and v is not None and math.isfinite(v) else math.inf for status, v in outcomes]
    finite = [v for v in val if math.isfinite(v)]
    return (statistics.fmean(val) if val else math.inf, len(val) - len(finite),
            statistics.fmean(finite) if finite else math.inf)


def choose(settings: Mapping[Hashable, Sequence[Outcome]]) -> Hashable:
    """The setting with the best :func:`setting_key`; of equals, the first in ``settings``' order."""
    return min(settings, key=lambda s: setting_key(settings[s]))


def edge(chosen: Any, tried: Sequence[Any]) -> str | None:
    """Where a chosen numeric value sits in the values tried: ``"only"`` (nothing else was tried), ``"low"`` (the
    smallest), ``"high"`` (the largest) or None (inside the range, or not a number)."""
    numbers = [t for t in tried if isinstance(t, (int, float)) and not isinstance(t, bool)]
    if not isinstance(chosen, (int, float)) or isinstance(chosen, bool) or len(numbers) != len(tried):
        return None
    if len(set(numbers)) == 1:
        return "only"
    return "low" if chosen == min(numbers) else "high" if chosen == max(numbers) else None


def outcome(status: str, final: Any) -> Outcome:
    """A run's outcome from its status and final metrics (None for a failed run)."""
    return status, final.val_loss if final is not None else None


def grouping(runs: pd.DataFrame, by: Iterable[str] | None = None, sweep: Iterable[str] = ()) -> \
        tuple[list[str], list[str]]:
    """(``by``, ``swept``): the fields that name a configuration of ``runs`` and the swept fields whose value is
    chosen. Swept: ``lr``, those named in ``sweep`` and those the records' suites swept; ``by`` defaults to every
    setting but the seed, the swept and the execution ones, plus ``task_version``. ConfigError for an unknown field."""
    swept = list(dict.fromkeys(["lr", *sweep, *(f for s in runs["sweep"] if isinstance(s, list) for f in s)]))
    unknown = [f for f in [*swept, *(by or [])] if f not in (*CONFIG_FIELDS, "task_version")]
    if unknown:
        raise ConfigError(f"cannot group or sweep by '{unknown[0]}' (run settings: {', '.join(CONFIG_FIELDS)}, "
                          f"task_version)")
    if by is None:
        by = [f for f in CONFIG_FIELDS if f not in ("seed", *swept, *EXECUTION_FIELDS)] + ["task_version"]
    by = list(by)
    return by, [f for f in swept if f not in by and f != "seed"]


@dataclasses.dataclass
class Configuration:
    """One configuration of a run frame: its ``fields`` (the ``by`` values of its first run), all its ``runs``, the
    ``chosen`` ones (at the chosen setting, or all of them when nothing is swept)."""

    fields: dict[str, Any]
    runs: pd.DataFrame
    chosen: pd.DataFrame


def configurations(runs: pd.DataFrame, by: Sequence[str], swept: Sequence[str]) -> list[Configuration]:
    """The configurations of ``runs`` (a frame of Python values, see :func:`~spamlang.scoring.frames.python_values`)
    by the fields ``by``, each with its runs at the setting of ``swept`` chosen on val, in the order of their
    fields' values."""
    keys = pd.DataFrame({f: runs[f].map(config_key) for f in [*by, *swept]}, index=runs.index)
    out = []
    for _, group in sorted(keys.groupby(list(by), sort=False, dropna=False),
                           key=lambda g: tuple(map(value_order, g[0]))):
        members = runs.loc[group.index]
        chosen = members
        if swept:
            settings: dict[tuple, list] = {}
            for i, run in members.iterrows():
                settings.setdefault(tuple(config_key(run[f]) for f in swept), []).append(i)
            outcomes = {s: [outcome(runs.at[i, "status"], runs.at[i, "final"]) for i in index]
                        for s, index in settings.items()}
            chosen = runs.loc[settings[choose(outcomes)]]
        first = members.iloc[0]
        out.append(Configuration({f: first[f] for f in by}, members, chosen))
    return out


def chosen_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of one configuration (a frame of its runs) at the learning rate chosen on val."""
    runs = python_values(runs)
    by_lr: dict[Any, list] = {}
    for i, run in runs.iterrows():
        by_lr.setdefault(config_key(run["lr"]), []).append(i)
    outcomes = {lr: [outcome(runs.at[i, "status"], runs.at[i, "final"]) for i in by_lr[lr]] for lr in sorted(by_lr)}
    return runs.loc[by_lr[choose(outcomes)]]


def table_fields(scored: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(``by``, ``swept``) of a score table (:func:`spamlang.scoring.scorer.score`), read from its column names, not
    their order: a swept field has its ``<field>_tried`` column; every other run setting (or ``task_version``) among
    the columns names the configuration."""
    swept = [c[:-len("_tried")] for c in scored.columns if c.endswith("_tried")]
    by = [c for c in scored.columns if c in (*CONFIG_FIELDS, "task_version") and c not in swept]
    return by, swept


def lr_groups(configs: Iterable[RunConfig]) -> list[dict[float, list[RunConfig]]]:
    """The run configs of each configuration of a suite (every setting but seed, lr and the execution ones), by lr."""
    groups: dict[str, dict[float, list[RunConfig]]] = {}
    for config in configs:
        key = json.dumps({k: v for k, v in config.to_dict().items()
                          if k not in ("seed", "lr", *EXECUTION_FIELDS)}, sort_keys=True, default=str)
        groups.setdefault(key, {}).setdefault(config.lr, []).append(config)
    return list(groups.values())
