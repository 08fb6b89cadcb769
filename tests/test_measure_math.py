"""The measurement's pure functions against brute-force float64 computations on the full N x V gradient."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spamlang.diagnostics import orthonormal_basis
from spamlang.measure import pertoken, spectrum, update


def problem(n=300, d=8, v=40, bias=False, scale=1.0, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=dtype) * scale
    w = torch.randn(v, d, generator=gen, dtype=dtype)
    b = torch.randn(v, generator=gen, dtype=dtype) if bias else None
    y = torch.randint(v, (n,), generator=gen)
    return h, y, w, b


def brute_gradient(h, y, w, b):
    """G = ∂(mean CE)/∂Z, (N, V), materialised in float64."""
    z = h.double() @ w.double().T + (0 if b is None else b.double())
    return (F.softmax(z, 1) - F.one_hot(y, w.shape[0]).double()) / len(y), z


@pytest.mark.parametrize("bias", [False, True])
def test_per_token_matches_brute_force(bias):
    h, y, w, b = problem(bias=bias)
    q = orthonormal_basis(w)
    out = pertoken.per_token(h, y, w, q, b, chunk=64)
    g, _ = brute_gradient(h, y, w, b)
    kept = g @ q @ q.T
    ratio = (g - kept).norm(dim=1) / g.norm(dim=1)
    torch.testing.assert_close(out["destroyed"], ratio, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["kept_cos"], (1 - ratio ** 2).sqrt(), rtol=1e-9, atol=1e-9)
    assert out["frobenius_destroyed"] == pytest.approx(float((g - kept).norm() / g.norm()), rel=1e-9)
    summary = pertoken.summarize(out, torch.arange(len(y)) % 16 + 1, 17, q.shape[1], w.shape[0])
    assert summary["destroyed"]["mean"] == pytest.approx(float(ratio.mean()), rel=1e-9)
    assert summary["destroyed"]["q50"] == pytest.approx(float(ratio.median()), abs=0.02)
    assert sum(bucket["tokens"] for bucket in summary["by_position"]) == len(y)
    assert [bucket["positions"] for bucket in summary["by_position"]] == [[1, 1], [2, 3], [4, 7], [8, 15], [16, 16]]


def test_random_head_sits_at_the_isotropic_baseline():
    h, y, w, b = problem(n=2000, d=16, v=256, scale=1e-3, seed=1)  # logits ~ 0: P ~ uniform
    q = orthonormal_basis(w)
    summary = pertoken.summarize(pertoken.per_token(h, y, w, q), torch.ones(len(y)), 2, q.shape[1], w.shape[0])
    assert summary["baseline"] == pytest.approx(math.sqrt(1 - 16 / 256))
    assert summary["destroyed"]["mean"] == pytest.approx(summary["baseline"], abs=0.01)


def brute_counts(sv2: np.ndarray) -> dict:
    share = np.cumsum(sv2) / sv2.sum()
    return {f"{100 * level:g}": int(np.argmax(share >= level)) + 1 for level in spectrum.LEVELS}


@pytest.mark.parametrize("n,v,bias", [(300, 40, False), (30, 90, True)])  # the V x V and the N x N Gram
def test_exact_spectrum_matches_svd(n, v, bias):
    h, y, w, b = problem(n=n, v=v, bias=bias)
    g, _ = brute_gradient(h, y, w, b)
    sv2 = (torch.linalg.svdvals(g * n) ** 2).numpy()
    lam = spectrum.exact_energies(h, y, w, b, chunk=7)
    np.testing.assert_allclose(lam.numpy()[:len(sv2)], sv2, rtol=1e-8, atol=1e-9 * sv2[0])
    out = spectrum.spectrum(h, y, w, b, rank=8, method="exact", chunk=7)
    assert {k: c[0] for k, c in out["components"].items()} == brute_counts(sv2)
    assert all(lo == hi for lo, hi in out["components"].values())
    assert out["numerical_rank"] == int(np.linalg.matrix_rank(g.numpy()))
    assert out["share_2r"][0] == pytest.approx(sv2[:16].sum() / sv2.sum(), rel=1e-9)
    p = np.sqrt(sv2) / np.sqrt(sv2).sum()
    assert out["effective_rank"] == pytest.approx(float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())), rel=1e-6)


def test_frequent_directions_bounds_hold_against_the_exact_spectrum():
    h, y, w, b = problem(n=400, v=60, d=12)
    g, _ = brute_gradient(h, y, w, b)
    sv2 = (torch.linalg.svdvals(g * len(y)) ** 2).numpy()
    lam, delta, total = spectrum.frequent_directions(h, y, w, b, sketch_size=10, chunk=33)
    lam = lam.numpy()
    assert total == pytest.approx(sv2.sum(), rel=1e-9)
    assert 0 < delta <= (total - lam.sum()) / 10 + 1e-9  # the a-posteriori bound of Frequent Directions
    k = min(len(lam), len(sv2))
    assert np.all(lam[:k] <= sv2[:k] + 1e-9) and np.all(sv2[:k] <= lam[:k] + delta + 1e-9)
    out = spectrum.spectrum(h, y, w, b, rank=3, method="sketch", sketch_size=10, chunk=33)
    exact = brute_counts(sv2)
    for key, (lo, hi) in out["components"].items():
        assert lo <= exact[key] and (hi is None or exact[key] <= hi)
    share = sv2[:6].sum() / sv2.sum()
    assert out["share_2r"][0] - 1e-12 <= share <= out["share_2r"][1] + 1e-12
    assert out["numerical_rank"] is None and out["error_bound"] == pytest.approx(delta / total)
    # with as many directions as rows, the sketch never shrinks and is exact
    big = spectrum.spectrum(h, y, w, b, rank=3, method="sketch", sketch_size=60, chunk=33)
    assert {key: c[0] for key, c in big["components"].items()} == exact


@pytest.mark.parametrize("bias", [False, True])
def test_equal_norm_update_matches_brute_force(bias):
    h, y, w, b = problem(n=200, v=50, d=6, bias=bias, seed=3)
    out = update.equal_norm(h, y, w, b, step_norm=0.3, chunk=17)
    g, z = brute_gradient(h, y, w, b)
    n = len(y)
    dh, dw = -g @ w, -g.T @ h
    dz = dh @ w.T + h @ dw.T
    db = -g.sum(0)
    if bias:
        dz = dz + db
    eps = 0.3 * math.sqrt(n)
    loss = F.cross_entropy(z, y).item()
    cos = float((-g * dz).sum() / (g.norm() * dz.norm()))
    assert out["loss"] == pytest.approx(loss, rel=1e-10)
    assert out["cosine"] == pytest.approx(cos, rel=1e-8)
    assert out["ideal"]["first_order"] == pytest.approx(eps * float(g.norm()), rel=1e-10)
    assert out["realisable"]["first_order"] == pytest.approx(eps * float(g.norm()) * cos, rel=1e-8)
    ideal_after = F.cross_entropy(z - eps * g / g.norm(), y).item()
    eta = eps / float(dz.norm())
    moved = (h + eta * dh) @ (w + eta * dw).T + (0 if b is None else b + eta * db)
    assert out["ideal"]["actual"] == pytest.approx(loss - ideal_after, rel=1e-8)
    assert out["realisable"]["actual"] == pytest.approx(loss - F.cross_entropy(moved, y).item(), rel=1e-8)
    assert 0 < out["ratio_first_order"] < 1


def test_float32_chunks_agree_with_float64():
    h, y, w, b = problem(n=500, v=300, d=16, seed=4)
    q = orthonormal_basis(w)
    exact = pertoken.per_token(h, y, w, q)["destroyed"]
    fast = pertoken.per_token(h.float(), y, w.float(), q.float(), chunk=50)["destroyed"]
    torch.testing.assert_close(fast, exact, atol=1e-4, rtol=0)
