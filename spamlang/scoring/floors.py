"""Expressivity floors: the lowest loss a head can reach on a task's next-token distributions, given free vectors."""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from spamlang.heads.base import HEADS, Head
from spamlang.heads.base import head_params as checked_params
from spamlang.rng import Rng
from spamlang.scoring.floorfit import RESTARTS, build_head, fit, nearest
from spamlang.system import atomic
from spamlang.task import Targets, Task, make_task

#: bump when the estimator changes, so that cached floors of an older estimator are recomputed
FLOOR_VERSION = 2


#: the floor cache file written beside the run records (the scorer does not read it as a record)
CACHE_NAME = "floors.cache.json"


#: contexts of the first fitting sample of a sampled target set, and of the held-out set every fitted head is scored on
CONTEXTS = 512


#: the largest fitting sample; the sample doubles from ``contexts`` until two sizes agree within AGREEMENT
MAX_CONTEXTS = 4096


#: nats within which the held-out floors of two successive sample sizes must agree for the sample to stop growing
AGREEMENT = 0.01


#: contexts asked for first, and fitted all at once when the task says they are all its distinct contexts
EXHAUSTIVE_CONTEXTS = 2048


#: target probabilities (contexts x V) up to which an exhaustive set is fitted RESTARTS times, above which once
SMALL_TARGETS = 512 * 512


#: significant digits a floor's logit scale is rounded to
SCALE_DIGITS = 3


#: the largest V whose floor at a finite logit scale is fitted (a fit of V x V logits, sampled and refitted up to
#: MAX_CONTEXTS contexts: ~30 s at V = 2,048 and ~10 min at V = 4,096 on one CPU core); above it, None
SCALE_FIT_MAX_V = 2048


#: the largest odd polygon tried by :func:`polygon_bound` (the best has 7 to 43 vertices at V <= 2048, scale <= 30)
POLYGON_VERTICES = 255


@dataclass(frozen=True)
class FloorSpec:
    """What a floor depends on: the task at V and T, and the head design (its name, width D, rank, parameters and
    input embedding width), whatever the backbone."""

    task: Task
    vocab_size: int
    seq_len: int
    head: str
    d_model: int
    rank: int | None = None
    head_params: Mapping[str, Any] | None = None
    embed_dim: int | None = None

    @classmethod
    def of(cls, run: Mapping[str, Any]) -> "FloorSpec":
        """The spec of a run (a row of a run frame, or a config as a dict)."""
        return cls(make_task(run["task"], run["task_params"]), run["vocab_size"], run["seq_len"], run["head"],
                   run["d_model"], run["head_rank"], run["head_params"], run["embed_dim"])

    @property
    def forward_rank(self) -> int | None:
        """The forward rank the head declares at V with its parameters (:meth:`Head.forward_rank_at`)."""
        cls = HEADS.get(self.head)
        return cls.forward_rank_at(self.vocab_size, self.d_model, self.rank, checked_params(cls, self.head_params))

    def build_head(self) -> Head:
        """A fresh head of this design."""
        return build_head(self.head, self.vocab_size, self.d_model, self.rank, self.head_params, self.embed_dim)

    def key(self, contexts: int, seed: int) -> dict:
        """The floor cache's key of this spec, estimated on ``contexts`` contexts from ``seed``."""
        return {"task": self.task.name, "task_version": self.task.version, "task_params": self.task.params,
                "vocab_size": self.vocab_size, "seq_len": self.seq_len, "head": self.head, "d_model": self.d_model,
                "rank": self.rank, "head_params": dict(self.head_params or {}), "embed_dim": self.embed_dim,
                "contexts": contexts, "seed": seed, "estimator": FLOOR_VERSION}


