"""Choosing swept values on val, edges of a grid, and the rounds that grow a learning-rate grid."""
from __future__ import annotations

import math

import pytest

from spamlang.scoring.configurations import choose, edge, setting_key
from spamlang.sweeps.lrgrid import next_lrs

OK = "ok"


def test_settings_are_ordered_by_mean_val_loss_with_a_bad_seed_as_inf():
    assert setting_key([(OK, 1.0), (OK, 3.0)]) == (2.0, 0, 2.0)
    assert setting_key([(OK, 1.0), ("diverged", None)]) == (math.inf, 1, 1.0)
    settings = {0.1: [(OK, 0.5), ("diverged", None)], 0.01: [(OK, 1.0), (OK, 1.2)], 0.03: [(OK, 1.0), (OK, 1.2)]}
    assert choose(settings) == 0.01  # equals: the first


@pytest.mark.parametrize("chosen, tried, expected", [
    (0.01, [0.01], "only"), (0.001, [0.001, 0.01], "low"), (0.03, [0.001, 0.01, 0.03], "high"),
    (0.01, [0.001, 0.01, 0.03], None), ("adamw", ["adamw", "sgd"], None)])
def test_edges(chosen, tried, expected):
    assert edge(chosen, tried) == expected


def test_next_lrs_go_outward_from_an_edge_and_stop_inside_or_at_divergence():
    assert next_lrs({0.01: [(OK, 1.0)]}) == [0.00333, 0.03]  # one value: both ways, 3 significant digits
    assert next_lrs({0.01: [(OK, 1.0)], 0.03: [(OK, 0.5)]}) == [0.09]
    assert next_lrs({0.01: [(OK, 0.5)], 0.03: [(OK, 1.0)]}) == [0.00333]
    assert next_lrs({0.01: [(OK, 1.0)], 0.03: [(OK, 0.5)], 0.09: [(OK, 0.7)]}) == []  # interior
    assert next_lrs({0.01: [(OK, 1.0), ("diverged", None)]}) == [0.00333]  # a diverged edge ends the range above
    assert next_lrs({0.01: [("diverged", None)], 0.03: [("diverged", None)]}) == [0.00333]
    assert next_lrs({0.01: [("failed", None)]}) == []
    assert next_lrs({0.01: [(OK, 1.0)]}, factor=10) == [0.001, 0.1]
