"""Scaling fits of the V/D cliff and the gradient-only control.

For each head design and width D of a task with a Bayes loss: steps-to-learn against V/D (in examples per symbol and
in tokens) as a power law log(steps) = a + b·log(V/D), fitted by maximum likelihood with the runs not learned within
their budget right-censored at it (a Tobit model), with a bootstrap over seeds; the critical V/D (the largest ratio
learned within the budget) with its bracket; and, for each (V, D, r), whether ``gradproj:r`` (full-rank forward,
rank-r gradient) behaves like ``lowrank:r`` or like ``linear``. The model and the bootstrap: docs/science.md,
"Scaling fits".

Pure functions of a run frame (:func:`spamlang.scoring.frames.load_runs`); each configuration's runs are those at the
learning rate (and other swept values) at which it learns fastest (:func:`spamlang.scoring.times.fastest`), where the
scorer reads its time measures.
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Any, Mapping

import numpy as np
import pandas as pd

from spamlang.errors import SpamLangError
from spamlang.heads.base import HEAD_FIELDS, head_label
from spamlang.record.learned import LEARNED_MARGIN
from spamlang.scoring.configurations import configurations as grouped
from spamlang.scoring.configurations import grouping
from spamlang.scoring.frames import config_key, python_values
from spamlang.scoring.stats import holm, is_finite, paired_t
from spamlang.scoring.survival import paired_censored_test
from spamlang.scoring.times import cap_budget, fastest, time_to_learn

#: settings that may change along a V grid of one (head, D) group: V itself, the budget that follows it, the batch a
#: suite may scale with V (``cliff``: V / 16, so that the steps stay fixed) and the evaluation cadence and warm-up a
#: suite may scale with the budget
AXIS_FIELDS = ("vocab_size", "steps", "examples_per_symbol", "batch_size", "eval_every", "warmup")
#: the units steps-to-learn is fitted in: training examples per symbol, training tokens
UNITS = ("examples", "tokens")
UNIT_LABELS = {"examples": "examples per symbol", "tokens": "tokens"}
#: bootstrap resamples and the seed of their generator (recorded in every fit table)
RESAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
#: family-wise level of the gradproj control's Holm-corrected paired tests
ALPHA = 0.05


# -- the censored power law -----------------------------------------------------------------------------------------
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_ndtr(u: np.ndarray) -> np.ndarray:
    """log Φ(u) of the standard normal, elementwise and without underflow: log erfc in closed form (the Chebyshev
    fit of Numerical Recipes' erfcc, relative error below 1.2e-7 for every argument)."""
    u = np.asarray(u, dtype=float)
    z = np.abs(u) / math.sqrt(2)
    t = 1 / (1 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in reversed(_ERFC):
        poly = c + t * poly
    log_erfc = np.log(t) - z * z + poly  # log erfc(z), z >= 0
    return np.where(u < 0, log_erfc - math.log(2), np.log1p(-0.5 * np.exp(log_erfc)))


def _loglik(features: np.ndarray, censored: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Tobit log-likelihood of each batch element (constants dropped), in Olsen's parameters p = (a, b, 1)/σ."""
    u = np.einsum("bnk,bk->bn", features, p)
    theta = p[:, 2:3]
    with np.errstate(invalid="ignore", divide="ignore"):
        point = np.where(censored, log_ndtr(u), np.log(theta) - 0.5 * u * u)
    return point.sum(axis=1)


def tobit(x: np.ndarray, y: np.ndarray, censored: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Maximum-likelihood line y = a + b x + σ ε (ε standard normal) where ``censored`` marks y as a lower bound
    (the true value lies above it); each row of the (B, n) arrays is one data set. Returns (B, 3): a, b, σ (NaN where
    the fit did not give finite values).

    Newton's method with step halving in Olsen's parameters (a/σ, b/σ, 1/σ), where the log-likelihood is concave, from
    the least-squares line through every point. Needs uncensored points at two x or more for a finite slope.
    """
    x, y, censored = np.atleast_2d(x).astype(float), np.atleast_2d(y).astype(float), np.atleast_2d(censored)
    features = np.stack([np.ones_like(x), x, -y], axis=-1)  # (B, n, 3): u = a/σ + b/σ x - y/σ
    uncensored = (~censored).sum(axis=1)
    mx, my = x.mean(axis=1), y.mean(axis=1)
    sxx = ((x - mx[:, None]) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 0, ((x - mx[:, None]) * (y - my[:, None])).sum(axis=1) / sxx, 0.0)
    intercept = my - slope * mx
    spread = np.maximum(np.sqrt(((y - intercept[:, None] - slope[:, None] * x) ** 2).mean(axis=1)), 0.1)
    p = np.stack([intercept, slope, np.ones_like(spread)], axis=1) / spread[:, None]
    ll = _loglik(features, censored, p)
    for _ in range(iterations):
        u = np.einsum("bnk,bk->bn", features, p)
        with np.errstate(over="ignore", invalid="ignore"):
            mills = np.exp(-0.5 * u * u - _LOG_SQRT_2PI - log_ndtr(u))  # φ(u) / Φ(u)
        grad = np.einsum("bn,bnk->bk", np.where(censored, mills, -u), features)
        grad[:, 2] += uncensored / p[:, 2]
        curvature = np.where(censored, mills * (u + mills), 1.0)
        hessian = -np.einsum("bn,bnk,bnl->bkl", curvature, features, features)
        hessian[:, 2, 2] -= uncensored / p[:, 2] ** 2
        direction = -_solve(hessian, grad)  # Newton: -H⁻¹ g
        decrement = (grad * direction).sum(axis=1)  # -gᵀH⁻¹g >= 0 (H is negative definite)
        step, done = np.ones(len(p)), ~np.isfinite(decrement) | (decrement < 1e-12)
        for _ in range(40):  # halve each element's step until its likelihood does not fall
            trial = p + step[:, None] * direction
            new = _loglik(features, censored, trial)
            accept = done | ((trial[:, 2] > 0) & np.isfinite(new) & (new >= ll - 1e-12))
            if accept.all():
                break
            step = np.where(accept, step, step / 2)
        moving = ~done & accept
        p = np.where(moving[:, None], trial, p)
        ll = np.where(moving, new, ll)
        if done.all():
            break
    out = np.stack([p[:, 0] / p[:, 2], p[:, 1] / p[:, 2], 1 / p[:, 2]], axis=1)
    return np.where(np.isfinite(out).all(axis=1, keepdims=True) & (p[:, 2:3] > 0), out, np.nan)


def _solve(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """H⁻¹ g for each (B, k, k) matrix and (B, k) vector: an LU solve, or the pseudo-inverse where a matrix of the
    batch is singular (or not finite)."""
    try:
        with np.errstate(all="ignore"):
            return np.linalg.solve(matrices, vectors[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("bkl,bl->bk", np.linalg.pinv(matrices), vectors)


def bootstrap_indices(strata: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) indices into ``strata`` (one label per observation): each resample draws, within every
    stratum, as many observations as it has, with replacement."""
    columns = []
    for label in dict.fromkeys(strata.tolist()):
        members = np.flatnonzero(strata == label)
        columns.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(columns, axis=1)


def lr_choice_indices(ratio: np.ndarray, lr: np.ndarray, seed_of: np.ndarray, steps: np.ndarray,
                      censored: np.ndarray, chosen: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) indices into observations at every lr tried (one per ratio, lr and seed; ``chosen`` marks the
    n at the lr the data choose): each resample draws, within every ratio, as many seeds as the chosen lr has, with
    replacement, and takes them at the lr that learns fastest on the drawn seeds — the smallest lower median of their
    times, a censored time counting as infinite (the Kaplan–Meier median of a common cap) — the chosen lr where
    none is reached or a drawn seed lacks a run at the faster lr. So the interval carries the lr choice's
    uncertainty as well as the seeds'."""
    time = np.where(censored, np.inf, steps)
    columns = []
    for r in dict.fromkeys(ratio[chosen].tolist()):
        picked = np.flatnonzero(chosen & (ratio == r))
        seeds = seed_of[picked]
        draws = rng.integers(0, len(seeds), size=(resamples, len(seeds)))
        mid = (len(seeds) - 1) // 2
        best = picked[draws]
        best_median = np.sort(time[best], axis=1)[:, mid]
        for value in dict.fromkeys(lr[(ratio == r) & ~chosen].tolist()):
            rows = {seed_of[i]: i for i in np.flatnonzero((ratio == r) & (lr == value))}
            if not all(s in rows for s in seeds):
                continue
            at = np.array([rows[s] for s in seeds])[draws]
            median = np.sort(time[at], axis=1)[:, mid]
            faster = median < best_median
            best, best_median = np.where(faster[:, None], at, best), np.where(faster, median, best_median)
        columns.append(best)
    return np.concatenate(columns, axis=1)


def power_law(ratio: np.ndarray, steps: np.ndarray, censored: np.ndarray, resamples: int = RESAMPLES,
              seed: int = BOOTSTRAP_SEED, level: float = LEVEL, draws: tuple | None = None) -> dict[str, Any]:
    """The censored fit of log(steps) = a + b·log(ratio) to one group's observations (one per seed and ratio; a
    censored one holds the budget), and its bootstrap over seeds within each ratio: ``a``, ``b``, ``sigma``,
    ``b_low``/``b_high`` (percentile ``level`` interval), ``boot`` ((k, 2) array of the resamples' a and b) and
    ``boot_valid`` (resamples with a fit: uncensored points at two ratios or more). NaN where the data have
    uncensored points at fewer than two ratios. ``draws``: (ratio, steps, censored, index) to bootstrap from instead
    of the observations themselves — observations at every lr tried and the resamples' indices into them
    (:func:`lr_choice_indices`)."""
    x, y, censored = np.log(ratio), np.log(steps), np.asarray(censored, dtype=bool)
    nan = {"a": math.nan, "b": math.nan, "sigma": math.nan, "b_low": math.nan, "b_high": math.nan,
           "boot": np.empty((0, 2)), "boot_valid": 0}
    if len(set(x[~censored].tolist())) < 2:
        return nan
    a, b, sigma = tobit(x, y, censored)[0]
    if draws is None:
        index = bootstrap_indices(x, resamples, np.random.default_rng(seed))  # strata: the ratios
        xs, ys, cs = x[index], y[index], censored[index]
    else:
        ratio_all, steps_all, censored_all, index = draws
        xs, ys = np.log(np.asarray(ratio_all, float))[index], np.log(np.asarray(steps_all, float))[index]
        cs = np.asarray(censored_all, dtype=bool)[index]
    learned_at = np.where(cs, np.nan, xs)
    usable = np.array([len(set(row[np.isfinite(row)].tolist())) >= 2 for row in learned_at])
    fits = tobit(xs[usable], ys[usable], cs[usable]) if usable.any() else np.empty((0, 3))
    boot = fits[np.isfinite(fits).all(axis=1)][:, :2]
    tail = (1 - level) / 2
    low, high = (np.quantile(boot[:, 1], [tail, 1 - tail]) if len(boot) >= 2 else (math.nan, math.nan))
    return {"a": float(a), "b": float(b), "sigma": float(sigma), "b_low": float(low), "b_high": float(high),
            "boot": boot, "boot_valid": len(boot)}


# -- from runs to observations --------------------------------------------------------------------------------------
def configurations(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Each configuration of the runs (see :mod:`spamlang.scoring.configurations`) with a Bayes loss, as
    ``{"fields": {...}, "lr": ..., "runs": [the runs at the swept values that learn fastest], "tried": [every run of
    the configuration]}`` (a time measure is read where the configuration learns fastest,
    :func:`spamlang.scoring.times.fastest`), in the scorer's order. Runs
    of tasks without a Bayes loss (text) have no steps-to-learn and are left out."""
    runs = python_values(runs)
    runs = runs[[is_finite(b) for b in runs["bayes_loss"]]]
    by, swept = grouping(runs)
    out = []
    for conf in grouped(runs, by, swept):
        fast = fastest(conf.runs, swept, LEARNED_MARGIN)
        out.append({"fields": conf.fields, "lr": fast.iloc[0]["lr"], "runs": [run for _, run in fast.iterrows()],
                    "tried": [run for _, run in conf.runs.iterrows()]})
    return out


def _observation(run: Mapping) -> dict[str, Any] | None:
    """One seed's time to learn in steps, examples per symbol and tokens (its cap where not learned: censored), or
    None for a failed run (:func:`spamlang.scoring.times.time_to_learn`)."""
    time = time_to_learn(run, LEARNED_MARGIN)
    if time is None:
        return None
    cap, tokens, examples = cap_budget(run)
    return {"run_id": run["run_id"], "seed": run["seed"], "learned": time.observed, "censored": not time.observed,
            "steps": time.steps, "examples": time.examples, "tokens": time.tokens, "budget_steps": cap,
            "budget_examples": examples, "budget_tokens": tokens}


def _group_key(fields: Mapping) -> str:
    """The settings fixed along one V grid, and its budget protocol (a grid holds its examples per symbol or its
    steps, never some of each)."""
    return json.dumps([config_key(fields[f]) for f in fields if f not in AXIS_FIELDS] + [protocol(fields)],
                      default=str)


def _budget_of(config: Mapping) -> float:
    budgets = [cap_budget(r)[0] for r in config["runs"] if r["history"]]
    return statistics.median(budgets) if budgets else -math.inf


def protocol(fields: Mapping) -> str:
    """The budget protocol of a configuration: ``examples/symbol`` where its budget is set in examples per symbol (the
    same data for every symbol at every V), else ``tokens`` (a fixed number of steps: the data per symbol falls as V
    grows, as in the paper)."""
    return "examples/symbol" if fields.get("examples_per_symbol") is not None else "tokens"


def observations(runs: pd.DataFrame, every_lr: bool = False, configs: list[dict] | None = None) -> pd.DataFrame:
    """One row per seed of each (group, V) of the runs, at the chosen lr of the configuration with the largest
    budget there (a grid whose failures were rerun on a larger budget is read at that budget): ``group`` (the
    settings that stay fixed along V, as JSON), ``task``, ``task_params``, ``head`` (the design's label, e.g.
    ``lowrank:2``), ``head_name``, ``head_rank``, ``d_model``, ``protocol`` (:func:`protocol`), ``vocab_size``,
    ``ratio`` (V/D), ``lr``, ``chosen``, ``run_id``, ``seed``, ``learned``, ``censored``,
    ``steps``/``examples``/``tokens`` (at the learned step, or the budget where censored) and the ``budget_*`` in each
    unit. ``every_lr``: one row per seed at every lr tried there, ``chosen`` marking the chosen lr's. ``configs``: the
    runs' :func:`configurations`, where already computed."""
    best: dict[tuple[str, Any], dict] = {}
    for config in configurations(runs) if configs is None else configs:
        key = (_group_key(config["fields"]), config["fields"]["vocab_size"])
        if key not in best or _budget_of(config) > _budget_of(best[key]):
            best[key] = config
    rows = []
    for (group, vocab), config in best.items():
        f = config["fields"]
        chosen = {run["run_id"] for run in config["runs"]}
        for run in config["tried" if every_lr else "runs"]:
            seen = _observation(run)
            if seen is not None:
                rows.append({"group": group, "task": f["task"], "task_params": f["task_params"],
                             "head": head_label(f["head"], f["head_rank"], f["head_params"]), "head_name": f["head"],
                             "head_rank": f["head_rank"], "d_model": f["d_model"], "protocol": protocol(f),
                             "vocab_size": vocab, "ratio": vocab / f["d_model"], "lr": run["lr"],
                             "chosen": run["run_id"] in chosen, **seen})
    columns = ["group", "task", "task_params", "head", "head_name", "head_rank", "d_model", "protocol", "vocab_size",
               "ratio", "lr", "chosen", "run_id", "seed", "learned", "censored", "steps", "examples", "tokens",
               "budget_steps", "budget_examples", "budget_tokens"]
    return pd.DataFrame(rows, columns=columns)


def check_grid(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` less the groups with runs at fewer than two V; SpamLangError when none is left."""
    if obs.empty:
        raise SpamLangError("no run of a task with a Bayes loss (a text task has no steps-to-learn to fit; "
                            "'spamlang speedup' compares heads there)")
    sizes = obs.groupby("group")["vocab_size"].nunique()
    kept = obs[obs["group"].map(sizes) >= 2]
    if kept.empty:
        first = obs.iloc[0]
        raise SpamLangError(f"no V grid to fit: every (head, D) group has runs at one V only (e.g. {first['task']}, "
                            f"{first['head']}, D {first['d_model']}: V {first['vocab_size']}); a fit needs two V "
                            f"or more")
    return kept


# -- the tables -----------------------------------------------------------------------------------------------------
def critical_ratio(obs: pd.DataFrame) -> tuple[float, float]:
    """(the largest V/D at which most seeds learned within the budget, the smallest at which most did not); NaN
    where there is none."""
    learned = obs.groupby("ratio")["learned"].mean() > 0.5
    return (float(learned.index[learned].max()) if learned.any() else math.nan,
            float(learned.index[~learned].min()) if (~learned).any() else math.nan)


def fit_table(obs: pd.DataFrame, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
              tried: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (head, D) group of :func:`observations` with runs at two V or more (:func:`check_grid`): ``task``,
    ``head``, ``d_model``, ``protocol``, ``ratios`` (V/D values), ``n`` (seeds' observations), ``n_censored``,
    ``n_start`` (learned at step 0, left out of the fit: no time to take a log of); per unit (``examples``,
    ``tokens``) the exponent ``b_<unit>`` with its bootstrap interval ``b_<unit>_low``/``_high``,
    ``prefactor_<unit>`` (e^a: steps at V/D = 1), ``sigma_<unit>`` (scatter in log steps), ``boot_valid_<unit>`` and
    ``boot_<unit>`` (the resamples' (a, b), for the plots); ``critical`` and ``not_learned``
    (:func:`critical_ratio`); ``resamples`` and ``bootstrap_seed``. With ``tried`` (:func:`observations` at every
    lr), each resample also redoes the lr choice on its seeds (:func:`lr_choice_indices`); ``lr_choice`` says whether
    it did."""
    obs = check_grid(obs)
    rows = []
    for group, members in obs.groupby("group", sort=False):
        first = members.iloc[0]
        fitted = members[members["steps"] > 0]
        row = {"group": group, "task": first["task"], "task_params": first["task_params"], "head": first["head"],
               "d_model": first["d_model"], "protocol": first["protocol"], "ratios": int(members["ratio"].nunique()),
               "n": len(members), "n_censored": int(members["censored"].sum()), "n_start": len(members) - len(fitted)}
        draws = {}
        if tried is not None:  # the bootstrap's observations at every lr, and which of them each resample takes
            alt = tried[(tried["group"] == group) & (tried["steps"] > 0)]
            index = lr_choice_indices(*(alt[c].to_numpy() for c in ("ratio", "lr", "seed", "steps", "censored")),
                                      alt["chosen"].to_numpy(bool), resamples, np.random.default_rng(seed))
            draws = {unit: (alt["ratio"], alt[unit], alt["censored"], index) for unit in UNITS}
        for unit in UNITS:
            result = power_law(fitted["ratio"].to_numpy(float), fitted[unit].to_numpy(float),
                               fitted["censored"].to_numpy(bool), resamples, seed, draws=draws.get(unit))
            row.update({f"b_{unit}": result["b"], f"b_{unit}_low": result["b_low"],
                        f"b_{unit}_high": result["b_high"], f"prefactor_{unit}": math.exp(result["a"]),
                        f"sigma_{unit}": result["sigma"], f"boot_valid_{unit}": result["boot_valid"],
                        f"boot_{unit}": result["boot"]})
        row["critical"], row["not_learned"] = critical_ratio(members)
        row.update({"resamples": resamples, "bootstrap_seed": seed, "lr_choice": tried is not None})
        rows.append(row)
    table = pd.DataFrame(rows)
    order = sorted(range(len(table)), key=lambda i: (table["task"][i], table["protocol"][i], table["head"][i],
                                                     table["d_model"][i]))
    return table.iloc[order].reset_index(drop=True)


def _paired(first: list[Mapping], second: list[Mapping], value) -> list[float]:
    """Per-seed differences value(first) - value(second) over the seeds both have (NaN values dropped)."""
    other = {r["seed"]: r for r in second}
    return [value(r) - value(other[r["seed"]]) for r in first if r["seed"] in other]


def _loss(run: Mapping) -> float:
    return run["final"].loss if run["status"] == "ok" and is_finite(run["final"].loss) else math.nan


def _log_steps(run: Mapping) -> float:
    """log of the seed's learned step (at least 1), or of its budget where not learned (a lower bound)."""
    seen = _observation(run)
    return math.nan if seen is None else math.log(max(seen["steps"], 1))


def _steps_test(first: list[Mapping], second: list[Mapping]) -> float:
    """Two-sided p of the paired censored test of the seeds' times to learn (:func:`spamlang.scoring.survival.
    paired_censored_test`); NaN when untestable (no pair's order is known, e.g. both arms censored)."""
    other = {r["seed"]: r for r in second}
    pairs = [(a, b) for a, b in ((_observation(r), _observation(other[r["seed"]])) for r in first
                                  if r["seed"] in other) if a is not None and b is not None]
    if not pairs:
        return math.nan
    test = paired_censored_test([a["steps"] for a, _ in pairs], [a["learned"] for a, _ in pairs],
                                [b["steps"] for _, b in pairs], [b["learned"] for _, b in pairs])
    return math.nan if test.p is None else test.p


def control_table(runs: pd.DataFrame, tolerance: float = LEARNED_MARGIN, alpha: float = ALPHA,
                  configs: list[dict] | None = None) -> pd.DataFrame:
    """For each configuration of a ``gradproj:r`` head that has ``lowrank:r`` and ``linear`` beside it (same other
    settings and budget), the seeds paired across the three at the lr at which each learns fastest: ``task``,
    ``protocol`` (:func:`protocol`), ``vocab_size``, ``d_model``, ``r``, ``budget_examples``, ``n`` (seeds shared
    by all three), mean final test ``loss_<head>`` and
    seeds ``learned_<head>`` for each, and against each of ``lowrank`` and ``linear``: ``dloss_<other>`` (mean
    gradproj - other), ``p_loss_<other>`` (two-sided paired t-test; NaN when the differences are identical),
    ``dsteps_<other>`` (mean difference of log steps-to-learn, a seed not learned counted at its cap: a lower bound),
    ``p_steps_<other>`` (the paired censored test of :mod:`spamlang.scoring.survival`; NaN when untestable), the
    p-values Holm-adjusted over the row's tests that could be made (the family that decides its ``like``) and ``like``:
    ``linear`` (differs from lowrank, not from linear), ``lowrank`` (the reverse), ``between`` (differs from both),
    ``no contrast`` (from neither). A loss difference counts when its adjusted p < ``alpha`` and its mean exceeds
    ``tolerance`` nats; a steps difference when its adjusted p < ``alpha``. ``configs``: the runs'
    :func:`configurations`, where already computed."""
    configs = configurations(runs) if configs is None else configs
    index: dict[tuple, dict] = {}
    for config in configs:
        f = config["fields"]
        setting = json.dumps([config_key(f[k]) for k in f if k not in HEAD_FIELDS], default=str)
        index[(setting, f["head"], f["head_rank"])] = config
    rows = []
    for (setting, head, rank), config in index.items():
        lowrank, linear = index.get((setting, "lowrank", rank)), index.get((setting, "linear", None))
        if head != "gradproj" or lowrank is None or linear is None:
            continue
        arms = {"gradproj": config["runs"], "lowrank": lowrank["runs"], "linear": linear["runs"]}
        seeds = set.intersection(*({r["seed"] for r in arm} for arm in arms.values()))
        arms = {k: sorted((r for r in arm if r["seed"] in seeds), key=lambda r: r["seed"]) for k, arm in arms.items()}
        f = config["fields"]
        row = {"task": f["task"], "task_params": f["task_params"], "protocol": protocol(f),
               "vocab_size": f["vocab_size"], "d_model": f["d_model"], "r": rank,
               "budget_examples": statistics.median(cap_budget(r)[2] for r in arms["gradproj"]) if seeds else math.nan,
               "n": len(seeds)}
        for name, arm in arms.items():
            losses = [x for x in map(_loss, arm) if math.isfinite(x)]
            row[f"loss_{name}"] = statistics.fmean(losses) if losses else math.nan
            row[f"learned_{name}"] = sum(bool(o and o["learned"]) for o in map(_observation, arm))
        tests = [f"p_{metric}_{other}" for other in ("lowrank", "linear") for metric in ("loss", "steps")]
        for other in ("lowrank", "linear"):
            row[f"dloss_{other}"], row[f"p_loss_{other}"], _ = paired_t(_paired(arms["gradproj"], arms[other], _loss))
            row[f"dsteps_{other}"] = paired_t(_paired(arms["gradproj"], arms[other], _log_steps))[0]
            row[f"p_steps_{other}"] = _steps_test(arms["gradproj"], arms[other])
        row.update(zip(tests, holm([row[name] for name in tests])))  # untestable (NaN) ones stay out of the family
        rows.append(row)
    columns = ["task", "task_params", "protocol", "vocab_size", "d_model", "r", "budget_examples", "n",
               "loss_gradproj", "loss_lowrank", "loss_linear", "learned_gradproj", "learned_lowrank", "learned_linear",
               *(f"{k}_{o}" for o in ("lowrank", "linear") for k in ("dloss", "p_loss", "dsteps", "p_steps")), "like"]
    if not rows:
        return pd.DataFrame(columns=columns)
    for row in rows:
        differs = {other: (row[f"p_loss_{other}"] < alpha and abs(row[f"dloss_{other}"]) > tolerance)
                   or row[f"p_steps_{other}"] < alpha for other in ("lowrank", "linear")}
        row["like"] = {(True, False): "linear", (False, True): "lowrank", (True, True): "between",
                       (False, False): "no contrast"}[(differs["lowrank"], differs["linear"])]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["task", "d_model", "r", "vocab_size"], kind="stable", ignore_index=True)
