"""The singular-value spectrum of the batch logit gradient G (N x V), streamed over token chunks.

G's rows are the tokens' logit gradients g_i = softmax(z_i) - onehot(y_i) (the batch-mean loss's gradient is G / N;
shares of ‖G‖² do not depend on that scale). The energies λ_1 >= λ_2 >= ... are the squared singular values.

- **exact**: the eigenvalues of the smaller Gram matrix, GᵀG (V x V, accumulated over row chunks) or GGᵀ (N x N,
  accumulated over column blocks of the vocabulary after one pass for each row's log-sum-exp); used when
  min(N, V) <= ``exact_max``.
- **sketch**: Frequent Directions (Liberty 2013; Ghashami et al. 2016) with ℓ directions: a (2ℓ x V) buffer of rows;
  when full, its SVD is shrunk by δ = the ℓ-th squared singular value. The final sketch B satisfies
  0 ⪯ GᵀG - BᵀB ⪯ Δ·I with Δ = Σ δ (tracked exactly, and at most (‖G‖² - ‖B‖²)/ℓ), so by Weyl's inequality each
  λ_k(G) lies in [λ_k(B), λ_k(B) + Δ], and the top-k energy in [Σ_{i<=k} λ_i(B), Σ_{i<=k} λ_i(B) + kΔ]. Every share
  and component count below is reported as that interval [lo, hi] (equal ends when exact).
"""
from __future__ import annotations

import numpy as np
import torch

from spamlang.measure.logits import chunk_size, gradient_chunks, logits, row_slices

#: shares of ‖G‖² whose component counts are reported
LEVELS = (0.7, 0.9, 0.99, 0.999)
#: largest min(N, V) for which ``auto`` computes the exact Gram spectrum (a 8192² float64 Gram is 0.5 GiB)
EXACT_MAX = 8192
#: points of the cumulative-share curve kept in the record (log-spaced component counts)
CURVE_POINTS = 64


def default_sketch_size(rank: int) -> int:
    """Directions kept by the sketch: enough to bound the top-2·rank share, at least 1024."""
    return max(1024, 2 * rank + 128)


