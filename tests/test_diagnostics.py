"""Gradient diagnostics: destroyed ratio, kept cosine, isotropic baseline, numerical-rank bases, spectrum share."""
from __future__ import annotations

import math

import pytest
import torch

from spamlang.diagnostics import gradient_diagnostics, orthonormal_basis, spectrum_share

V, D = 4096, 64


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_random_gradient_sits_at_the_isotropic_baseline(gen):
    q = orthonormal_basis(torch.randn(V, D, generator=gen))
    d = gradient_diagnostics(torch.randn(256, V, generator=gen), q)
    assert d["grad_baseline"] == pytest.approx(math.sqrt(1 - D / V))
    assert d["grad_destroyed"] == pytest.approx(d["grad_baseline"], abs=0.01)
    assert d["grad_kept_cos"] == pytest.approx(math.sqrt(1 - d["grad_destroyed"] ** 2), abs=1e-9)
    assert 0.05 < d["grad_kept_cos"] < 0.2


def test_gradient_inside_and_orthogonal_to_the_column_space(gen):
    w = torch.randn(V, D, generator=gen)
    q = orthonormal_basis(w)
    inside = torch.randn(32, D, generator=gen) @ w.T  # rows in col(W)
    d = gradient_diagnostics(inside, q)
    assert d["grad_destroyed"] == pytest.approx(0, abs=1e-6) and d["grad_kept_cos"] == pytest.approx(1, abs=1e-9)
    g = torch.randn(32, V, generator=gen, dtype=torch.float64)
    outside = g - (g @ q) @ q.T
    d = gradient_diagnostics(outside, q)
    assert d["grad_destroyed"] == pytest.approx(1, abs=1e-9) and d["grad_kept_cos"] == pytest.approx(0, abs=1e-6)


def test_kept_cosine_is_sqrt_one_minus_r_squared(gen):
    q = orthonormal_basis(torch.randn(200, 10, generator=gen))
    g = torch.randn(20, 200, generator=gen) + 3 * torch.randn(20, 10, generator=gen) @ q.T.float()
    d = gradient_diagnostics(g, q)
    assert 0.2 < d["grad_destroyed"] < 0.9
    assert d["grad_kept_cos"] == pytest.approx(math.sqrt(1 - d["grad_destroyed"] ** 2), abs=1e-9)
    assert d["grad_baseline"] == pytest.approx(math.sqrt(1 - 10 / 200))


def test_rank_deficient_basis_has_the_numerical_rank(gen):
    w = torch.randn(V, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, D, generator=gen, dtype=torch.float64)
    q = orthonormal_basis(w)  # w is V x D of rank 5: a QR would return D columns
    assert q.shape == (V, 5)
    torch.testing.assert_close(q.T @ q, torch.eye(5, dtype=q.dtype))
    torch.testing.assert_close(q @ (q.T @ w), w)
    assert orthonormal_basis(torch.zeros(10, 3)).shape == (10, 0)


def test_spectrum_share_on_a_diagonal_gradient():
    g = torch.zeros(4, 6)
    g[0, 0], g[1, 1], g[2, 2], g[3, 3] = 1.0, -3.0, 2.0, 0.5  # squared singular values 9, 4, 1, 0.25
    total = 9 + 4 + 1 + 0.25
    assert spectrum_share(g, 1) == pytest.approx(9 / total)
    assert spectrum_share(g, 2) == pytest.approx(13 / total)
    assert spectrum_share(g, 10) == pytest.approx(1.0)
