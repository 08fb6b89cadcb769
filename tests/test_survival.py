"""Time to learn under censoring: the Kaplan–Meier median and its interval (hand-computed, and against lifelines), the
paired censored test, Holm over the tested comparisons, and the three-valued learned rule."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from spamlang.record.learned import learned_state
from spamlang.scoring.survival import holm_family, kaplan_meier, km_median, paired_censored_test


def test_km_median_hand_computed():
    """Times 1..5, the 3 censored. At risk 5, 4, 2, 1 at the events 1, 2, 4, 5: S = 4/5, 3/5, 3/10, 0, so the median
    is 4. Greenwood's sum is 1/20, then + 1/12, then + 1/2; the log-log band's lower curve at 1 is
    0.8^exp(1.96·sqrt(0.05)/-log 0.8) = 0.204 ≤ 1/2, its upper curve 0.969, 0.882, 0.719 at 1, 2, 4 and 0 at 5 (where
    S = 0): the interval is [1, 5]."""
    times, survival = kaplan_meier([1, 2, 3, 4, 5], [1, 1, 0, 1, 1])
    assert times.tolist() == [1, 2, 4, 5] and survival == pytest.approx([0.8, 0.6, 0.3, 0.0])
    assert km_median([1, 2, 3, 4, 5], [1, 1, 0, 1, 1]) == (4, 1, 5)
    assert km_median([1, 2, 3, 4, 5], [1, 1, 0, 1, 1], level=0.5)[1] == 2  # z = 0.674: lower curve 0.64 at 1, 0.44 at 2


def test_km_events_before_censorings_at_a_tie_and_an_exact_half():
    """At 2, one event and one censoring: the censored run is still at risk (3 at risk, S = 2/3; censoring first would
    give 1/2). Times 1..6 all learned: S(3) = 3/6 exactly, so the median is 3 (the first time S ≤ 1/2, decided
    exactly; lifelines' S(3) rounds to 0.5000000000000001 and it answers 4)."""
    assert kaplan_meier([2, 2, 3], [1, 0, 1])[1] == pytest.approx([2 / 3, 0.0])
    assert km_median(range(1, 7), [1] * 6)[0] == 3
    assert km_median([1, 2, 3, 4], [1, 1, 0, 0])[0] == 2  # S = 1/2 from 2 on: reached


def test_km_median_not_reached_is_inf():
    """One of five learned: S = 0.8 stays above 1/2; the upper curve never reaches it, the lower (0.204) does."""
    assert km_median([1, 2, 3, 4, 5], [1, 0, 0, 0, 0]) == (math.inf, 1, math.inf)
    assert km_median([300, 300, 300], [0, 0, 0]) == (math.inf, math.inf, math.inf)
    assert all(math.isnan(x) for x in km_median([], []))
    with pytest.raises(ValueError):
        km_median([1, 2], [1])
    with pytest.raises(ValueError):
        km_median([1, math.inf], [1, 0])


def _exact_half(times: np.ndarray, observed: np.ndarray) -> bool:
    """Whether the exact KM estimate sits at exactly 1/2 somewhere."""
    s = Fraction(1)
    for t in np.unique(times[observed]):
        n, d = int((times >= t).sum()), int(((times == t) & observed).sum())
        s *= Fraction(n - d, n)
        if s <= Fraction(1, 2):
            return s == Fraction(1, 2)
    return False


def test_km_agrees_with_lifelines():
    """20 data sets, half with continuous times and random censoring, half on an evaluation grid censored at a cap
    (many ties): the same survival, median and interval. Where the exact estimate sits at 1/2, lifelines' rounding
    decides between the plateau's first time (ours) and the next event time."""
    lifelines = pytest.importorskip("lifelines")
    from lifelines.utils import median_survival_times
    rng = np.random.default_rng(7)
    strict = 0
    for i in range(20):
        n = int(rng.integers(3, 31))
        if i % 2:
            latent, censor = rng.exponential(1.0, n), rng.exponential(2.0, n)
            times, observed = np.minimum(latent, censor), latent <= censor
        else:
            cap = 50 * int(rng.integers(4, 16))
            times = np.minimum(50 * rng.geometric(0.12, n), cap).astype(float)
            observed = times < cap
        fitter = lifelines.KaplanMeierFitter().fit(times, observed)
        event_times, survival = kaplan_meier(times, observed)
        assert survival == pytest.approx(fitter.survival_function_.loc[event_times].to_numpy()[:, 0], rel=1e-12)
        median, low, high = km_median(times, observed)
        assert (low, high) == tuple(median_survival_times(fitter.confidence_interval_).to_numpy()[0])
        if _exact_half(times, observed):
            later = event_times[event_times > median]
            assert fitter.median_survival_time_ in (median, later[0] if len(later) else math.inf)
        else:
            assert median == fitter.median_survival_time_
            strict += 1
    assert strict >= 10


def test_both_censored_pairs_are_untestable():
    result = paired_censored_test([1000, 1000, 1000], [0, 0, 0], [1000, 1000, 1000], [0, 0, 0])
    assert (result.status, result.p, result.n_informative, result.statistic) == ("untestable", None, 0, 0)
    assert result.min_p is None


def test_only_informative_pairs_count():
    """Scores: -1 (both learned, a first), -1 (b censored after a's event), 0 (both censored), 0 (b censored before
    a's event), +1 (b learned at the cap where a is censored: the event comes first), 0 (tied events), -1: sum -2 over
    4 informative pairs; the patterns with |sum| ≥ 2 have 0, 1, 3 or 4 positive signs: (1 + 4 + 4 + 1) / 16."""
    a = ([100, 200, 1000, 500, 1000, 250, 50], [1, 1, 0, 1, 0, 1, 1])
    b = ([400, 1000, 1000, 300, 1000, 250, 900], [1, 0, 0, 0, 1, 1, 1])
    result = paired_censored_test(*a, *b)
    assert (result.statistic, result.n_informative, result.n_pairs, result.status) == (-2, 4, 7, "tested")
    assert result.p == 10 / 16 and result.min_p == 0.125
    assert paired_censored_test(*b, *a).statistic == 2 and paired_censored_test(*b, *a).p == result.p
    with pytest.raises(ValueError):
        paired_censored_test([1, 2], [1, 1], [1], [1])


def test_constant_difference_gives_the_smallest_p_never_zero():
    """A paired t-test calls a constant difference p = 0; the sign-flip test gives 2 / 2^n."""
    three = paired_censored_test([300, 300, 300], [1, 1, 1], [1000, 1000, 1000], [0, 0, 0])
    assert (three.p, three.statistic) == (0.25, -3) and three.min_p == 0.25
    five = paired_censored_test([500] * 5, [1] * 5, [200] * 5, [1] * 5)
    assert (five.p, five.statistic) == (0.0625, 5)


@pytest.mark.parametrize("seed", range(5))
def test_p_is_the_sign_flip_enumeration(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 13))
    a, b = rng.integers(1, 6, n).astype(float), rng.integers(1, 6, n).astype(float)
    a_seen, b_seen = rng.random(n) < 0.7, rng.random(n) < 0.7
    result = paired_censored_test(a, a_seen, b, b_seen)
    if result.status == "untestable":
        return
    k = result.n_informative
    sums = [sum(signs) for signs in itertools.product((-1, 1), repeat=k)]
    assert result.p == sum(abs(s) >= abs(result.statistic) for s in sums) / 2 ** k


