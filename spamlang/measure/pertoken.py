"""Per-token destroyed ratio and kept cosine of the logit gradient against the head's column space.

For token i with logit gradient g_i (its softmax minus its one-hot target) and Q an orthonormal basis of col(W), the
part of g_i that reaches the backbone is g_i Q Qᵀ (the backbone receives g_i W, which only sees that part). The
destroyed ratio is r_i = ‖g_i - g_i Q Qᵀ‖ / ‖g_i‖ and the kept cosine c_i = ‖g_i Q‖ / ‖g_i‖ = sqrt(1 - r_i²).
A direction unrelated to col(W) would give r = sqrt(1 - rank/V), the isotropic baseline.
"""
from __future__ import annotations

import math

import torch

from spamlang.measure.logits import gradient_chunks

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def per_token(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, q: torch.Tensor, b: torch.Tensor | None = None,
              chunk: int | None = None) -> dict[str, torch.Tensor | float]:
    """Per-token ``destroyed`` and ``kept_cos`` (N,) (NaN where g_i = 0), plus ``frobenius_destroyed``
    ‖G - G Q Qᵀ‖ / ‖G‖ over the whole batch, with q (V, k) an orthonormal basis of col(W).

    Uses ‖g - g Q Qᵀ‖² = ‖g‖² - ‖g Q‖², so each chunk costs the logits and one (c, V) x (V, k) product; no (c, V)
    projection is ever formed.
    """
    n = h.shape[0]
    destroyed = torch.empty(n, dtype=torch.float64, device=h.device)
    kept_cos = torch.empty_like(destroyed)
    total = lost = 0.0
    for rows, g, _ in gradient_chunks(h, y, w, b, chunk):
        norm2 = torch.linalg.vector_norm(g, dim=1).double().square()  # (c,)
        kept2 = torch.linalg.vector_norm(g @ q, dim=1).double().square()  # (c, k) -> (c,)
        share = torch.where(norm2 > 0, kept2 / norm2, torch.nan).clamp(max=1.0)
        kept_cos[rows] = share.sqrt()
        destroyed[rows] = (1 - share).clamp(min=0.0).sqrt()
        total += float(norm2.sum())
        lost += float((norm2 - kept2).clamp(min=0.0).sum())
    return {"destroyed": destroyed, "kept_cos": kept_cos,
            "frobenius_destroyed": math.sqrt(lost / total) if total > 0 else math.nan}


def position_buckets(seq_len: int) -> list[tuple[int, int]]:
    """Context-length buckets [1, 2), [2, 4), [4, 8), ... covering positions 1 .. seq_len - 1."""
    edges, lo = [], 1
    while lo < seq_len:
        edges.append((lo, min(2 * lo, seq_len)))
        lo *= 2
    return edges


def _stats(values: torch.Tensor) -> dict[str, float]:
    values = values[~values.isnan()]
    if not values.numel():
        return {"mean": math.nan, **{f"q{round(100 * p):02d}": math.nan for p in QUANTILES}}
    qs = torch.quantile(values.cpu(), torch.tensor(QUANTILES, dtype=values.dtype))
    return {"mean": float(values.mean()), **{f"q{round(100 * p):02d}": float(v) for p, v in zip(QUANTILES, qs)}}


def summarize(result: dict, positions: torch.Tensor, seq_len: int, rank: int, vocab_size: int) -> dict:
    """The record's ``per_token`` section: mean and quantiles (q50 is the median) of both per-token quantities,
    the batch Frobenius ratio, the isotropic baseline sqrt(1 - rank/V), the tokens with a zero gradient (left out),
    and the same means per context-length bucket (positions (N,): tokens of context before each target)."""
    destroyed, kept = result["destroyed"].cpu(), result["kept_cos"].cpu()
    positions = positions.cpu()
    buckets = []
    for lo, hi in position_buckets(seq_len):
        inside = (positions >= lo) & (positions < hi) & ~destroyed.isnan()
        if inside.any():
            buckets.append({"positions": [lo, hi - 1], "tokens": int(inside.sum()),
                            "destroyed_mean": float(destroyed[inside].mean()),
                            "kept_cos_mean": float(kept[inside].mean())})
    return {"destroyed": _stats(destroyed), "kept_cos": _stats(kept),
            "frobenius_destroyed": result["frobenius_destroyed"],
            "baseline": math.sqrt(max(0.0, 1 - rank / vocab_size)),
            "zero_gradient_tokens": int(destroyed.isnan().sum()), "by_position": buckets}