def exact_energies(h, y, w, b=None, chunk=None) -> torch.Tensor:
    """All squared singular values of G (float64, descending), from the smaller of its two Gram matrices."""
    n, v = h.shape[0], w.shape[0]
    if v <= n:
        gram = torch.zeros(v, v, dtype=torch.float64, device=h.device)  # (V, V)
        for _, g, _ in gradient_chunks(h, y, w, b, chunk):
            g = g.double()
            gram += g.T @ g
    else:
        lse = torch.cat([torch.logsumexp(logits(h[rows], w, b), dim=1)
                         for rows in row_slices(n, chunk_size(v, h.device, chunk))])  # (N,)
        gram = torch.zeros(n, n, dtype=torch.float64, device=h.device)  # (N, N)
        # vocabulary columns per block: as many values as a chunk
        step = max(1, chunk_size(v, h.device, chunk) * v // n)
        for start in range(0, v, step):
            stop = min(start + step, v)
            p = (logits(h, w[start:stop], None if b is None else b[start:stop]) - lse[:, None]).exp()  # (N, c)
            hit = (y >= start) & (y < stop)
            p[hit.nonzero().squeeze(1), y[hit] - start] -= 1
            p = p.double()
            gram += p @ p.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp(min=0.0)


def frequent_directions(h, y, w, b=None, sketch_size: int = 1024, chunk=None) -> tuple[torch.Tensor, float, float]:
    """(λ(B) descending float64, Δ, ‖G‖²): the Frequent Directions sketch B of G with ``sketch_size`` directions,
    its accumulated shrinkage Δ (the spectral-norm error bound of BᵀB) and the exact total energy."""
    ell = sketch_size
    buf = torch.zeros(2 * ell, w.shape[0], dtype=h.dtype, device=h.device)  # (2ℓ, V)
    filled, delta, total = 0, 0.0, 0.0
    for _, g, _ in gradient_chunks(h, y, w, b, chunk):
        total += float(g.double().square().sum())
        i = 0
        while i < len(g):
            take = min(2 * ell - filled, len(g) - i)
            buf[filled:filled + take] = g[i:i + take]
            filled, i = filled + take, i + take
            if filled == 2 * ell:
                filled, shrink = _shrink(buf, ell)
                delta += shrink
    energies = torch.linalg.eigvalsh((buf[:filled].double() @ buf[:filled].double().T)).flip(0).clamp(min=0.0)
    return energies, delta, total


def _shrink(buf: torch.Tensor, ell: int) -> tuple[int, float]:
    """Shrink the full buffer in place to its top ℓ - 1 directions less δ = λ_ℓ; return (rows kept, δ)."""
    lam, u = torch.linalg.eigh(buf.double() @ buf.double().T)  # (2ℓ,), (2ℓ, 2ℓ) ascending
    lam, u = lam.flip(0), u.flip(1)
    delta = float(lam[ell - 1].clamp(min=0.0))
    keep = int((lam[:ell - 1] > delta).sum())
    scale = ((lam[:keep] - delta) / lam[:keep]).sqrt()  # σ'/σ of each kept direction
    rows = (u[:, :keep].T * scale[:, None]).to(buf.dtype) @ buf  # (keep, V) = diag(σ'/σ) Uᵀ B = diag(σ') Vᵀ
    buf[:keep] = rows
    buf[keep:] = 0
    return keep, delta


def summarize(energies: torch.Tensor, total: float, delta: float, dims: tuple[int, int], rank: int,
              eps: float) -> dict:
    """The record's ``spectrum`` section from lower bounds ``energies`` of the leading λ_k, the total ‖G‖²,
    the per-eigenvalue error bound ``delta`` (0 when exact), dims = (N, V), the head's rank and the machine epsilon
    of the computation (for the numerical rank)."""
    lam = energies.double().cpu().numpy()
    m = min(dims)
    k = np.arange(1, m + 1)
    lo = np.concatenate([np.cumsum(lam), np.full(max(0, m - len(lam)), lam.sum())])[:m]  # lower bound of top-k
    hi = np.minimum(total, lo + k * delta)
    share_lo, share_hi = lo / total, hi / total

    def count(level: float) -> list:
        """[fewest, most] components holding ``level`` of ‖G‖²; None where the sketch cannot tell."""
        most = np.flatnonzero(share_lo >= level)
        fewest = np.flatnonzero(share_hi >= level)
        return [int(fewest[0]) + 1 if len(fewest) else None, int(most[0]) + 1 if len(most) else None]

    exact = delta == 0 and len(lam) >= m
    sigma = np.sqrt(lam)
    numerical = int((sigma > sigma[0] * max(dims) * eps).sum()) if exact and sigma[0] > 0 else None
    p = sigma / sigma.sum() if exact and sigma.sum() > 0 else None
    effective = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())) if p is not None else None
    two_r = min(2 * rank, m)
    grid = np.unique(np.round(np.geomspace(1, m, CURVE_POINTS)).astype(int))
    return {"tokens": dims[0], "vocab_size": dims[1], "error_bound": delta / total,
            "components": {f"{100 * level:g}": count(level) for level in LEVELS},
            "numerical_rank": numerical, "effective_rank": effective,
            "rank_2r": 2 * rank, "share_2r": [float(share_lo[two_r - 1]), float(share_hi[two_r - 1])],
            "curve": {"k": grid.tolist(), "lo": share_lo[grid - 1].tolist(), "hi": share_hi[grid - 1].tolist()}}


def spectrum(h, y, w, b=None, rank: int = 0, method: str = "auto", sketch_size: int | None = None,
             exact_max: int = EXACT_MAX, chunk=None) -> dict:
    """The spectrum section of G for hidden states h (N, D), targets y (N,), head w (V, D), bias b (V,) or None:
    ``method`` is ``exact``, ``sketch`` or ``auto`` (exact when min(N, V) <= exact_max)."""
    dims = (h.shape[0], w.shape[0])
    if method == "auto":
        method = "exact" if min(dims) <= exact_max else "sketch"
    eps = float(torch.finfo(h.dtype).eps)
    if method == "exact":
        lam = exact_energies(h, y, w, b, chunk)
        out = summarize(lam, float(lam.sum()), 0.0, dims, rank, eps)
        return {"method": "exact", "sketch_size": None, **out}
    ell = sketch_size or default_sketch_size(rank)
    lam, delta, total = frequent_directions(h, y, w, b, ell, chunk)
    return {"method": "frequent-directions", "sketch_size": ell, **summarize(lam, total, delta, dims, rank, eps)}

