"""What a larger budget showed: for each configuration not learned at its suite's own budget, the verdict of the same
configuration at the budget the runner's budget round gave it (see :func:`spamlang.sweeps.runner.budget_extensions`).

A pure function of the scorer's table: a "not learned" stands against ``extend_budget`` times more data, or says
that it was not tried.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from spamlang.scoring.configurations import table_fields
from spamlang.scoring.frames import config_key
from spamlang.scoring.stats import is_finite

#: the run settings that state a budget (a configuration at another budget differs in these only)
BUDGET_FIELDS = ("steps", "examples_per_symbol")


def budget_of(row: Mapping) -> tuple[str, float] | None:
    """(the setting that states a configuration's budget, its value): ``examples_per_symbol`` where set, else
    ``steps``; None when the table has neither."""
    for field in ("examples_per_symbol", "steps"):
        value = row.get(field)
        if is_finite(value):
            return field, float(value)
    return None


def extended_budget(scored: pd.DataFrame) -> list[str | None]:
    """One cell per row of ``score``'s table: for a configuration of the suite's own budget (``budget_round`` 0)
    that is not learned, what the same configuration at the smallest larger budget of the budget round shows, e.g.
    ``learned at 4× budget (600 examples/symbol)`` or ``not learned at 4× budget (600 examples/symbol):
    budget-limited``; None elsewhere (learned, failed, no larger budget run)."""
    by, _ = table_fields(scored)
    if not by:
        return [None] * len(scored)
    fields = [c for c in by if c not in BUDGET_FIELDS]
    larger: dict[tuple, list[Mapping]] = {}
    for _, row in scored.iterrows():
        if (row.get("budget_round") or 0) >= 1 and budget_of(row):
            larger.setdefault(tuple(config_key(row[f]) for f in fields), []).append(row)
    cells = []
    for _, row in scored.iterrows():
        budget = budget_of(row)
        if (row.get("budget_round") or 0) >= 1 or row["verdict"] in ("learned", "failed") or budget is None:
            cells.append(None)
            continue
        candidates = [r for r in larger.get(tuple(config_key(row[f]) for f in fields), [])
                      if budget_of(r)[0] == budget[0] and budget_of(r)[1] > budget[1]]
        cells.append(_cell(budget[1], min(candidates, key=lambda r: budget_of(r)[1])) if candidates else None)
    return cells


def _cell(base: float, extended: Mapping[str, Any]) -> str:
    field, value = budget_of(extended)
    examples = extended["train_examples_per_symbol"]
    if field == "examples_per_symbol":
        amount = f"{value:.4g} examples/symbol"
    else:
        amount = f"{value:.0f} steps" + (f" / {examples:.3g} examples/symbol" if is_finite(examples) else "")
    at = f"at {_factor(value / base)}× budget ({amount})"
    return f"learned {at}" if extended["verdict"] == "learned" else f"not learned {at}: {extended['verdict']}"


def _factor(ratio: float) -> str:
    return f"{ratio:.0f}" if math.isclose(ratio, round(ratio), rel_tol=1e-6) else f"{ratio:.3g}"
