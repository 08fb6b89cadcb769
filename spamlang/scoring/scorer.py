"""The scorer: a frame of runs in (see :mod:`spamlang.scoring.frames`), one row per configuration out, with floors,
gaps, their noise, trivial baselines, learnability and a verdict (the rules: :mod:`spamlang.scoring.verdicts`).

Swept hyper-parameters (``lr`` and any others) are chosen on the ``val`` stream for the loss measures and where the
configuration learns fastest for the time measures (:mod:`spamlang.scoring.configurations`,
:mod:`spamlang.scoring.times`); every reported number comes from the ``test`` stream. Seeds are aggregated (mean and
a 95% t-interval, or a standard error). Pure functions of the runs, except for the floors, which are computed once per
configuration (and reached logit scale) and kept in the floor cache the caller gives.
"""
from __future__ import annotations

import math
import statistics
import sys
import warnings
from typing import Any, Iterable, Mapping

import pandas as pd
from tqdm.auto import tqdm

from spamlang.errors import SpamLangError
from spamlang.record.learned import LEARNED_MARGIN, learned_state
from spamlang.record.learned import bayes_gap as gap_to_bayes
from spamlang.scoring import tying, verdicts
from spamlang.scoring.budget import extended_budget
from spamlang.scoring.configurations import configurations, edge, grouping
from spamlang.scoring.floors import FloorCache, FloorSpec, expressivity_floor, floor_at_scale
from spamlang.scoring.frames import RUN_TYPES, config_key, is_missing, python_values, value_order
from spamlang.scoring.stats import is_finite, mean_ci, mean_se, slope, t_quantile
from spamlang.scoring.times import cap_budget, fastest, time_columns

#: nats: a gap (loss - Bayes, floor - Bayes, loss - floor, gain over a trivial predictor) at most this large is
#: immaterial, whatever its noise (see :func:`verdicts.counts`); the harness's own margin by default
TOLERANCE = LEARNED_MARGIN
#: accuracy on symbols seen in training above which, with the overall accuracy below it, a run is data-limited
SEEN_ACCURACY = 0.9
#: the verdicts a configuration can get, in the order of :func:`verdicts.verdict`'s rules
VERDICTS = verdicts.VERDICTS
DIAGNOSTICS = ("grad_destroyed", "grad_kept_cos", "grad_baseline")


def learnability(test_losses: list[float], floor: float) -> float:
    """1 - mean over evaluations after step 0 of (L_t - floor) / (L_0 - floor), clipped to [0, 1]: the area between
    the learning curve and its start, as a share of the area a run that reached the floor at once would have.

    A non-finite loss counts as no learning at all (learnability 0); a run that starts at the floor scores 1.
    """
    if len(test_losses) < 2 or floor is None or not math.isfinite(floor):
        return math.nan
    start = test_losses[0] - floor
    if start <= 0:
        return 1.0
    ratios = [(loss - floor) / start if loss is not None and math.isfinite(loss) else math.inf
              for loss in test_losses[1:]]
    return min(1.0, max(0.0, 1.0 - statistics.fmean(ratios)))


# -- scoring --------------------------------------------------------------------------------------------------------
def floor_decides(methods: set[str], floor_se: float, tolerance: float) -> bool:
    """Whether a floor is precise enough to split a gap: analytic, or estimated with a standard error at most half the
    tolerance (unknown for floor caches of an older estimator: then the tolerance alone decides, as before)."""
    return methods == {"analytic"} or not is_finite(floor_se) or floor_se <= tolerance / 2


def _learned_then_lost(run: Mapping, tolerance: float) -> bool:
    gaps = [gap_to_bayes(p, run["bayes_loss"]) for p in run["history"]]
    return verdicts.learned_then_lost([g for g, _ in gaps], [s for _, s in gaps], tolerance)


