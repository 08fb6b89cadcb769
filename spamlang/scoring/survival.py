"""Time to learn under right-censoring: the Kaplan–Meier median with its interval, a paired test for censored times,
and Holm's correction over the comparisons that could be tested (the three-valued learned rule that decides each
run's time: :mod:`spamlang.record.learned`).

A run not learned by its cap is right-censored there: its time to learn is only known to exceed the cap. Ties between
an event and a censoring at one time put the event first (the censored run was still at risk, and had not learned).
Pure functions of plain numbers (numpy and the standard library); docs/survival.md describes the method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

from spamlang.scoring.stats import holm


def _arrays(times: Sequence[float], observed: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    t, e = np.asarray(times, dtype=float).ravel(), np.asarray(observed, dtype=bool).ravel()
    if len(t) != len(e):
        raise ValueError(f"{len(t)} times but {len(e)} observed flags")
    if not np.isfinite(t).all():
        raise ValueError("times must be finite (a censored time is its cap)")
    return t, e


def _risk_table(t: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct event times, number at risk at each, events at each); the at-risk count includes the times censored
    at that very time (events first)."""
    event_times, events = np.unique(t[e], return_counts=True)
    at_risk = len(t) - np.searchsorted(np.sort(t), event_times, side="left")
    return event_times, at_risk, events


