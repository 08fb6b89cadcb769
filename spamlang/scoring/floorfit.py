"""The free-vector fit behind the expressivity floors: a head of a given design and free per-context vectors fitted
to target next-token distributions (Adam, then L-BFGS), optionally at a bounded logit scale."""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from spamlang.heads.base import HEADS, Head
from spamlang.system.threads import choose, using
from spamlang.task import Targets

#: full-batch Adam steps of a fit from a random start, before L-BFGS
ADAM_STEPS = 300


#: L-BFGS iterations between two checks of a fit's progress
CHECK_EVERY = 10


#: nats: a fit stops when a check gains less (a floor matters to 0.01 nats)
TOLERANCE = 1e-4


#: L-BFGS iterations of a fit at most
MAX_ITER = 500


#: independent fits (seeds) of a small exhaustive target set; the floor is the lowest, their spread its uncertainty
RESTARTS = 2


def build_head(head_name: str, vocab_size: int, d_model: int, rank: int | None,
               head_params: Mapping[str, Any] | None = None, embed_dim: int | None = None) -> Head:
    """A fresh instance of a registered head, with a fresh input embedding (V, embed_dim or d_model) of its own."""
    return HEADS.get(head_name).build(vocab_size, d_model, rank, nn.Embedding(vocab_size, embed_dim or d_model),
                                      head_params)


def entropy(targets: Targets) -> float:
    """Weighted mean entropy of the target distributions, nats."""
    p = targets.probs
    return float(-(targets.weights * torch.xlogy(p, p).sum(dim=1)).sum())


def _thread_policy(fit_fn):
    """Run a fit on the threads :mod:`spamlang.system.threads` chooses for its size: a full-batch step over C contexts
    costs about 3 x 2 C V D FLOPs (the logits H Wᵀ, forward and backward)."""
    @functools.wraps(fit_fn)
    def fit_with_threads(targets: Targets, head: Head, **options):
        with using(choose(6 * targets.probs.numel() * head.d_model)):
            return fit_fn(targets, head, **options)
    return fit_with_threads


def half_range(log_probs: torch.Tensor) -> torch.Tensor:
    """(C,) logit half-range (max_v z - min_v z) / 2 of each row of log-probabilities (C, V): a softmax's logits
    and its log-probabilities differ by a constant per row, so this is the head's logit half-range."""
    return (log_probs.max(dim=1).values - log_probs.min(dim=1).values) / 2


def tempered(log_probs: torch.Tensor, scale: float) -> torch.Tensor:
    """Log-probabilities (C, V) with each row's logits multiplied by min(1, scale / half-range), so that every
    half-range is at most ``scale``. For a head whose logits are linear in h (linear, tied, lowrank, gradproj) that is
    the head's output at h shrunk by the same factor: an exact, differentiable way to keep every context feasible."""
    factor = torch.clamp(scale / half_range(log_probs).clamp_min(torch.finfo(log_probs.dtype).tiny), max=1.0)
    return torch.log_softmax(log_probs * factor[:, None], dim=1)


class _TemperedExcess(torch.autograd.Function):
    """Σ_c w_c (H(p_c, softmax(f_c · lp_c)) - H_c) for log-probabilities lp (C, V), targets p (C, V), weights w (C,),
    entropies H (C,) and f_c = min(1, scale / half-range(lp_c)): the weighted mean KL of :func:`tempered` with one
    pass over (C, V) in the backward instead of autograd's six (the fit's cost at large V).

    With q = softmax(f · lp) and rows of p summing to 1, the loss of row c is lse(f lp_c) - f p_c·lp_c - H_c, so its
    gradient is w_c (f_c (q_c - p_c) + (q_c·lp_c - p_c·lp_c) ∂f_c/∂lp_c), where f = scale / half-range depends only
    on the row's largest and smallest entries (∂f/∂max = -f / (2 · half-range) = -∂f/∂min) when the bound is active.
    """

    @staticmethod
    def forward(ctx, log_probs, probs, weights, entropies, scale):
        top, top_at = log_probs.max(dim=1)
        bottom, bottom_at = log_probs.min(dim=1)
        half = ((top - bottom) / 2).clamp_min(torch.finfo(log_probs.dtype).tiny)  # (C,)
        factor = torch.clamp(scale / half, max=1.0)
        q = log_probs * factor[:, None]
        normaliser = torch.logsumexp(q, dim=1)  # (C,)
        q = q.sub_(normaliser[:, None]).exp_()  # softmax(f · lp), (C, V)
        target = (probs * log_probs).sum(dim=1)  # p_c · lp_c
        ctx.save_for_backward(log_probs, probs, weights, q, factor, half, target, top_at, bottom_at)
        return (weights * (normaliser - factor * target - entropies)).sum()

    @staticmethod
    def backward(ctx, grad):
        log_probs, probs, weights, q, factor, half, target, top_at, bottom_at = ctx.saved_tensors
        out = (q - probs).mul_((grad * weights * factor)[:, None])  # (C, V)
        active = factor < 1
        through_factor = grad * weights * ((q * log_probs).sum(dim=1) - target) * factor / (2 * half) * active
        rows = torch.arange(len(out))
        out[rows, top_at] -= through_factor
        out[rows, bottom_at] += through_factor
        return out, None, None, None, None


