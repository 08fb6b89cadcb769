"""Expressivity floors: the lowest loss a head can reach on a task's next-token distributions, given free vectors."""
from __future__ import annotations

import functools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import atomic
from .heads.base import HEADS, Head
from .rng import Rng
from .task import Targets, Task
from .threads import choose, using

#: bump when the estimator changes, so that cached floors of an older estimator are recomputed
FLOOR_VERSION = 1
#: the floor cache file written beside the run records (the scorer does not read it as a record)
CACHE_NAME = "floors.cache.json"
#: contexts of the smaller estimation sample of a sampled target set; the larger one has twice as many
CONTEXTS = 512
#: contexts asked for first, and fitted all at once when the task says they are all its distinct contexts
EXHAUSTIVE_CONTEXTS = 2048


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
    """Run a fit on the threads :mod:`spamlang.threads` chooses for its size: a full-batch step over C contexts
    costs about 3 x 2 C V D FLOPs (the logits H Wᵀ, forward and backward)."""
    @functools.wraps(fit_fn)
    def fit_with_threads(targets: Targets, head: Head, **options):
        with using(choose(6 * targets.probs.numel() * head.d_model)):
            return fit_fn(targets, head, **options)
    return fit_with_threads


@_thread_policy
def fit(targets: Targets, head: Head, *, fit_head: bool = True, init: torch.Tensor | None = None,
        window: int = 50, tolerance: float = 1e-3, max_steps: int = 3000, lr: float = 0.1,
        seed: int = 0) -> tuple[float, torch.Tensor]:
    """Fit one free vector per context (and the head's parameters when ``fit_head``; ``head`` changes in place) to
    minimise the weighted cross-entropy of the targets under the head. Returns the excess over the targets'
    entropy, i.e. the weighted mean KL(target || head) in nats, and the vectors (C, D).

    Full-batch Adam in float32 from ``init`` (default: standard normal vectors). Whenever a ``window`` of steps
    lowers the excess by less than ``tolerance`` x (1 + excess) nats, the step size is divided by 4; the third time,
    it stops.
    """
    probs, weights = targets.probs.float(), targets.weights.float()
    floor = entropy(targets)
    h = nn.Parameter(init.clone().float() if init is not None else
                     torch.randn(len(probs), head.d_model, generator=torch.Generator().manual_seed(seed)))
    frozen = [] if fit_head else [p for p in head.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([h] + (list(head.parameters()) if fit_head else []), lr=lr)
    previous, slow = math.inf, 0

    def cross_entropy() -> torch.Tensor:
        return -(weights * (probs * head.log_probs(h)).sum(dim=1)).sum()

    try:
        for step in range(max_steps):
            loss = cross_entropy()
            if step % window == 0 and step > 0:
                value = loss.item()
                if previous - value < tolerance * (1 + value - floor):
                    slow += 1
                    if slow == 3:
                        break
                    for group in optimizer.param_groups:
                        group["lr"] /= 4
                previous = value
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return max(cross_entropy().item() - floor, 0.0), h.detach()
    finally:
        for p in frozen:
            p.requires_grad_(True)


def nearest(queries: Targets, keys: Targets) -> torch.Tensor:
    """(C_q,) index of the key distribution closest to each query distribution (largest Bhattacharyya affinity)."""
    return (queries.probs.float().sqrt() @ keys.probs.float().sqrt().T).argmax(dim=1)


def analytic_floor(task: Task, vocab_size: int, seq_len: int, head_name: str, d_model: int,
                   rank: int | None) -> float | None:
    """The floor where theory gives it, else None. Both cases give the Bayes loss, for heads whose logits can be any
    matrix H Wᵀ of rank <= their declared ``forward_rank`` (free H and weights): the forward map decides the floor.

    * forward rank >= V - 1: logits H Wᵀ with W's rows the vertices of a simplex reach every logit vector up to a
      constant shift, which softmax ignores, so the head can output any distribution, the Bayes predictor included.
    * a deterministic task and forward rank >= 2: every target is one-hot on some y(c). Put W's rows on a circle,
      w_v = s (cos 2πv/V, sin 2πv/V), and h_c = w_{y(c)} / s. Logit v is s cos(2π(v - y)/V), largest at v = y by
      a margin of at least s (1 - cos 2π/V), so the loss is at most log(1 + (V - 1) exp(-s (1 - cos 2π/V))),
      which goes to 0, the Bayes loss, as s grows (the floor is an infimum; no finite head attains it).
    """
    forward_rank = HEADS.get(head_name).forward_rank(d_model, rank)
    if forward_rank is None:
        return None
    if forward_rank >= vocab_size - 1 or (task.deterministic and forward_rank >= 2):
        return task.bayes_loss(vocab_size, seq_len)
    return None


def _held_out(task: Task, vocab_size: int, seq_len: int, head: Head, n: int, seed: int) -> tuple[float, float]:
    """(excess on n sampled contexts the head is fitted to, excess on n fresh ones with the head fixed and the
    vectors re-fitted, starting from those of the nearest fitted contexts)."""
    sample = task.target_distributions(vocab_size, seq_len, n, Rng(seed, "floor", "fit", n))
    excess, vectors = fit(sample, head, seed=seed)
    fresh = task.target_distributions(vocab_size, seq_len, n, Rng(seed, "floor", "fresh", n))
    return excess, fit(fresh, head, fit_head=False, init=vectors[nearest(fresh, sample)])[0]


def _estimate(task: Task, vocab_size: int, seq_len: int, make_head, contexts: int, seed: int) -> dict:
    """Fit the head to all the task's target distributions, or to samples of them (see :func:`expressivity_floor`)."""
    bayes = task.bayes_loss(vocab_size, seq_len)
    targets = task.target_distributions(vocab_size, seq_len, max(contexts, min(vocab_size, EXHAUSTIVE_CONTEXTS)),
                                        Rng(seed, "floor", "all"))
    if targets is None:
        return {"floor": None, "method": "unavailable"}
    if targets.exhaustive:
        excess, _ = fit(targets, make_head(), seed=seed)
        return {"floor": bayes + excess, "method": "estimated", "contexts": len(targets.probs), "exhaustive": True}
    _, small = _held_out(task, vocab_size, seq_len, make_head(), contexts, seed)
    fitted, fresh = _held_out(task, vocab_size, seq_len, make_head(), 2 * contexts, seed)
    return {"floor": bayes + fresh, "method": "estimated", "contexts": 2 * contexts, "exhaustive": False,
            "floor_small": bayes + small, "floor_fit": bayes + fitted}


def expressivity_floor(task: Task, vocab_size: int, seq_len: int, head_name: str, d_model: int, rank: int | None,
                       head_params: Mapping[str, Any] | None = None, embed_dim: int | None = None, *,
                       contexts: int = CONTEXTS, seed: int = 0, cache: "FloorCache | None" = None) -> dict:
    """The lowest loss (nats per predictable position) a head of this kind can reach on the task, whatever the
    backbone: the head is given one free hidden vector per context.

    Returns ``floor``, ``method`` (``analytic``, ``estimated``, or ``unavailable`` when the task gives no target
    distributions) and ``seconds``; an estimate also returns ``contexts`` and ``exhaustive``. An estimate from
    exhaustive targets is the fitted loss. One from sampled targets is the loss on ``contexts`` fresh contexts, head
    fixed and vectors re-fitted (``floor``, from 2 x ``contexts``; ``floor_small``, from ``contexts``: their
    difference shows how stable the estimate is), with ``floor_fit`` the loss on the sample the head was fitted to.
    ``floor_fit`` tends to understate the floor (the fit memorises its sample), ``floor`` to overstate it (the head
    was fitted to other contexts). Estimates are the Bayes loss plus the fitted mean KL divergence, which removes
    the sample's noise in the targets' entropy.
    """
    key = json.dumps({"task": task.name, "task_version": task.version, "task_params": task.params,
                      "vocab_size": vocab_size, "seq_len": seq_len, "head": head_name, "d_model": d_model,
                      "rank": rank, "head_params": dict(head_params or {}), "embed_dim": embed_dim,
                      "contexts": contexts, "seed": seed, "estimator": FLOOR_VERSION}, sort_keys=True)
    if cache is not None and key in cache:
        return cache[key]
    start = time.perf_counter()
    analytic = analytic_floor(task, vocab_size, seq_len, head_name, d_model, rank)
    if analytic is not None:
        result = {"floor": analytic, "method": "analytic"}
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the heads' own initialisation, without touching the caller's generator
            result = _estimate(task, vocab_size, seq_len,
                               lambda: build_head(head_name, vocab_size, d_model, rank, head_params, embed_dim),
                               contexts, seed)
    result["seconds"] = time.perf_counter() - start
    if cache is not None:
        cache[key] = result
    return result


class FloorCache(dict):
    """Floors by key, in memory and, given a path, in a JSON file that every new entry is merged into atomically.

    An unreadable cache file is reported (warnings.warn) and its floors recomputed, never trusted.
    """

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        self.path = Path(path) if path is not None else None
        try:
            self.update(self._read())
        except ValueError as exc:
            warnings.warn(f"{self.path}: floor cache not readable ({exc}); floors will be recomputed", RuntimeWarning)

    def _read(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data

    def __setitem__(self, key: str, value: dict) -> None:
        super().__setitem__(key, value)
        if self.path is not None:
            try:
                merged = {**self._read(), key: value}  # keep what other processes wrote meanwhile
            except ValueError:
                merged = dict(self)
            atomic.write_text(self.path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
