"""The equal-norm update experiment: how much a realisable logit step lowers the loss against the ideal one.

With L the mean cross-entropy over N tokens, Z = H Wᵀ + b the logits and G = ∂L/∂Z (N x V):

- the **ideal** step moves the logits along -G;
- the **realisable** step is the first-order logit change of one gradient step on the hidden states and the head,
  ΔZ = ΔH Wᵀ + H ΔWᵀ + 1 Δbᵀ with ΔH = -G W (what the backbone receives), ΔW = -Gᵀ H, Δb = -Gᵀ1 (for a tied head,
  the input-embedding side of the shared matrix is a backbone effect and is not included);

both scaled to the same Frobenius norm ε = step_norm · sqrt(N) (an RMS logit change of ``step_norm`` per token).
First order, the loss falls by ε‖G‖ (ideal) and ε·cos(ΔZ, -G) ‖G‖ (realisable); *actual* evaluates the loss at the
moved logits: Z - (ε/‖G‖) G, and (H + ηΔH)(W + ηΔW)ᵀ + b + ηΔb with η = ε/‖ΔZ‖ (which adds the second-order term).

‖ΔZ‖² is never formed as an N x V matrix: with S = ΔHᵀΔH, T = HᵀH, X = ΔHᵀH (D x D, accumulated over chunks),
‖ΔH Wᵀ‖² = tr(S WᵀW), ‖H ΔWᵀ‖² = tr(T ΔWᵀΔW), ⟨ΔH Wᵀ, H ΔWᵀ⟩ = tr(X ΔWᵀW), and
⟨-G, ΔZ⟩ = ‖ΔH‖² + ‖ΔW‖² + ‖Δb‖². Two passes over the tokens: one for the gradients, one for the moved losses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spamlang.measure.logits import chunk_size, gradient_chunks, logits, row_slices


def equal_norm(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
               step_norm: float = 0.1, chunk: int | None = None) -> dict:
    """The ``update`` section: loss, the ideal and realisable decreases (first-order and actual) at equal norm, and
    their ratios; h (N, D), y (N,), w (V, D), b (V,) or None, all of one dtype and device."""
    n = h.shape[0]
    acc = torch.float64
    dw = torch.zeros(w.shape, dtype=acc, device=h.device)  # (V, D)
    db = torch.zeros(w.shape[0], dtype=acc, device=h.device)  # (V,)
    s = torch.zeros(w.shape[1], w.shape[1], dtype=acc, device=h.device)  # (D, D) ΔHᵀΔH
    t, x = torch.zeros_like(s), torch.zeros_like(s)  # HᵀH, ΔHᵀH
    sum_dh = torch.zeros(w.shape[1], dtype=acc, device=h.device)
    g_norm2 = loss = 0.0
    for rows, g, token_loss in gradient_chunks(h, y, w, b, chunk):
        g = g / n  # rows of ∂L/∂Z
        hc = h[rows].to(acc)
        dh = -(g @ w).to(acc)  # (c, D)
        dw -= g.T.to(acc) @ hc
        db -= g.sum(0).to(acc)
        s += dh.T @ dh
        t += hc.T @ hc
        x += dh.T @ hc
        sum_dh += dh.sum(0)
        g_norm2 += float(g.to(acc).square().sum())
        loss += float(token_loss.sum())
    w64 = w.to(acc)
    norm2 = ((s * (w64.T @ w64)).sum() + (t * (dw.T @ dw)).sum() + 2 * (x * (w64.T @ dw)).sum())  # ‖ΔH Wᵀ + H ΔWᵀ‖²
    inner = s.trace() + dw.square().sum()  # ⟨-G, ΔH Wᵀ + H ΔWᵀ⟩
    if b is not None:
        sum_h = h.to(acc).sum(0)
        norm2 = norm2 + n * db.square().sum() + 2 * (sum_dh @ (w64.T @ db)) + 2 * (sum_h @ (dw.T @ db))
        inner = inner + db.square().sum()
    g_norm, dz_norm = math.sqrt(g_norm2), math.sqrt(max(float(norm2), 0.0))
    eps = step_norm * math.sqrt(n)
    cosine = float(inner) / (g_norm * dz_norm) if g_norm > 0 and dz_norm > 0 else math.nan
    ideal, real = _moved_losses(h, y, w, b, eps / g_norm if g_norm > 0 else 0.0,
                                eps / dz_norm if dz_norm > 0 else 0.0, dw, db, chunk)
    loss /= n
    first_ideal, first_real = eps * g_norm, eps * g_norm * cosine
    return {"loss": loss, "step_norm": step_norm, "cosine": cosine,
            "ideal": {"first_order": first_ideal, "actual": loss - ideal},
            "realisable": {"first_order": first_real, "actual": loss - real},
            "ratio_first_order": first_real / first_ideal if first_ideal > 0 else math.nan,
            "ratio_actual": (loss - real) / (loss - ideal) if loss != ideal else math.nan}


def _moved_losses(h, y, w, b, ideal_scale, eta, dw, db, chunk) -> tuple[float, float]:
    """Mean losses after the ideal step Z - ideal_scale·G and the realisable step of size eta."""
    n = h.shape[0]
    w_new = (w.to(dw.dtype) + eta * dw).to(w.dtype)  # (V, D)
    b_new = None if b is None else (b.to(db.dtype) + eta * db).to(w.dtype)  # (V,)
    ideal = real = 0.0
    for rows in row_slices(n, chunk_size(w.shape[0], h.device, chunk)):
        z = logits(h[rows], w, b)  # (c, V)
        g = F.softmax(z, dim=1)
        g[torch.arange(len(g), device=g.device), y[rows]] -= 1
        g /= n  # (c, V) rows of G
        ideal += float(F.cross_entropy(z - ideal_scale * g, y[rows], reduction="sum"))
        h_new = h[rows] - eta * (g @ w)  # (c, D): H + η ΔH
        real += float(F.cross_entropy(logits(h_new, w_new, b_new), y[rows], reduction="sum"))
    return ideal / n, real / n

