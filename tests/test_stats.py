"""Statistics over seeds: Holm's correction, the bootstrap interval, standard errors of means and line slopes
(t-intervals and Wilcoxon: test_score, test_leaderboard)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from spamlang.scoring.stats import bootstrap_ci, holm, mean_se, slope


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01; max(2 x 0.03, 1 x 0.04)
    assert holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    adjusted = holm([0.2, math.nan, 0.9])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.9)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_bootstrap_interval_is_seeded_and_shrinks_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 10), rng.normal(2.0, 1.0, 400)
    low, high = bootstrap_ci(small, seed=3)
    assert (low, high) == bootstrap_ci(small, seed=3) and low < small.mean() < high
    low_l, high_l = bootstrap_ci(large, seed=3)
    assert low_l < 2.0 < high_l and high_l - low_l < (high - low) / 3
    assert bootstrap_ci([1.0, 2.0, None, math.nan], np.median)[0] >= 1.0
    assert all(math.isnan(x) for x in bootstrap_ci([1.0]))


def test_mean_se_adds_the_values_own_errors_to_their_spread():
    assert mean_se([1.0, 3.0]) == pytest.approx((2.0, 1.0))  # variance 2, / 2 values
    assert mean_se([1.0, 3.0], [0.2, 0.2]) == pytest.approx((2.0, math.sqrt((2 + 0.04) / 2)))
    assert mean_se([1.0], [0.3]) == pytest.approx((1.0, 0.3))
    one = mean_se([1.0, None, math.nan])
    assert one[0] == 1.0 and math.isnan(one[1])  # one value, no error of its own: unknown
    assert all(math.isnan(x) for x in mean_se([]))


def test_slope_of_a_least_squares_line_with_its_standard_error():
    assert slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0]) == pytest.approx((2.0, 0.0, 2))
    b, se, df = slope([0, 1, 2], [0.0, 2.0, 1.0])  # residuals -0.5, 1, -0.5: 1.5 / 1 df / sxx 2
    assert (b, df) == (pytest.approx(0.5), 1) and se == pytest.approx(math.sqrt(1.5 / 2))
    assert slope([0, 1, 2, 3, 4], [9.0, 9.0, 1.0, None, 2.0], last=2) == pytest.approx((0.5, math.nan, 0),
                                                                                        nan_ok=True)
    assert all(math.isnan(x) for x in slope([0], [1.0])[:2])


def test_paired_t_hand_checked():
    from spamlang.scoring.stats import paired_t
    mean, p, df = paired_t([1.0, 2.0, 3.0])  # t = 2 / (1 / sqrt 3) = 3.464 with 2 df: p = 0.0742
    assert (mean, df) == (2.0, 2) and p == pytest.approx(0.0742, abs=5e-4)
    assert math.isnan(paired_t([0.5, 0.5, None])[1]) and math.isnan(paired_t([0.0, 0.0])[1])  # no variance: untestable
    assert math.isnan(paired_t([1.0])[1])