def _still_improving(run: Mapping, tolerance: float) -> tuple[float, float, bool]:
    """(slope of the val loss over the last TREND_POINTS evaluations in nats per step, its standard error, whether
    the run was still improving at the end; see :func:`verdicts.still_improving`)."""
    points = [p for p in run["history"] if is_finite(p.val_loss)][-verdicts.TREND_POINTS:]
    steps = [p.step for p in points]
    b, se, df = slope(steps, [p.val_loss for p in points])
    critical = t_quantile(df, 0.90) if df else math.inf  # two-sided 90% = one-sided 95%
    span = steps[-1] - steps[0] if steps else 0
    return b, se, verdicts.still_improving(b, se, critical, span, tolerance)


#: the run settings a floor depends on (those of :class:`~spamlang.scoring.floors.FloorSpec`)
FLOOR_FIELDS = ("task", "task_params", "vocab_size", "seq_len", "head", "d_model", "head_rank", "head_params",
                "embed_dim")


def _floors(cache: FloorCache):
    """A function from a run to the expressivity floor of its configuration, each computed (or warned about) once."""
    seen: dict[tuple, dict] = {}

    def floor_of(run: Mapping) -> dict:
        key = tuple(config_key(run[f]) for f in FLOOR_FIELDS)
        if key not in seen:
            try:
                seen[key] = expressivity_floor(FloorSpec.of(run), cache=cache)
            except SpamLangError as exc:
                warnings.warn(f"no expressivity floor for {run['task']} with head {run['head']}: {exc}",
                              RuntimeWarning)
                seen[key] = {"floor": None, "method": "unavailable"}
        return seen[key]
    return floor_of


def _scale_floors(cache: FloorCache):
    """A function from (a run, a logit scale) to the floor of the run's configuration with every context's logit
    half-range at most that scale (NaN where it cannot be computed), each computed (or warned about) once."""
    seen: dict[tuple, float] = {}

    def scale_floor_of(run: Mapping, scale: float) -> float:
        if not is_finite(scale):
            return math.nan
        key = (*(config_key(run[f]) for f in FLOOR_FIELDS), scale)
        if key not in seen:
            try:
                value = floor_at_scale(FloorSpec.of(run), scale, cache=cache).get("floor")
            except SpamLangError as exc:
                warnings.warn(f"no floor at logit scale {scale:.3g} for {run['task']} with head {run['head']}: "
                              f"{exc}", RuntimeWarning)
                value = None
            seen[key] = value if is_finite(value) else math.nan
        return seen[key]
    return scale_floor_of


def _mean(runs: Iterable[Mapping], field: str) -> float:
    return mean_ci(_final(run, field) for run in runs)[0]


def _final(run: Mapping, field: str) -> float | None:
    """A final metric of a run (None for a failed run, which has none)."""
    return getattr(run["final"], field) if run["final"] is not None else None


def _start(run: Mapping, field: str) -> float | None:
    """A diagnostic's value at the first evaluation that has it."""
    return next((getattr(p, field) for p in run["history"] if getattr(p, field) is not None), None)


#: columns of the score table that hold counts or flags (the run settings' types come from frames.RUN_TYPES), and
#: those that hold text; every other column whose values are numbers is float
INT_COLUMNS = ("task_version", "n_seeds", "n_ok", "n_diverged", "n_failed", "n_runs", "lr_rounds", "rank",
               "train_steps", "train_tokens", "steps_to_learn", "steps_to_learn_low", "steps_to_learn_high",
               "tokens_to_learn", "tokens_to_learn_low", "tokens_to_learn_high", "n_learned")
BOOL_COLUMNS = ("deterministic", "learned_then_lost", "budget_limited", "data_limited", "floor_error")
TEXT_COLUMNS = ("floor_method", "verdict", "evidence", "error")