def analytic_floor(spec: FloorSpec) -> float | None:
    """The floor where theory gives it, else None. Both cases give the Bayes loss, for heads that reach (or approach)
    every logit matrix H Wᵀ of rank <= their declared forward rank (free H and weights, ``Head.forward_rank_at``):
    the forward map decides the floor.

    * forward rank >= V - 1: logits H Wᵀ with W's rows the vertices of a simplex reach every logit vector up to a
      constant shift, which softmax ignores, so the head can output any distribution, the Bayes predictor included.
    * a deterministic task and forward rank >= 2: every target is one-hot on some y(c). Put W's rows on a circle,
      w_v = s (cos 2πv/V, sin 2πv/V), and h_c = w_{y(c)} / s. Logit v is s cos(2π(v - y)/V), largest at v = y by
      a margin of at least s (1 - cos 2π/V), so the loss is at most log(1 + (V - 1) exp(-s (1 - cos 2π/V))),
      which goes to 0, the Bayes loss, as s grows (the floor is an infimum; no finite head attains it).
    """
    declared = spec.forward_rank
    if declared is None:
        return None
    if declared >= spec.vocab_size - 1 or (spec.task.deterministic and declared >= 2):
        return spec.task.bayes_loss(spec.vocab_size, spec.seq_len)
    return None


def circle_loss(vocab_size: int, scale: float) -> float:
    """Loss of the circle arrangement on one-hot targets at logit half-range ``scale``: W's rows at angles 2πv/V,
    h_c pointing at its target's row, so logit v is scale · cos(2π(v - y)/V) and every context's loss is
    -scale + log Σ_j exp(scale · cos(2πj/V)). Any head of forward rank >= 2 reaches it on a deterministic task, so it
    bounds the floor at that scale from above; it is not the optimum (rows gathered in clusters do a little better)."""
    z = scale * torch.cos(2 * math.pi * torch.arange(vocab_size, dtype=torch.float64) / vocab_size)
    return float(torch.logsumexp(z, 0)) - scale


def one_vs_rest_loss(vocab_size: int, scale: float) -> float:
    """log(1 + (V - 1) exp(-2 · scale)): the least loss on a one-hot target of logits with half-range <= scale (the
    target's logit exceeds every other by at most 2 · scale), reached by z = scale on the target and -scale elsewhere.
    The floor at that scale of a deterministic task for a head of forward rank >= V - 1, and a lower bound for any."""
    return math.log1p((vocab_size - 1) * math.exp(-2 * scale))