class Fit(NamedTuple):
    """A fitted set of free vectors: ``excess`` the weighted mean KL(target || head) in nats (evaluated in float64),
    ``kl`` (C,) each context's KL, ``vectors`` (C, D) the fitted hidden vectors, ``unsettled`` what as many steps again
    would gain at the rate of the last check (nats; see :func:`fit`)."""

    excess: float
    kl: torch.Tensor
    vectors: torch.Tensor
    unsettled: float


def _still_to_gain(gain: float, iterations: int) -> float:
    """What a fit would gain from as many iterations again as it has run (``iterations``), at the rate of its last
    check (``gain`` nats in CHECK_EVERY iterations): the optimiser's share of a floor's uncertainty."""
    return max(gain, 0.0) * iterations / CHECK_EVERY


@_thread_policy
def fit(targets: Targets, head: Head, *, fit_head: bool = True, init: torch.Tensor | None = None,
        scale: float | None = None, adam_steps: int = ADAM_STEPS, lr: float = 0.1, max_iter: int = MAX_ITER,
        tolerance: float = TOLERANCE, seed: int = 0) -> Fit:
    """Fit one free vector per context (and the head's parameters when ``fit_head``; ``head`` changes in place) to
    minimise the weighted cross-entropy of the targets under the head, every context's logit half-range bounded by
    ``scale`` when given (see :func:`tempered`).

    Optimised in the head's dtype (float32 for a fresh head: half the memory traffic of float64, ample for a loss
    that matters to 0.01 nats) from ``init`` (default: standard normal): ``adam_steps`` of full-batch Adam, the step
    decayed from ``lr`` to 0 on a cosine (which settles far lower in as many steps as a constant one), then L-BFGS
    with a strong-Wolfe line search, checked every CHECK_EVERY iterations, until a check gains less than
    ``tolerance`` nats or ``max_iter`` iterations. The loss and ``kl`` are then evaluated in float64. With the head
    fixed the problem is convex in each vector.
    """
    dtype = next(head.parameters()).dtype
    probs, weights = targets.probs.to(dtype), targets.weights.to(dtype)
    h = nn.Parameter(init.clone().to(dtype) if init is not None else
                     torch.randn(len(probs), head.d_model, generator=torch.Generator().manual_seed(seed)).to(dtype))
    frozen = [] if fit_head else [p for p in head.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = [h] + ([p for p in head.parameters() if p.requires_grad] if fit_head else [])

    entropies = -torch.xlogy(targets.probs, targets.probs).sum(dim=1).to(dtype)  # (C,)

    def excess() -> torch.Tensor:
        """The weighted mean KL: each row's entropy taken off before the sum keeps float32's precision on the KL."""
        out = head.log_probs(h)
        if scale is not None:
            return _TemperedExcess.apply(out, probs, weights, entropies, scale)
        return (weights * (-(probs * out).sum(dim=1) - entropies)).sum()

    try:
        adam = torch.optim.Adam(params, lr=lr)
        for step in range(adam_steps):
            adam.param_groups[0]["lr"] = lr * (1 + math.cos(math.pi * step / adam_steps)) / 2
            adam.zero_grad(set_to_none=True)
            excess().backward()
            adam.step()
        lbfgs = torch.optim.LBFGS(params, lr=1, max_iter=CHECK_EVERY, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=0.0, tolerance_change=0.0)  # the checks decide when to stop

        def closure() -> torch.Tensor:
            lbfgs.zero_grad(set_to_none=True)
            loss = excess()
            loss.backward()
            return loss
        with torch.no_grad():
            previous = float(excess())
        for check in range(1, max(max_iter // CHECK_EVERY, 1) + 1):
            lbfgs.step(closure)
            with torch.no_grad():
                loss = float(excess())
            gain, previous = previous - loss, loss
            if gain < tolerance:
                break
        with torch.no_grad():  # the reported loss in float64
            wide, h64 = copy.deepcopy(head).double(), h.detach().double()
            out = wide.log_probs(h64)
            out = out if scale is None else tempered(out, scale)
            kl = (torch.xlogy(targets.probs, targets.probs) - targets.probs * out).sum(dim=1).clamp_min(0.0)  # (C,)
            return Fit(float((targets.weights * kl).sum()), kl, h.detach(),
                       _still_to_gain(gain, adam_steps + check * CHECK_EVERY))
    finally:
        for p in frozen:
            p.requires_grad_(True)


def nearest(queries: Targets, keys: Targets) -> torch.Tensor:
    """(C_q,) index of the key distribution closest to each query distribution (largest Bhattacharyya affinity)."""
    return (queries.probs.float().sqrt() @ keys.probs.float().sqrt().T).argmax(dim=1)