def typed(scored: pd.DataFrame) -> pd.DataFrame:
    """:func:`score`'s table with pandas dtypes: counts ``int64`` (``Int64`` where a value is missing), flags
    ``bool`` (``boolean`` where missing), other numbers ``float64`` with NaN; text, lists and dicts stay objects with
    None for missing."""
    types = {**RUN_TYPES, **{c: int for c in INT_COLUMNS}, **{c: bool for c in BOOL_COLUMNS},
             **{c: str for c in TEXT_COLUMNS}}
    out = scored.copy()
    for column in out.columns:
        values = list(out[column])
        present = [v for v in values if not is_missing(v)]
        kind = types.get(column, str if column.endswith(("_at_edge", "_tried")) else None)
        complete = len(present) == len(values)
        if kind is int:
            out[column] = pd.array([None if is_missing(v) else int(v) for v in values], dtype="Int64")
        elif kind is bool:
            out[column] = pd.array([None if is_missing(v) else bool(v) for v in values], dtype="boolean")
        elif kind is float or (kind is None and all(is_finite(v) or isinstance(v, float) for v in present)):
            out[column] = pd.to_numeric(pd.Series([math.nan if is_missing(v) else v for v in values], out.index,
                                                  dtype=object)).astype("float64")
            continue
        else:
            continue
        if complete:
            out[column] = out[column].astype("int64" if kind is int else bool)
    return out


def score_frame(df: pd.DataFrame, by: Iterable[str] | None = None, sweep: Iterable[str] = (), **options) -> \
        pd.DataFrame:
    """:func:`score` as a frame for pandas (``spamlang.score``): the same table with the dtypes of :func:`typed`."""
    return typed(score(df, by, sweep, **options))


