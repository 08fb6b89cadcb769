"""Ranking head designs: the runs behind each configuration, paired over seeds, ranked by learnability with
exact Wilcoxon tests (Holm-corrected) between neighbours."""
from __future__ import annotations

import itertools
import json
import math
import warnings
from typing import Mapping

import pandas as pd

from spamlang.heads.base import HEAD_FIELDS, head_label
from spamlang.publishing import models as models
from spamlang.publishing.tables import with_params
from spamlang.scoring.configurations import table_fields
from spamlang.scoring.frames import config_key
from spamlang.scoring.scorer import learnability
from spamlang.scoring.stats import holm, mean_ci, min_p_value, wilcoxon_greater

#: significance level of the paired test that puts one head design ahead of the next
ALPHA = 0.05


def design_label(row: Mapping) -> str:
    """A row's head design as the tables show it (see :func:`spamlang.heads.base.head_label`)."""
    return head_label(row["head"], row["head_rank"], row["head_params"])


def chosen_runs(scored: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs behind each row of ``scored`` (those at its chosen swept values), one row per run: ``config`` (the
    row's index in ``scored``), ``design`` (see :func:`design_label`), ``setting`` (the configuration less its head),
    ``task`` (with its parameters), ``seed``, ``status``, ``history`` and ``learnability`` (of the run, against the
    task's Bayes loss rather than the head's own floor, so that a head whose floor sits at its starting loss is not
    ranked up for failing to express the task; a diverged run counts as 0, a failed one as NaN)."""
    by, swept = table_fields(scored)
    fields = by + swept
    index: dict[tuple, list] = {}
    for i, run in runs.iterrows():
        index.setdefault(tuple(config_key(run[f]) for f in fields), []).append(i)
    rows = []
    for config, row in scored.iterrows():
        setting = json.dumps([config_key(row[f]) for f in by if f not in HEAD_FIELDS], default=str)
        for i in index.get(tuple(config_key(row[f]) for f in fields), []):
            run = runs.loc[i]
            value = (learnability([p.test_loss for p in run["history"]], row["bayes_loss"]) if run["status"] == "ok"
                     else 0.0 if run["status"] == "diverged" else math.nan)
            rows.append({"config": config, "design": design_label(row), "setting": setting,
                         "task": with_params(row["task"], row["task_params"]), "seed": run["seed"],
                         "status": run["status"], "history": run["history"], "learnability": value})
    return pd.DataFrame(rows, columns=["config", "design", "setting", "task", "seed", "status", "history",
                                       "learnability"])


def head_ranking(scored: pd.DataFrame, runs: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per head design, best first: ``rank`` (``"2"``, or ``"=1"`` when the paired test does not put the
    design above it ahead of this one), ``head``, ``learnability`` (mean across tasks of the mean over the design's
    configurations of each task of its per-run learnability at the chosen swept values), ``ci`` (half-width of the 95%
    t-interval over seeds of the design's per-seed mean), ``tasks``, ``configs``, ``seeds``, ``learned`` (configurations
    with verdict learned), and against the next design: ``n_next`` (runs paired on the same configuration and seed),
    ``p_next`` (one-sided Wilcoxon signed-rank test, :func:`wilcoxon_greater`), ``p_holm`` (``p_next`` Holm-adjusted
    over the table's tests) and ``ahead`` (p_holm < ``alpha``).

    A design none of whose runs has a learnability (all failed) is left out, with a warning.
    """
    chosen = chosen_runs(scored, runs)
    unscored = sorted(set(chosen["design"]) - set(chosen.dropna(subset=["learnability"])["design"]))
    if unscored:
        warnings.warn(f"not ranked, no run with a learnability (all failed): "
                      f"{', '.join(unscored)}", RuntimeWarning)
    chosen = chosen.dropna(subset=["learnability"])
    rows, paired = [], {}
    for design, group in chosen.groupby("design", sort=False):
        per_config = group.groupby("config")["learnability"].mean()
        per_task = group.groupby(["task", "config"])["learnability"].mean().groupby(level="task").mean()
        rows.append({"head": design, "learnability": per_task.mean(),
                     "ci": mean_ci(group.groupby("seed")["learnability"].mean())[1],
                     "tasks": group["task"].nunique(), "configs": len(per_config), "seeds": group["seed"].nunique(),
                     "learned": int((scored.loc[per_config.index, "verdict"] == "learned").sum())})
        paired[design] = group.set_index(["setting", "seed"])["learnability"]
    columns = ["rank", "head", "learnability", "ci", "tasks", "configs", "seeds", "learned", "n_next", "p_next",
               "p_holm", "ahead"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).sort_values(["learnability", "head"], ascending=[False, True], ignore_index=True)
    tests = []
    for above, below in zip(table["head"], table["head"][1:]):
        pairs = pd.concat([paired[above], paired[below]], axis=1, join="inner")
        tests.append((len(pairs), wilcoxon_greater(pairs.iloc[:, 0] - pairs.iloc[:, 1]) if len(pairs) else math.nan))
    table["n_next"], table["p_next"] = zip(*tests, (0, math.nan))
    table["p_holm"] = holm(table["p_next"])
    table["ahead"] = table["p_holm"] < alpha
    ranks = ["1"]
    for i in range(1, len(table)):
        ranks.append(str(i + 1) if table["ahead"][i - 1] else "=" + ranks[-1].lstrip("="))
    table["rank"] = ranks
    return table[columns]


def own_budget(scored: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``scored`` at their suite's own budget: a configuration the runner's budget round added (run only
    for the heads that failed) would rank those heads on settings the others never ran."""
    if "budget_round" not in scored.columns:
        return scored
    return scored[[not r for r in scored["budget_round"]]]


def without_copy_tasks(scored: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of ``scored`` on tasks where no head starts with the answer: the tasks on which a head that shares the
    input embedding starts with the copy solution (``copy_at_init``, see :mod:`spamlang.scoring.tying`) are left out for
    every head, so that the ranking stays paired; None when no row starts with it."""
    if "copy_at_init" not in scored.columns or not any(scored["copy_at_init"]):
        return None
    return scored[[not c for c in scored["copies_input"]]]


def _fewest_pairs(alpha: float = ALPHA) -> int:
    """The fewest pairs with which the exact test can reach p < alpha."""
    return next(n for n in itertools.count(1) if min_p_value(n) < alpha)