def kaplan_meier(times: Sequence[float], observed: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan–Meier estimate as a step function: (distinct event times, S just after each), S being 1 before
    the first; ``observed`` is False for a time censored there. No events: two empty arrays."""
    event_times, at_risk, events = _risk_table(*_arrays(times, observed))
    return event_times, np.cumprod(1 - events / at_risk)


def km_median(times: Sequence[float], observed: Sequence[bool], level: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the Kaplan–Meier median time to event and its ``level`` confidence interval.

    The median is the first event time at which S(t) <= 1/2, decided in exact integer arithmetic (S is a product of
    ratios of counts, so a plateau at exactly 1/2 is common with few seeds and must not hang on rounding); inf when S
    stays above 1/2 (not reached). The interval is Brookmeyer–Crowley's with the log-log transform: the pointwise
    band of S(t) is exp(-exp(log(-log S) ± z·σ)) with σ² = Greenwood's Σ d/(n(n-d)) / (log S)² and z the two-sided
    ``level`` normal quantile; where S = 0 both curves are 0. ``low`` and ``high`` are the first event times at
    which the band's lower and upper curves reach 1/2 (inf when the upper curve never does): the ends of the set of
    times whose band contains 1/2, whenever the curves fall monotonically. NaN for no data.

    Example: times 1..5, the 3 censored: S = 0.8, 0.6, 0.3, 0 at 1, 2, 4, 5, the median 4; the lower curve is
    0.20 ≤ 1/2 at 1, the upper 0.97, 0.88, 0.72, 0 at 1, 2, 4, 5, so the interval is [1, 5].
    """
    t, e = _arrays(times, observed)
    if not len(t):
        return math.nan, math.nan, math.nan
    event_times, at_risk, events = _risk_table(t, e)
    numerator, denominator, median = 1, 1, math.inf
    for time, n, d in zip(event_times.tolist(), at_risk.tolist(), events.tolist()):
        numerator, denominator = numerator * (n - d), denominator * n
        if 2 * numerator <= denominator:
            median = time
            break
    survival = np.cumprod(1 - events / at_risk)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s = np.log(survival)
        sigma = np.sqrt(np.cumsum(events / (at_risk * (at_risk - events)))) / -log_s
        lower = np.where(survival > 0, np.exp(log_s * np.exp(z * sigma)), 0.0)
        upper = np.where(survival > 0, np.exp(log_s * np.exp(-z * sigma)), 0.0)
    return median, _first_at_or_below_half(event_times, lower), _first_at_or_below_half(event_times, upper)


def _first_at_or_below_half(event_times: np.ndarray, curve: np.ndarray) -> float:
    reached = np.flatnonzero(curve <= 0.5)
    return float(event_times[reached[0]]) if len(reached) else math.inf


@dataclass(frozen=True)
class PairedCensoredTest:
    """A paired censored comparison: ``statistic`` (the sum of the pairs' scores, positive when the first arm takes
    longer), ``n_informative`` (pairs whose order is known), ``n_pairs``, ``p`` (exact two-sided; None when
    untestable) and ``status`` ("tested" or "untestable")."""
    statistic: int
    n_informative: int
    n_pairs: int
    p: float | None
    status: str

    @property
    def min_p(self) -> float | None:
        """The smallest p-value any data could give with this many informative pairs: 2 / 2^n (None when none)."""
        return 2.0 ** (1 - self.n_informative) if self.n_informative else None


def _order(a: float, a_seen: bool, b: float, b_seen: bool) -> int:
    """+1 when a's time is known to exceed b's, -1 when known to fall short, 0 when tied or unknown."""
    if a_seen and b_seen:
        return (a > b) - (a < b)
    if a_seen and a <= b:  # b not learned by b >= a: b's time exceeds a's (at a tie the event comes first)
        return -1
    if b_seen and b <= a:
        return 1
    return 0  # both censored, or one censored before the other's event


def paired_censored_test(a_times: Sequence[float], a_observed: Sequence[bool], b_times: Sequence[float],
                         b_observed: Sequence[bool]) -> PairedCensoredTest:
    """The paired Gehan sign test of arm a against arm b on right-censored times, one pair per seed.

    Each pair scores +1 when a's time is known to exceed b's, -1 when known to fall short, and 0 when the order is
    unknown — both censored, or one censored strictly before the other's event — or the events tie (a censoring at
    the other's event time is later: the event comes first). The statistic is the sum of the scores; the p-value is
    the exact two-sided sign-flip permutation p-value over the n informative (non-zero) pairs: the share of the 2^n
    sign patterns whose |sum| is at least the observed one, counted in closed form (the sum of k positive signs is
    2k - n; C(n, k) patterns have it), exact for every n. No informative pair: untestable, p None.

    Why it is valid: under the null that, within each pair, the two arms' outcomes (time and censoring) are
    exchangeable — the same law, with the same cap for both arms — swapping a pair's arms flips its score and leaves
    whether it is informative unchanged; pairs (seeds) are independent, so given which pairs are informative each
    sign is +1 or -1 with probability 1/2, independently. No variance is estimated, so none can be zero: a difference
    of constant sign over n informative pairs gives p = 2 / 2^n, never 0. That is also the smallest p attainable
    (``min_p``): 0.25 with 3 pairs, 0.0625 with 5, first below 0.05 at 6; so a 3-seed comparison can never reach
    p < 0.05, however large the difference. Arms with different caps break the null (the cap alone orders pairs).
    """
    a, a_seen = _arrays(a_times, a_observed)
    b, b_seen = _arrays(b_times, b_observed)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} pairs in arm a but {len(b)} in arm b")
    scores = [_order(*pair) for pair in zip(a.tolist(), a_seen.tolist(), b.tolist(), b_seen.tolist())]
    statistic, n = sum(scores), sum(s != 0 for s in scores)
    if n == 0:
        return PairedCensoredTest(0, 0, len(scores), None, "untestable")
    extreme = sum(math.comb(n, k) for k in range(n + 1) if abs(2 * k - n) >= abs(statistic))
    return PairedCensoredTest(statistic, n, len(scores), extreme / 2 ** n, "tested")


def holm_family(results: Sequence[PairedCensoredTest]) -> list[float | None]:
    """Holm-adjusted p-values of ``results``, in order: the family is the tested comparisons only; an untestable
    one keeps None and does not count towards the family size."""
    adjusted = holm([r.p if r.p is not None else math.nan for r in results])
    return [None if r.p is None else p for r, p in zip(results, adjusted)]