def score(df: pd.DataFrame, by: Iterable[str] | None = None, sweep: Iterable[str] = (), *,
          tolerance: float = TOLERANCE, seen_accuracy: float = SEEN_ACCURACY,
          cache: FloorCache | None = None, progress: bool | None = None) -> pd.DataFrame:
    """One row per configuration (the ``by`` fields; default: every config field but seed, the swept ones and the
    execution ones, plus the task version), its seeds aggregated at the swept values (``lr``, those named in
    ``sweep`` and those the records' suite swept) with the lowest mean final val loss
    (:func:`spamlang.scoring.configurations.choose`).

    Columns: the ``by`` fields; each swept field's chosen value, ``<field>_tried`` and ``<field>_at_edge`` (``low``,
    ``high`` or ``only`` when the chosen value is an edge of the values tried at the other chosen swept values, else
    None); ``lr_rounds`` (rounds by which ``spamlang run`` extended the lr grid); ``budget_round`` (0: the suite's own
    budget, 1: added by the runner's budget round); ``n_seeds``, ``n_ok``,
    ``n_diverged``, ``n_failed``, ``n_runs``; the budget: ``train_steps``, ``train_tokens`` and
    ``train_examples_per_symbol`` (over the chosen runs); ``bayes_loss`` (population), ``test_bayes_loss``
    (the Bayes predictor on the test tokens, where recorded), ``uniform_loss`` and ``unigram_loss`` (trivial
    baselines on the test tokens; uniform = log V for older records); ``floor``, ``floor_se``, ``floor_method``
    (analytic, estimated or unavailable), ``floor_small``/``floor_fit`` (sampled estimates, see
    :func:`expressivity_floor`); test ``loss``, ``accuracy`` (each with ``_ci``, the 95% t-interval half-width over ok
    seeds), ``accuracy_seen``, ``accuracy_unseen``, ``coverage``, ``val_loss``; the gaps, each with ``_se``:
    ``bayes_gap`` = loss - Bayes (on the same tokens where recorded), ``expressivity_gap`` = floor - Bayes,
    ``optimization_gap`` = bayes_gap - expressivity_gap (= loss - floor); with a recorded ``logit_scale``:
    ``logit_scale`` (median over ok seeds), ``scale_floor`` (the floor at that scale), ``scale_gap`` = scale_floor -
    floor and ``direction_gap`` = optimization_gap - scale_gap; ``steps_to_learn`` (median over seeds of the step
    from which a seed stayed learned, a seed not learned at the end counting as infinitely slow; None when that median
    is), ``n_learned`` (seeds learned at the end), ``learned_then_lost``; ``val_slope``/``val_slope_se`` (trend of the
    val loss at the end, nats per 1,000 steps, mean over ok seeds) and ``budget_limited`` (most ok seeds still
    improving); ``learnability`` (mean over ok seeds, see :func:`learnability`); ``verdict`` (one of VERDICTS, see
    :func:`verdicts.verdict`), ``evidence`` (the lr range and budget behind it), ``data_limited`` and ``floor_error``
    (a gap below 0 beyond its noise: the floor, or the Bayes loss, is wrong); gradient diagnostics at the first
    evaluation (``_start``) and at the end (``_end``); ``tokens_per_second``; ``error`` (of a failed run);
    ``extended_budget`` (for a configuration not learned at its own budget, what the budget round's larger budget
    showed, see :func:`spamlang.scoring.budget.extended_budget`); where the table has task and head: ``copies_input``
    (the task's target is the current input token) and ``copy_at_init`` (and the head shares the input embedding, so the
    run starts with the copy solution; see :mod:`spamlang.scoring.tying`).

    A gap counts when it exceeds both ``tolerance`` and NOISE_SE of its standard errors (see :mod:`verdicts`).
    Learned: the gap to the Bayes loss at the final evaluation does not count. No-learning: the loss's gain over the
    uniform or the unigram predictor does not count. ``data_limited``: not learned, some symbols never seen in
    training, accuracy on the seen ones >= ``seen_accuracy`` and overall below it.

    Floors are looked up in and added to ``cache`` (a :class:`~spamlang.scoring.floors.FloorCache`; one with a path
    keeps them on disk); without one, they are computed afresh and kept in memory only. A floor not cached is a fit of
    seconds to minutes, so a bar over the configurations shows on stderr (``progress``; default: when a terminal).
    """
    if df.empty:
        raise SpamLangError("no runs to score")
    df = python_values(df)
    by, swept = grouping(df, by, sweep)
    cache = cache if cache is not None else FloorCache()
    floor_of, scale_floor_of = _floors(cache), _scale_floors(cache)
    rows = []
    for conf in tqdm(configurations(df, by, swept), desc="scoring", unit="config", leave=False,
                     disable=not (sys.stderr.isatty() if progress is None else progress)):
        rows.append(_score_group(conf.runs, conf.chosen, by, swept, tolerance, seen_accuracy, floor_of,
                                 scale_floor_of))
    scored = pd.DataFrame(rows, dtype=object)
    scored["extended_budget"] = pd.Series(extended_budget(scored), index=scored.index, dtype=object)
    if {"task", "head"} <= set(scored.columns):
        params = scored["task_params"] if "task_params" in scored.columns else [None] * len(scored)
        copies = [tying.copies_input(t, p) for t, p in zip(scored["task"], params)]
        scored["copies_input"] = pd.Series(copies, index=scored.index, dtype=object)
        scored["copy_at_init"] = pd.Series([c and tying.shares_embedding(h) for c, h in zip(copies, scored["head"])],
                                           index=scored.index, dtype=object)
    return scored


def _swept_columns(group: pd.DataFrame, chosen: pd.DataFrame, swept: list[str]) -> tuple[dict, dict]:
    """({each swept field's chosen value and the values tried}, {whether each chosen value is at an edge of those
    tried at the other chosen swept values, and the rounds the lr grid was extended by})."""
    values, edges = {}, {}
    at = chosen.iloc[0]
    for f in swept:
        values[f] = at[f]
        values[f"{f}_tried"] = sorted(set(group[f].map(config_key)), key=value_order)
        others = group[[all(config_key(run[g]) == config_key(at[g]) for g in swept if g != f)
                        for _, run in group.iterrows()]]
        edges[f"{f}_at_edge"] = edge(config_key(at[f]),
                                               sorted(set(others[f].map(config_key)), key=value_order))
    edges["lr_rounds"] = max((s or {}).get("lr_round") or 0 for s in group["suite"])
    edges["budget_round"] = min((s or {}).get("budget_round") or 0 for s in group["suite"])
    return values, edges