def _standard_error(values: torch.Tensor, weights: torch.Tensor) -> float:
    """Standard error of the weighted mean of per-context values (C,), weights summing to 1."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = (weights * values).sum()
    return float((n / (n - 1) * (weights ** 2 * (values - mean) ** 2).sum()).sqrt())


def polygon_losses(vocab_size: int, scale: float, clusters: int) -> torch.Tensor:
    """(clusters,) loss on a one-hot target in each cluster of the polygon arrangement at logit half-range ``scale``:
    W's rows gathered in ``clusters`` groups of V / clusters (sizes differing by at most one, symbol v in group
    v mod clusters) at the vertices of a regular polygon, h_c pointing at its group's vertex. Logit v is
    s · cos(θ_v - θ_y); an odd polygon has no vertex opposite the target's, so the half-range s (1 + cos(π/m)) / 2
    allows s = 2 · scale / (1 + cos(π/m)) > scale. Any head of forward rank >= 2 reaches it; it beats the circle
    (m = V, even) at every scale by up to 0.02 nats."""
    m = clusters
    s = scale if m % 2 == 0 else 2 * scale / (1 + math.cos(math.pi / m))
    sizes = torch.full((m,), vocab_size // m, dtype=torch.float64)
    sizes[: vocab_size % m] += 1
    k = torch.arange(m, dtype=torch.float64)
    z = s * torch.cos(2 * math.pi * (k[None, :] - k[:, None]) / m) + sizes.log()  # (m target group, m group)
    return torch.logsumexp(z, dim=1) - s


def polygon_bound(targets: Targets, scale: float) -> float:
    """The lowest weighted loss on one-hot ``targets`` of the polygon arrangements (:func:`polygon_losses`) with an
    odd number of vertices up to POLYGON_VERTICES or V, or the circle: an upper bound on the floor at ``scale`` of
    any head of forward rank >= 2."""
    vocab_size = targets.probs.shape[1]
    symbols = targets.probs.argmax(dim=1)  # (C,)
    best = circle_loss(vocab_size, scale)
    for m in range(3, min(vocab_size, POLYGON_VERTICES) + 1, 2):
        best = min(best, float((targets.weights * polygon_losses(vocab_size, scale, m)[symbols % m]).sum()))
    return best


def _exhaustive(targets: Targets, bayes: float, make_head, seed: int, scale: float | None) -> dict:
    """Fit every distinct context: RESTARTS times when there are at most SMALL_TARGETS target probabilities (the floor
    is the lowest fit, their spread part of its uncertainty), else once; ``floor_se`` is at least what the best fit
    was still gaining (:attr:`Fit.unsettled`)."""
    restarts = RESTARTS if targets.probs.numel() <= SMALL_TARGETS else 1
    fits = [fit(targets, make_head(), scale=scale, seed=seed + i) for i in range(restarts)]
    best = min(fits, key=lambda f: f.excess)
    spread = max(f.excess for f in fits) - best.excess
    return {"floor": bayes + best.excess, "floor_se": max(spread, best.unsettled), "method": "estimated",
            "contexts": len(targets.probs), "exhaustive": True, "restarts": restarts}


def _sampled(spec: FloorSpec, bayes: float, contexts: int, seed: int, scale: float | None) -> dict:
    """Fit a head to a sample of ``contexts`` contexts and score it on 2 x ``contexts`` held-out ones (head fixed,
    vectors re-fitted from those of the nearest fitted contexts); double the sample until the held-out floors of two
    successive sizes agree within AGREEMENT, or it reaches MAX_CONTEXTS."""
    task, vocab_size, seq_len = spec.task, spec.vocab_size, spec.seq_len
    held = task.target_distributions(vocab_size, seq_len, 2 * contexts, Rng(seed, "floor", "held-out"))
    previous, n = None, contexts
    while True:
        sample = task.target_distributions(vocab_size, seq_len, n, Rng(seed, "floor", "fit", n))
        head = spec.build_head()
        fitted = fit(sample, head, scale=scale, seed=seed)
        scored = fit(held, head, fit_head=False, init=fitted.vectors[nearest(held, sample)], scale=scale,
                     adam_steps=0)
        converged = previous is not None and abs(previous.excess - scored.excess) <= AGREEMENT
        if converged or 2 * n > max(MAX_CONTEXTS, contexts):
            break
        previous, n = scored, 2 * n
    drift = abs(previous.excess - scored.excess) if previous is not None else 0.0
    unsettled = max(fitted.unsettled, scored.unsettled)
    return {"floor": bayes + scored.excess,
            "floor_se": math.hypot(_standard_error(scored.kl, held.weights), drift, unsettled),
            "method": "estimated", "contexts": n, "held_out": len(held.probs), "exhaustive": False,
            "converged": converged, "floor_fit": bayes + fitted.excess,
            "floor_small": bayes + previous.excess if previous is not None else None}


def _estimate(spec: FloorSpec, contexts: int, seed: int, scale: float | None = None) -> dict:
    """Fit the head to all the task's target distributions, or to samples of them (see :func:`expressivity_floor`).
    At a scale, on a deterministic task and at forward rank >= 2, a fit above :func:`polygon_bound` gives way to the
    bound, with the difference as uncertainty."""
    task, vocab_size, seq_len = spec.task, spec.vocab_size, spec.seq_len
    bayes = task.bayes_loss(vocab_size, seq_len)
    targets = task.target_distributions(vocab_size, seq_len, max(contexts, min(vocab_size, EXHAUSTIVE_CONTEXTS)),
                                        Rng(seed, "floor", "all"))
    if targets is None:
        return {"floor": None, "floor_se": None, "method": "unavailable"}
    if targets.exhaustive:
        out = _exhaustive(targets, bayes, spec.build_head, seed, scale)
    else:
        out = _sampled(spec, bayes, contexts, seed, scale)
    declared = spec.forward_rank
    if scale is not None and task.deterministic and declared is not None and declared >= 2:
        bound = bayes + polygon_bound(targets, scale)
        out["bound"] = bound
        if bound < out["floor"]:
            out.update(floor=bound, floor_se=max(out["floor_se"], out["floor"] - bound))
    return out


def _fitted(spec: FloorSpec, contexts: int, seed: int, scale: float | None) -> dict:
    """:func:`_estimate` for fresh heads of the spec's design, leaving the caller's generator alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the heads' own initialisation
        return _estimate(spec, contexts, seed, scale)


