"""Statistics over seeds: t-intervals, standard errors of means, line slopes, the exact Wilcoxon signed-rank test,
bootstrap intervals, Holm's correction.

Pure functions of plain numbers; missing (None) and non-finite values are dropped where noted.
"""
from __future__ import annotations

import functools
import math
import statistics
from typing import Callable, Iterable, Sequence

import numpy as np

#: up to this many non-zero differences the Wilcoxon p-value is exact; above it, the normal approximation
EXACT_MAX = 50


def _t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:
        term, total = c, 0.0
        for j in range((df - 1) // 2):
            total += term
            term *= c * c * (2 * j + 2) / (2 * j + 3)
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0
    for j in range(df // 2):
        total += term
        term *= c * c * (2 * j + 1) / (2 * j + 2)
    return s * total


@functools.lru_cache(maxsize=None)
def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (2-sided 95%: 12.706 at 1)."""
    low, high = 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_coverage(mid, df) < level else (low, mid)
    return (low + high) / 2


def is_finite(value) -> bool:
    """Whether ``value`` is a finite number (None, booleans, NaN and infinities are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite values, as floats (None, NaN and infinities dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_ci(values: Iterable[float | None]) -> tuple[float, float]:
    """(mean, half-width of its 95% t-interval) of the finite values; NaN where undefined (none, or one for the CI)."""
    xs = finite(values)
    if not xs:
        return math.nan, math.nan
    if len(xs) == 1:
        return xs[0], math.nan
    return statistics.fmean(xs), t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def mean_se(values: Iterable[float | None], ses: Iterable[float | None] = ()) -> tuple[float, float]:
    """(mean of the finite ``values``, its standard error): the values' spread (variance / n) plus the mean of each
    value's own squared standard error (``ses``, where given) / n. When every value is measured on its own sample
    both terms describe the same noise, so the sum errs on the large side; with one value and no ``ses`` the error
    is NaN (unknown)."""
    xs = finite(values)
    if not xs:
        return math.nan, math.nan
    own = [s * s for s in finite(ses)]
    spread = statistics.variance(xs) if len(xs) > 1 else None
    if spread is None and not own:
        return xs[0], math.nan
    variance = (spread or 0.0) + (statistics.fmean(own) if own else 0.0)
    return statistics.fmean(xs), math.sqrt(variance / len(xs))


def slope(xs: Sequence[float], ys: Sequence[float | None], last: int | None = None) -> tuple[float, float, int]:
    """(slope, its standard error, degrees of freedom) of the least-squares line through the (x, y) pairs with a
    finite y (the ``last`` of them, if given). Two pairs: (slope, NaN, 0); fewer: (NaN, NaN, 0)."""
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    pairs = pairs[-last:] if last else pairs
    n = len(pairs)
    if n < 2:
        return math.nan, math.nan, 0
    mx, my = statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    if sxx == 0:
        return math.nan, math.nan, 0
    b = sum((x - mx) * (y - my) for x, y in pairs) / sxx
    if n < 3:
        return b, math.nan, 0
    residual = sum((y - my - b * (x - mx)) ** 2 for x, y in pairs)
    return b, math.sqrt(residual / (n - 2) / sxx), n - 2


def bootstrap_ci(values: Iterable[float | None], statistic: Callable[[np.ndarray], float] = np.mean, *,
                 level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap ``level`` interval (low, high) of ``statistic`` over the finite values, from
    ``resamples`` resamples with replacement drawn with a generator seeded by ``seed``; (NaN, NaN) with fewer than
    two values."""
    xs = np.asarray(finite(values))
    if len(xs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    samples = xs[rng.integers(0, len(xs), size=(resamples, len(xs)))]  # (resamples, n)
    estimates = np.apply_along_axis(statistic, 1, samples)
    tail = (1 - level) / 2
    return float(np.quantile(estimates, tail)), float(np.quantile(estimates, 1 - tail))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: reject hypothesis i at family-wise level alpha when
    its adjusted p-value is below alpha. NaN p-values are left NaN and do not count towards the family size."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for k, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * p))
        adjusted[i] = running
    return adjusted


def wilcoxon_greater(differences: Iterable[float | None]) -> float:
    """One-sided p-value of the Wilcoxon signed-rank test that paired ``differences`` tend to be above 0.

    Zero and non-finite differences are dropped (none left: p = 1); tied magnitudes get their average rank. Exact
    (the null distribution of the positive rank sum over all 2^n sign patterns) for up to EXACT_MAX differences,
    normal approximation with tie and continuity corrections above.
    """
    d = np.array([x for x in finite(differences) if x != 0], dtype=float)
    n = len(d)
    if n == 0:
        return 1.0
    magnitude = np.abs(d)
    ranks = np.empty(n)
    ranks[np.argsort(magnitude, kind="stable")] = np.arange(1, n + 1)
    values, sizes = np.unique(magnitude, return_counts=True)
    for value in values[sizes > 1]:
        ranks[magnitude == value] = ranks[magnitude == value].mean()
    doubled = np.rint(2 * ranks).astype(np.int64)  # average ranks are multiples of 1/2
    observed = int(doubled[d > 0].sum())
    if n <= EXACT_MAX:
        counts = np.zeros(int(doubled.sum()) + 1, dtype=np.int64)  # counts[s]: sign patterns with doubled sum s
        counts[0] = 1
        for r in doubled:
            counts[r:] = counts[r:] + counts[:-r]
        return float(counts[observed:].sum() / 2.0 ** n)
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - float((sizes ** 3 - sizes).sum()) / 48
    z = (observed / 2 - mean - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def min_p_value(n: int) -> float:
    """The smallest one-sided p-value the exact signed-rank test can give with ``n`` pairs (every difference
    positive: one sign pattern of 2^n); when it is not below alpha, no data can separate the two designs."""
    return 2.0 ** -n


def paired_t(differences: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, two-sided p-value of the paired t-test that it is 0, degrees of freedom) of the finite paired
    ``differences``. The p-value is NaN (untestable) for fewer than two differences and for identical ones: no
    p-value comes from a zero variance."""
    d = finite(differences)
    if len(d) < 2:
        return (d[0] if d else math.nan), math.nan, 0
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    if sd == 0:
        return mean, math.nan, len(d) - 1
    t = abs(mean) / (sd / math.sqrt(len(d)))
    return mean, max(0.0, 1.0 - _t_coverage(t, len(d) - 1)), len(d) - 1
