"""Statistics over seeds: Holm's correction and the bootstrap interval (t-intervals and Wilcoxon: test_score,
test_leaderboard)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from spamlang.stats import bootstrap_ci, holm


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