def _cached(cache: "FloorCache | None", key: dict, compute) -> dict:
    """``compute()`` plus its ``seconds``, looked up in and stored into the cache under ``key``."""
    text = json.dumps(key, sort_keys=True)
    if cache is not None and text in cache:
        return cache[text]
    start = time.perf_counter()
    result = compute()
    result["seconds"] = time.perf_counter() - start
    if cache is not None:
        cache[text] = result
    return result


def expressivity_floor(spec: FloorSpec, *, contexts: int = CONTEXTS, seed: int = 0,
                       cache: "FloorCache | None" = None) -> dict:
    """The lowest loss (nats per predictable position) a head of this kind can reach on the task, whatever the
    backbone: the head is given one free hidden vector per context.

    Returns ``floor``, ``floor_se`` (its uncertainty; 0 when analytic), ``method`` (``analytic``, ``estimated``, or
    ``unavailable`` when the task gives no target distributions) and ``seconds``; an estimate also returns
    ``contexts`` and ``exhaustive``. Estimates are the Bayes loss plus a fitted mean KL divergence (which removes the
    sample's noise in the targets' entropy).

    * Exhaustive targets: a fit of every distinct context (the lowest of RESTARTS fits when the set is small);
      ``floor_se`` is the larger of their spread and what the optimiser was still gaining (``restarts``).
    * Sampled targets: a head fitted to ``contexts`` sampled contexts is scored on ``held_out`` = 2 x ``contexts``
      fresh ones (head fixed, vectors re-fitted: a convex problem); the sample doubles until two sizes agree within
      AGREEMENT (``converged``) or reaches MAX_CONTEXTS. ``floor`` is the held-out loss of the last head, a real
      head's population loss: above the floor by the head's overfitting to its sample, which shrinks as the sample
      grows. ``floor_se`` combines the held-out standard error, the change from the previous size
      (``floor_small``), which bounds the overfitting left if it falls off as 1/n, and what the optimiser was still
      gaining. ``floor_fit``, the loss on the
      fitted sample, understates the floor (the fit memorises its sample).
    """
    def compute() -> dict:
        analytic = analytic_floor(spec)
        if analytic is not None:
            return {"floor": analytic, "floor_se": 0.0, "method": "analytic"}
        return _fitted(spec, contexts, seed, None)
    return _cached(cache, spec.key(contexts, seed), compute)


def floor_at_scale(spec: FloorSpec, scale: float = math.inf, *, contexts: int = CONTEXTS, seed: int = 0,
                   cache: "FloorCache | None" = None) -> dict:
    """The lowest loss a head of this kind reaches on the task with every context's logit half-range
    (max_v z - min_v z) / 2 at most ``scale``: the floor at the logit scale a run reached (its ``logit_scale``).

    The free-vector fit of :func:`expressivity_floor`, each context's logits shrunk to the bound (:func:`tempered`);
    the same result keys, estimator and uncertainty. Analytic for a deterministic task at forward rank >= V - 1
    (:func:`one_vs_rest_loss`, ``floor_se`` 0); ``scale`` = inf gives the unconstrained floor. On a deterministic
    task at forward rank >= 2 the floor lies between :func:`one_vs_rest_loss` and :func:`polygon_bound` (``bound``),
    which replaces a fit that lands above it. ``scale`` is rounded to SCALE_DIGITS significant digits (``scale`` in
    the result), so that runs at nearly the same scale share a cached floor. A floor that would need a fit above
    V = SCALE_FIT_MAX_V is not computed (``floor`` None).
    """
    if not scale >= 0:
        raise ValueError(f"scale must be a non-negative number, got {scale}")
    scale = float(f"{scale:.{SCALE_DIGITS}g}")
    if math.isinf(scale):
        return expressivity_floor(spec, contexts=contexts, seed=seed, cache=cache)
    declared, vocab_size = spec.forward_rank, spec.vocab_size
    analytic = spec.task.deterministic and declared is not None and declared >= vocab_size - 1
    if not analytic and vocab_size > SCALE_FIT_MAX_V:
        return {"floor": None, "floor_se": None, "method": f"not fitted above V = {SCALE_FIT_MAX_V}", "scale": scale}

    def compute() -> dict:
        if analytic:
            return {"floor": one_vs_rest_loss(vocab_size, scale), "floor_se": 0.0, "method": "analytic",
                    "scale": scale}
        return {**_fitted(spec, contexts, seed, scale), "scale": scale}
    return _cached(cache, {**spec.key(contexts, seed), "scale": scale}, compute)


