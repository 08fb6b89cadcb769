"""What a configuration's numbers say: gaps that count, the end-of-run trend, trivial baselines and the verdict.

Pure functions of numbers the scorer has already gathered from the records; the README's "How a failure is split"
describes the same rules.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from spamlang.record.learned import NOISE_SE, counts  # noqa: F401 (the verdicts' rule for a gap that counts)
from spamlang.scoring.stats import is_finite

#: the trend test fits a line to the val loss of this many last evaluations (see :func:`stats.slope`)
TREND_POINTS = 4
VERDICTS = ("learned", "no-learning", "optimization-limited", "budget-limited", "expressivity-limited", "mixed",
            "diverged", "failed", "undetermined", "n/a")


def below_noise(gap: float, se: float, tolerance: float) -> bool:
    """Whether a gap is negative beyond its noise (more than NOISE_SE standard errors below 0; with no usable
    ``se``, more than ``tolerance`` below 0): the quantity it is measured against is wrong, not the run."""
    if not is_finite(gap):
        return False
    return -gap > (NOISE_SE * se if is_finite(se) and se > 0 else tolerance)


def still_improving(slope: float, se: float, critical: float, span: float, tolerance: float) -> bool:
    """Whether a loss curve is still falling at the end: the slope is below 0 by more than ``critical`` standard
    errors (a one-sided test; ``critical`` is the t quantile for the fit's degrees of freedom) and the fall it implies
    over the fitted ``span`` of steps exceeds ``tolerance`` (a fall too small to change a verdict does not count)."""
    if not (is_finite(slope) and is_finite(se)):
        return False
    return slope + critical * se < 0 and -slope * span > tolerance


def learned_then_lost(gaps: Iterable[float], ses: Iterable[float | None], tolerance: float) -> bool:
    """Whether a run's gap to the Bayes loss, one per evaluation, stopped counting at some evaluation before the last
    and counts at the last."""
    within = [not counts(g, s if s is not None else math.nan, tolerance) for g, s in zip(gaps, ses) if is_finite(g)]
    return bool(within) and not within[-1] and any(within[:-1])


def verdict(n_seeds: int, n_ok: int, n_diverged: int, *, learned: str, no_learning: bool, has_bayes: bool,
            has_floor: bool, expressivity_counts: bool, optimization_counts: bool, budget_limited: bool) -> str:
    """The verdict (one of VERDICTS), in order: ``diverged``/``failed`` when most seeds are not ok; ``learned`` when
    the gap to the Bayes loss is below the tolerance with evidence (``learned``: the three-valued
    :func:`~spamlang.record.learned.learned_state`); ``no-learning`` when the gain over a trivial baseline does not
    count; ``n/a`` when no Bayes loss is known (natural text: nothing to measure a shortfall against);
    ``undetermined`` when the gap straddles the tolerance within its noise, or without a floor that can decide; then
    by which of the expressivity gap (floor - Bayes) and the optimization gap (loss - floor) count: both ``mixed``,
    the first ``expressivity-limited``, the second ``optimization-limited``, or ``budget-limited`` when the run was
    still improving at the end; neither alone (their sum does) ``mixed``."""
    if n_ok * 2 <= n_seeds:
        return "diverged" if n_diverged * 2 >= n_seeds - n_ok else "failed"
    if learned == "learned":
        return "learned"
    if no_learning:
        return "no-learning"
    if not has_bayes:
        return "n/a"
    if learned == "undetermined" or not has_floor:
        return "undetermined"
    if expressivity_counts:
        return "mixed" if optimization_counts else "expressivity-limited"
    if optimization_counts:
        return "budget-limited" if budget_limited else "optimization-limited"
    return "mixed"


def evidence(label: str, lrs: Sequence[float], chosen_lr: float, steps: float, examples_per_symbol: float,
             lr_edge: str | None) -> str | None:
    """The verdict's evidence as one line: the learning rates tried and the budget, e.g. ``not learned for lr ∈
    [0.001, 0.03] within 300 steps / 150 examples per symbol``; None for a failed configuration."""
    if label == "failed":
        return None
    budget = f"within {_int(steps)} steps / {_int(examples_per_symbol)} examples per symbol"
    if label == "learned":
        return f"learned at lr {chosen_lr:.3g} {budget}"
    what = "undetermined (within the noise of the tolerance)" if label == "undetermined" else "not learned"
    low, high = min(lrs), max(lrs)
    lr = f"lr = {low:.3g}" if low == high else f"lr ∈ [{low:.3g}, {high:.3g}]"
    note = {"low": "; best lr at the range's lower edge", "high": "; best lr at the range's upper edge",
            "only": "; one lr tried"}.get(lr_edge or "", "")
    return f"{what} for {lr} {budget}{note}"


def _int(value: float) -> str:
    return "?" if not is_finite(value) else f"{value:.0f}" if value >= 10 else f"{value:.3g}"