def test_holm_family_leaves_untestable_comparisons_out():
    """Two tested (0.0625, 0.25) and one untestable: Holm over 2 gives 2 × 0.0625 and max(0.125, 0.25); counting the
    untestable one would give 3 × 0.0625."""
    tested_5 = paired_censored_test([1] * 5, [1] * 5, [2] * 5, [1] * 5)
    untestable = paired_censored_test([9] * 3, [0] * 3, [9] * 3, [0] * 3)
    tested_3 = paired_censored_test([1] * 3, [1] * 3, [2] * 3, [1] * 3)
    assert holm_family([tested_5, untestable, tested_3]) == [0.125, None, 0.25]
    assert holm_family([untestable]) == [None]


def test_learned_state_is_three_valued():
    assert learned_state(0.064, 0.038, 0.05) == "undetermined"  # 0.064 ± 1.645 × 0.038 straddles 0.05
    assert learned_state(0.001, 0.002, 0.05) == "learned"
    assert learned_state(0.5, 0.01, 0.05) == "not learned"
    assert learned_state(0.04, 0.02, 0.05) == "undetermined"  # below the tolerance, but not beyond its noise
    assert learned_state(0.01, None, 0.05) == learned_state(0.01, math.nan, 0.05) == "learned"  # no se: the gap
    assert learned_state(0.01, 0.0, 0.05) == "learned" and learned_state(0.06, 0.0, 0.05) == "not learned"
    assert learned_state(math.nan, 0.0, 0.05) == "undetermined"
    with pytest.raises(ValueError):
        learned_state(0.01, -0.1, 0.05)
