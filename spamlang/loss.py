"""Chunked, fused linear + cross-entropy: the loss of logits x Wᵀ without ever holding all N x V logits."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
#: logits elements per chunk (rows x V) when no chunk size is given: tuned on CPU (2 cores, V = 32k..262k);
#: on accelerators larger chunks amortise kernel launches (untuned)
CHUNK_ELEMENTS = {"cpu": 2**22}
ACCELERATOR_CHUNK_ELEMENTS = 2**26
#: fewest rows per chunk: each chunk adds its rows' share to the V x d weight gradient, a pass over all of it, which
#: thinner chunks make memory-bound (on the 2-core CPU at V = 131,072, D = 64: 32 rows reach 0.8-0.9 of torch.mm's
#: rate on the same three products, 96-128 rows 0.97-1.0, 256 or more rows 0.7)
MIN_CHUNK_ROWS = 128
#: the most bytes of one chunk's logits: above V = 524,288 (fp32) chunks get thinner than MIN_CHUNK_ROWS rather than
#: larger than this
MAX_CHUNK_BYTES = 2**28


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (half precision is upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def default_chunk_size(row_size: int, device: torch.device, min_rows: int = MIN_CHUNK_ROWS, itemsize: int = 4) -> int:
    """Tokens per chunk: about CHUNK_ELEMENTS logits of ``row_size`` per token, at least ``min_rows`` tokens, at most
    MAX_CHUNK_BYTES of ``itemsize``-byte logits (at least one token)."""
    elements = CHUNK_ELEMENTS.get(device.type, ACCELERATOR_CHUNK_ELEMENTS)
    return max(1, min(max(min_rows, elements // row_size), MAX_CHUNK_BYTES // (row_size * itemsize)))


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and both gradients in one chunked pass; backward only scales the saved gradients."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_size, need_x, need_w):
        dtype = compute_dtype(x, weight)
        n, v = x.shape[0], weight.shape[0]
        w = weight.to(dtype)  # (V, d), a copy only for half-precision weights
        valid = targets != IGNORE_INDEX  # (N,)
        n_valid = valid.sum()
        scale = valid.to(dtype) / n_valid  # (N,): 1/n_valid, 0 on ignored rows
        safe_targets = targets.masked_fill(~valid, 0)
        grad_x = torch.empty(n, w.shape[1], dtype=dtype, device=x.device) if need_x else None  # (N, d)
        grad_w = torch.zeros_like(w) if need_w else None  # (V, d)
        total = torch.zeros((), dtype=dtype, device=x.device)
        buf = torch.empty(min(chunk_size, n), v, dtype=dtype, device=x.device)  # (c, V), reused across chunks
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            xc, tc, sc = x[start:stop].to(dtype), safe_targets[start:stop], scale[start:stop]  # (c, d), (c,), (c,)
            z = buf[: stop - start]
            torch.mm(xc, w.t(), out=z)  # (c, V) logits
            target_logit = z.gather(1, tc[:, None]).squeeze(1)  # (c,)
            row_max = z.amax(dim=1)  # (c,)
            z.sub_(row_max[:, None]).exp_()  # (c, V) unnormalised softmax e
            row_sum = z.sum(dim=1)  # (c,)
            total += ((row_max + row_sum.log() - target_logit) * sc).sum()
            # gradient of the logits: sc * (e / row_sum - onehot); the onehot part is applied to the small factors
            a = (sc / row_sum)[:, None]  # (c, 1)
            if need_x:
                gx = grad_x[start:stop]
                torch.mm(z, w, out=gx)
                gx.mul_(a).sub_(sc[:, None] * w[tc])
            if need_w:
                grad_w.addmm_(z.t(), xc * a)
                grad_w.index_put_((tc,), xc * -sc[:, None], accumulate=True)
        ctx.save_for_backward(
            grad_x.to(x.dtype) if need_x else None, grad_w.to(weight.dtype) if need_w else None)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        # scaled in place (no second V x d copy): a second backward through the same graph raises
        grad_x, grad_w = (None if g is None else g.mul_(grad_output.to(g.dtype)) for g in ctx.saved_tensors)
        return grad_x, grad_w, None, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` (N,) under logits ``x`` (N, d) @ ``weight`` (V, d)ᵀ, computed in fp32 (or
    float64) chunks of ``chunk_size`` tokens; targets equal to -100 are ignored, as in ``F.cross_entropy``."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or targets.shape != x.shape[:1]:
        raise ValueError(f"expected x (N, d), weight (V, d), targets (N,); got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    itemsize = torch.finfo(compute_dtype(x, weight)).bits // 8
    chunk_size = chunk_size or default_chunk_size(weight.shape[0], x.device, itemsize=itemsize)
    grad = torch.is_grad_enabled()
    with torch.autocast(x.device.type, enabled=False):
        return _LinearCrossEntropy.apply(x, weight, targets, chunk_size, grad and x.requires_grad,
                                         grad and weight.requires_grad)


def checkpointed_nll(nll_sum: Callable[..., torch.Tensor], h: torch.Tensor, targets: torch.Tensor, row_size: int,
                     *args) -> torch.Tensor:
    """Mean negative log-likelihood of the non-ignored ``targets`` (N,) from ``nll_sum(h_chunk, targets_chunk, *args)``,
    a chunk's summed negative log-likelihood, over chunks of about CHUNK_ELEMENTS / ``row_size`` tokens of ``h``
    (N, D), each recomputed in the backward: never more than one chunk's ``row_size`` activations per token alive."""
    chunk = default_chunk_size(row_size, h.device, min_rows=1)
    total = 0
    for start in range(0, h.shape[0], chunk):
        hc, tc = h[start:start + chunk], targets[start:start + chunk]
        total = total + (checkpoint(nll_sum, hc, tc, *args, use_reentrant=False) if torch.is_grad_enabled()
                         else nll_sum(hc, tc, *args))
    return total / (targets != IGNORE_INDEX).sum()


def logit_gradient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """∂(mean cross-entropy)/∂logits (N, V) in closed form: (softmax - onehot) / n_valid, zero on ignored rows."""
    valid = targets != IGNORE_INDEX
    g = F.softmax(logits, dim=-1)  # (N, V)
    g[valid, targets[valid]] -= 1
    return g * (valid.to(g.dtype) / valid.sum())[:, None]
