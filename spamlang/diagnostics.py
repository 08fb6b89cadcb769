"""Gradient-bottleneck diagnostics (docs/science.md): destroyed-gradient ratio, kept cosine, spectrum share."""
from __future__ import annotations

import math

import torch


def orthonormal_basis(a: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis (V, k) of col(a) for a (V, D) by SVD, k its numerical rank (singular values > rtol · max)."""
    u, s, _ = torch.linalg.svd(a.detach().double(), full_matrices=False)
    k = int((s > rtol * s[0]).sum()) if s.numel() else 0
    return u[:, :k]


def gradient_diagnostics(g: torch.Tensor, q: torch.Tensor) -> dict[str, float]:
    """Diagnostics of the logit gradient g (M, V) against the kept subspace with orthonormal basis q (V, rank).

    grad_destroyed r = ‖G - G Q Qᵀ‖ / ‖G‖ (Frobenius, in float64); grad_kept_cos = ⟨G, G Q Qᵀ⟩ / (‖G‖ ‖G Q Qᵀ‖)
    (= sqrt(1 - r²)); grad_baseline = sqrt(1 - rank/V), r for a direction unrelated to the subspace.
    """
    g, q = g.detach().double(), q.detach().double()
    kept = (g @ q) @ q.T  # (M, V)
    g_norm, kept_norm = g.norm(), kept.norm()
    cos = (g * kept).sum() / (g_norm * kept_norm) if kept_norm > 0 else torch.zeros(())
    return {"grad_destroyed": float((g - kept).norm() / g_norm), "grad_kept_cos": float(cos),
            "grad_baseline": math.sqrt(max(0.0, 1 - q.shape[1] / g.shape[1]))}


def spectrum_share(g: torch.Tensor, k: int) -> float:
    """Share of ‖G‖_F² in the top-k singular values of g: an upper bound on cos(ΔZ, -G)² for rank-k updates ΔZ.

    The squared singular values are the eigenvalues of the Gram matrix of g's shorter side (much faster than an SVD).
    """
    g = g.detach().double()
    gram = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g
    s2 = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0)  # descending
    return float(s2[:k].sum() / s2.sum())