def user_cache_dir() -> Path:
    """Where SpamLang keeps what it can recompute: ``$SPAMLANG_CACHE_DIR``, else ``$XDG_CACHE_HOME/spamlang``, else
    ``~/.cache/spamlang``."""
    import os
    if os.environ.get("SPAMLANG_CACHE_DIR"):
        return Path(os.environ["SPAMLANG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spamlang"


def shipped_caches(folders) -> list[Path]:
    """The floor caches published with results folders: ``CACHE_NAME`` in each folder and in its parent (a suite's
    ``results/NAME/floors.cache.json`` beside ``results/NAME/runs``), those that exist."""
    found = []
    for folder in map(Path, folders):
        for candidate in (folder / CACHE_NAME, folder.parent / CACHE_NAME):
            if candidate.is_file() and candidate not in found:
                found.append(candidate)
    return found


class FloorCache(dict):
    """Floors by key, in memory and, given a path, in a JSON file that every new entry is merged into atomically;
    ``sources`` are further cache files read (never written), such as those shipped with published results; ``copy_to``
    is a further file that new entries are merged into too (the user's cache, so that the next folder finds them).
    Where files disagree on a floor, the folder's own file wins, then the shipped ones: a published board is rebuilt
    from the floors shipped with it, whatever the user's cache holds (floors refitted on another machine can differ
    in their last digits).

    An unreadable cache file is reported (warnings.warn) and its floors recomputed, never trusted; a cache file that
    cannot be written is reported once and the floors kept in memory.
    """

    def __init__(self, path: str | Path | None = None, sources=(), copy_to: str | Path | None = None):
        super().__init__()
        files = [Path(p) for p in (copy_to, *sources, path) if p is not None]
        own: dict = {}  # what the folder's own file (``path``) holds
        for source in list(dict.fromkeys(files[::-1]))[::-1]:  # a later file wins: the folder's own file last
            try:
                entries = _read_cache(source)
            except ValueError as exc:
                warnings.warn(f"{source}: floor cache not readable ({exc}); floors will be recomputed",
                              RuntimeWarning)
                continue
            super().update(entries)
            if path is not None and source == Path(path):
                own = entries
        self.paths = [Path(p) for p in dict.fromkeys((path, copy_to)) if p is not None]
        self._kept = set(own) if path is not None and copy_to is not None else set(self)

    def __getitem__(self, key: str) -> dict:
        """A floor; with ``copy_to``, one read from another file is kept in this cache's files too, so that a
        folder's cache holds every floor its board used."""
        value = super().__getitem__(key)
        if key not in self._kept:
            self[key] = value
        return value

    @classmethod
    def for_user(cls, folders=(), path: str | Path | None = None) -> "FloorCache":
        """The cache of a command that must not write into its input ``folders``: the caches shipped with them are
        read, new floors go to ``path`` (default: ``floors.cache.json`` in :func:`user_cache_dir`)."""
        return cls(path if path is not None else user_cache_dir() / CACHE_NAME, shipped_caches(folders))

    @classmethod
    def for_board(cls, out: str | Path, folders=()) -> "FloorCache":
        """The cache of a leaderboard written to ``out``: ``out/floors.cache.json`` (shipped with published results),
        read with the caches shipped with the record ``folders`` and the user's cache, new floors written to both."""
        return cls(Path(out) / CACHE_NAME, shipped_caches(folders), copy_to=user_cache_dir() / CACHE_NAME)

    def __setitem__(self, key: str, value: dict) -> None:
        super().__setitem__(key, value)
        self._kept.add(key)
        for path in list(self.paths):
            try:
                merged = {**_read_cache(path), key: value}  # keep what other processes wrote meanwhile
            except ValueError:
                merged = dict(self)
            try:
                atomic.write_text(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
            except OSError as exc:
                warnings.warn(f"{path}: floor cache not writable ({exc.strerror or exc}); floors are kept in "
                              f"memory only", RuntimeWarning)
                self.paths.remove(path)


def _read_cache(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data