def _score_group(group: pd.DataFrame, chosen: pd.DataFrame, by: list[str], swept: list[str], tolerance: float,
                 seen_accuracy: float, floor_of, scale_floor_of) -> dict:
    ran = group[group["status"] != "failed"]
    first = (ran if len(ran) else group).iloc[0]  # a failed run may lack the Bayes loss and the rank
    runs = [r for _, r in chosen.iterrows()]
    ok = [r for r in runs if r["status"] == "ok"]
    finals = [r["final"] for r in ok]
    floor_results = {r["run_id"]: floor_of(r) for _, r in ran.iterrows()}  # one per configuration, unless ``by`` mixes
    row: dict[str, Any] = {f: first[f] for f in by}
    values, edges = _swept_columns(group, chosen, swept)
    row.update(values)
    bayes = mean_ci(ran["bayes_loss"])[0]
    floor_value, floor_small, floor_fit = (mean_ci(f.get(k) for f in floor_results.values())[0]
                                           for k in ("floor", "floor_small", "floor_fit"))
    methods = {f["method"] for f in floor_results.values()}
    # an estimate without its own uncertainty (a floor cache of an older estimator): unknown, so the tolerance decides
    floor_se = 0.0 if methods == {"analytic"} else mean_ci(f.get("floor_se") for f in floor_results.values())[0]
    loss, loss_ci = mean_ci(f.loss for f in finals)
    accuracy, accuracy_ci = mean_ci(f.accuracy for f in finals)

    # gaps: loss - Bayes on the same tokens, floor - Bayes, and their difference, each with its standard error
    same_tokens = bool(finals) and all(is_finite(f.test_bayes_loss) for f in finals)
    gaps = [gap_to_bayes(r["final"], r["bayes_loss"], "loss", same_tokens) for r in ok]
    bayes_gap, bayes_gap_se = mean_se([g for g, _ in gaps], [s for _, s in gaps])
    expressivity_gap = floor_value - bayes
    optimization_gap = bayes_gap - expressivity_gap
    optimization_gap_se = math.hypot(bayes_gap_se, floor_se)  # NaN when either is unknown
    learned = learned_state(bayes_gap, bayes_gap_se, tolerance)
    floor_error = any(verdicts.below_noise(g, s, tolerance) for g, s in
                      ((expressivity_gap, floor_se), (optimization_gap, optimization_gap_se),
                       (bayes_gap, bayes_gap_se)))

    # trivial baselines on the same tokens: uniform (log V where not recorded) and, where recorded, unigram
    uniform = [f.test_uniform_loss if is_finite(f.test_uniform_loss) else math.log(r["vocab_size"])
               for f, r in zip(finals, ok)]
    gain, gain_se = mean_se([u - f.loss if is_finite(f.loss) else math.nan for u, f in zip(uniform, finals)],
                            [f.test_loss_se for f in finals])
    no_learning = not verdicts.counts(gain, gain_se, tolerance)
    unigram = math.nan
    if finals and all(is_finite(f.test_unigram_loss) for f in finals):
        unigram = statistics.fmean(f.test_unigram_loss for f in finals)
        gain, gain_se = mean_se([f.test_unigram_loss - f.loss if is_finite(f.loss) else math.nan for f in finals],
                                [f.test_unigram_gap_se for f in finals])
        no_learning = no_learning or not verdicts.counts(gain, gain_se, tolerance)

    # the reached logit scale, and the floor at that scale
    scales = [f.logit_scale for f in finals if is_finite(f.logit_scale)]
    logit_scale = statistics.median(scales) if scales else math.nan
    scale_floor = scale_floor_of(first, logit_scale) if scales else math.nan
    scale_gap = scale_floor - floor_value

    trends = [_still_improving(r, tolerance) for r in ok]
    budget_limited = sum(t[2] for t in trends) * 2 > len(ok)
    n_diverged = sum(r["status"] == "diverged" for r in runs)
    verdict = verdicts.verdict(
        len(runs), len(ok), n_diverged, learned=learned, no_learning=bool(ok) and no_learning,
        has_bayes=is_finite(bayes), has_floor=is_finite(floor_value) and floor_decides(methods, floor_se, tolerance),
        expressivity_counts=verdicts.counts(expressivity_gap, floor_se, tolerance),
        optimization_counts=verdicts.counts(optimization_gap, optimization_gap_se, tolerance),
        budget_limited=budget_limited)
    fast = fastest(group, swept, tolerance) if swept else group  # where a time measure is read
    budgets = [cap_budget(r) for r in runs if r["history"]]  # the caps: a run stopped once learned had more
    train_steps, train_tokens, examples = (statistics.median(b[i] for b in budgets) if budgets else math.nan
                                           for i in range(3))
    seen, coverage = _mean(ok, "accuracy_seen"), _mean(ok, "coverage")
    lrs = [v for v in row.get("lr_tried", [first["lr"]]) if is_finite(v)]
    row.update({
        "n_seeds": len(runs), "n_ok": len(ok), "n_diverged": n_diverged,
        "n_failed": sum(r["status"] == "failed" for r in runs), "n_runs": len(group), **edges,
        "deterministic": bool(first["deterministic"]), "rank": first["rank"],
        "train_steps": train_steps, "train_tokens": train_tokens, "train_examples_per_symbol": examples,
        "bayes_loss": bayes,
        "test_bayes_loss": mean_ci(f.test_bayes_loss for f in finals)[0] if same_tokens else math.nan,
        "uniform_loss": mean_ci(uniform)[0], "unigram_loss": unigram,
        "floor": floor_value, "floor_se": floor_se,
        "floor_method": "+".join(sorted(methods)) or "unavailable",
        "floor_small": floor_small, "floor_fit": floor_fit,
        "loss": loss, "loss_ci": loss_ci, "accuracy": accuracy, "accuracy_ci": accuracy_ci,
        "accuracy_seen": seen, "accuracy_unseen": _mean(ok, "accuracy_unseen"), "coverage": coverage,
        "val_loss": _mean(ok, "val_loss"),
        "bayes_gap": bayes_gap, "bayes_gap_se": bayes_gap_se,
        "expressivity_gap": expressivity_gap, "expressivity_gap_se": floor_se,
        "optimization_gap": optimization_gap, "optimization_gap_se": optimization_gap_se,
        "logit_scale": logit_scale, "scale_floor": scale_floor, "scale_gap": scale_gap,
        "direction_gap": optimization_gap - scale_gap,
        "time_lr": fast.iloc[0]["lr"], **time_columns(fast, tolerance),
        "learned_then_lost": any(_learned_then_lost(r, tolerance) for r in ok),
        "val_slope": 1000 * mean_ci(t[0] for t in trends)[0], "val_slope_se": 1000 * mean_ci(t[1] for t in trends)[0],
        "budget_limited": budget_limited,
        "learnability": mean_ci(learnability([p.test_loss for p in r["history"]],
                                             floor_results[r["run_id"]]["floor"]) for r in ok)[0],
        "verdict": verdict,
        "evidence": verdicts.evidence(verdict, lrs or [math.nan], row.get("lr", first["lr"]), train_steps, examples,
                                      edges.get("lr_at_edge")),
        "data_limited": verdict not in ("learned", "diverged", "failed") and coverage < 1
                        and seen >= seen_accuracy > accuracy,
        "floor_error": floor_error,
    })
    for name in DIAGNOSTICS:
        row[f"{name}_start"] = mean_ci(_start(r, name) for r in ok)[0]
        row[f"{name}_end"] = _mean(ok, name)
    row["tokens_per_second"] = _mean(ok, "tokens_per_second")
    row["error"] = next((r["error"] for _, r in group.iterrows() if r["error"]), None)
    return row
