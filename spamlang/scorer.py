"""The scorer: a frame of runs in (see :mod:`spamlang.frames`), one row per configuration out, with floors, gaps,
learnability and a verdict.

Swept hyper-parameters (``lr`` and any others) are chosen on the ``val`` stream; every reported number comes from the
``test`` stream. Seeds are aggregated (mean and a 95% t-interval). Pure functions of the runs, except for the
expressivity floors, which are computed once per configuration and kept in the floor cache the caller gives.
"""
from __future__ import annotations

import math
import statistics
import warnings
from typing import Any, Iterable, Mapping

import pandas as pd

from .config import EXECUTION_FIELDS
from .errors import ConfigError, SpamLangError
from .floors import FloorCache, expressivity_floor
from .frames import CONFIG_FIELDS, config_key, python_values, value_order
from .record import LEARNED_ACCURACY, LEARNED_MARGIN, is_learned
from .stats import mean_ci
from .task import make_task

#: nats: the margin within which a loss counts as reaching the Bayes loss (learned, non-deterministic tasks) and
#: within which a gap (floor - Bayes, loss - floor) counts as immaterial; the harness's own margin by default
TOLERANCE = LEARNED_MARGIN
#: accuracy on symbols seen in training above which, with the overall accuracy below it, a run is data-limited
SEEN_ACCURACY = 0.9
VERDICTS = ("learned", "optimization-limited", "expressivity-limited", "mixed", "diverged", "failed", "undetermined",
            "n/a")
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
def _steps_to_learn(run: Mapping, tolerance: float, learned_accuracy: float) -> float:
    """The first evaluation step at which the test stream meets the learned criterion (inf if none, or not ok)."""
    if run["status"] != "ok":
        return math.inf
    for point in run["history"]:
        if is_learned(point.test_accuracy, point.test_loss, run["bayes_loss"], run["deterministic"],
                      learned_accuracy, tolerance):
            return point.step
    return math.inf


def _selection_key(runs: pd.DataFrame) -> tuple:
    """Order of the settings of swept values: mean final val loss over seeds (a run that is not ok counts as inf),
    then fewer runs not ok, then the mean over the ok ones."""
    val = [r["final"].val_loss if r["status"] == "ok" else None for _, r in runs.iterrows()]
    val = [v if v is not None and math.isfinite(v) else math.inf for v in val]
    finite = [v for v in val if math.isfinite(v)]
    return statistics.fmean(val), len(val) - len(finite), statistics.fmean(finite) if finite else math.inf


FLOOR_FIELDS = ("task", "task_params", "vocab_size", "seq_len", "head", "d_model", "head_rank", "head_params",
                "embed_dim")


def _floors(cache: FloorCache):
    """A function from a run to the expressivity floor of its configuration, each computed (or warned about) once."""
    seen: dict[tuple, dict] = {}

    def floor_of(run: Mapping) -> dict:
        key = tuple(config_key(run[f]) for f in FLOOR_FIELDS)
        if key not in seen:
            try:
                task = make_task(run["task"], run["task_params"])
                seen[key] = expressivity_floor(task, run["vocab_size"], run["seq_len"], run["head"], run["d_model"],
                                               run["head_rank"], run["head_params"], run["embed_dim"], cache=cache)
            except SpamLangError as exc:
                warnings.warn(f"no expressivity floor for {run['task']} with head {run['head']}: {exc}",
                              RuntimeWarning)
                seen[key] = {"floor": None, "method": "unavailable"}
        return seen[key]
    return floor_of


def _verdict(n_seeds: int, n_ok: int, n_diverged: int, n_learned: int, expressivity_gap: float,
             optimization_gap: float, tolerance: float) -> str:
    if n_learned * 2 > n_seeds:
        return "learned"
    if n_ok * 2 <= n_seeds:
        return "diverged" if n_diverged * 2 >= n_seeds - n_ok else "failed"
    if not math.isfinite(expressivity_gap):
        return "undetermined"
    if expressivity_gap <= tolerance:
        return "optimization-limited"
    return "mixed" if optimization_gap > tolerance else "expressivity-limited"


def _mean(runs: Iterable[Mapping], field: str) -> float:
    return mean_ci(_final(run, field) for run in runs)[0]


def _final(run: Mapping, field: str) -> float | None:
    """A final metric of a run (None for a failed run, which has none)."""
    return getattr(run["final"], field) if run["final"] is not None else None


def _start(run: Mapping, field: str) -> float | None:
    """A diagnostic's value at the first evaluation that has it."""
    return next((getattr(p, field) for p in run["history"] if getattr(p, field) is not None), None)


def score(df: pd.DataFrame, by: Iterable[str] | None = None, sweep: Iterable[str] = (), *,
          tolerance: float = TOLERANCE, learned_accuracy: float = LEARNED_ACCURACY,
          seen_accuracy: float = SEEN_ACCURACY, cache: FloorCache | None = None) -> pd.DataFrame:
    """One row per configuration (the ``by`` fields; default: every config field but seed, the swept ones and the
    execution ones, plus the task version), its seeds aggregated at the swept values (``lr``, those named in
    ``sweep`` and those the records' suite swept) with the lowest mean final val loss.

    Columns: the ``by`` fields; each swept field's chosen value and ``<field>_tried``; ``n_seeds``, ``n_ok``,
    ``n_diverged``, ``n_failed``, ``n_runs``; ``bayes_loss``, ``floor``, ``floor_method`` (analytic, estimated or
    unavailable), ``floor_small``/``floor_fit`` (sampled estimates, see :func:`expressivity_floor`); test ``loss``,
    ``accuracy`` (each with ``_ci``, the 95% t-interval half-width over ok seeds), ``accuracy_seen``,
    ``accuracy_unseen``, ``coverage``, ``val_loss``; ``expressivity_gap`` = floor - Bayes, ``optimization_gap`` =
    loss - floor; ``steps_to_learn`` (median over seeds, a seed that never learned counting as infinitely slow; None
    when that median is) and ``n_learned``; ``learnability`` (mean over ok seeds, see :func:`learnability`);
    ``verdict`` (one of VERDICTS) and ``data_limited``; gradient diagnostics at the first evaluation (``_start``)
    and at the end (``_end``); ``tokens_per_second``; ``error`` (of a failed run).

    Verdicts, in order: ``learned`` when most seeds learned (deterministic task: test accuracy >=
    ``learned_accuracy``; otherwise loss <= Bayes + ``tolerance``); ``diverged``/``failed`` when most seeds did;
    ``undetermined`` without a floor; ``optimization-limited`` when the floor is within ``tolerance`` of the Bayes
    loss; ``expressivity-limited`` when it is not but the loss is within ``tolerance`` of the floor; else ``mixed``.
    ``data_limited``: not learned, some symbols never seen in training, accuracy on the seen ones >=
    ``seen_accuracy`` and overall below it. ``n/a`` replaces ``undetermined`` when no Bayes loss is known (text).

    Floors are looked up in and added to ``cache`` (a :class:`~spamlang.floors.FloorCache`; one with a path keeps
    them on disk); without one, they are computed afresh and kept in memory only.
    """
    if df.empty:
        raise SpamLangError("no runs to score")
    df = python_values(df)
    swept = list(dict.fromkeys(["lr", *sweep, *(f for s in df["sweep"] if isinstance(s, list) for f in s)]))
    unknown = [f for f in [*swept, *(by or [])] if f not in (*CONFIG_FIELDS, "task_version")]
    if unknown:
        raise ConfigError(f"cannot group or sweep by '{unknown[0]}' (run settings: {', '.join(CONFIG_FIELDS)}, "
                          f"task_version)")
    if by is None:
        by = [f for f in CONFIG_FIELDS if f not in ("seed", *swept, *EXECUTION_FIELDS)] + ["task_version"]
    by = list(by)
    swept = [f for f in swept if f not in by and f != "seed"]
    floor_of = _floors(cache if cache is not None else FloorCache())
    keys = pd.DataFrame({f: df[f].map(config_key) for f in by + swept}, index=df.index)
    rows = []
    for _, group in sorted(keys.groupby(by, sort=False, dropna=False), key=lambda g: tuple(map(value_order, g[0]))):
        settings = [s.index for _, s in group.groupby(swept, sort=False, dropna=False)] if swept else [group.index]
        best = min(settings, key=lambda i: _selection_key(df.loc[i]))
        rows.append(_score_group(df.loc[group.index], df.loc[best], by, swept, tolerance, learned_accuracy,
                                 seen_accuracy, floor_of))
    return pd.DataFrame(rows, dtype=object)


def _score_group(group: pd.DataFrame, chosen: pd.DataFrame, by: list[str], swept: list[str], tolerance: float,
                 learned_accuracy: float, seen_accuracy: float, floor_of) -> dict:
    ran = group[group["status"] != "failed"]
    first = (ran if len(ran) else group).iloc[0]  # a failed run may lack the Bayes loss and the rank
    runs = [r for _, r in chosen.iterrows()]
    ok = [r for r in runs if r["status"] == "ok"]
    floors = {r["run_id"]: floor_of(r) for _, r in ran.iterrows()}  # one per configuration, unless ``by`` mixes them
    row: dict[str, Any] = {f: first[f] for f in by}
    for f in swept:
        row[f] = chosen.iloc[0][f]
        row[f"{f}_tried"] = sorted(set(group[f].map(config_key)), key=value_order)
    bayes = mean_ci(ran["bayes_loss"])[0]
    floor_value, floor_small, floor_fit = (mean_ci(f.get(k) for f in floors.values())[0]
                                           for k in ("floor", "floor_small", "floor_fit"))
    loss, loss_ci = mean_ci(_final(r, "loss") for r in ok)
    accuracy, accuracy_ci = mean_ci(_final(r, "accuracy") for r in ok)
    steps = [_steps_to_learn(r, tolerance, learned_accuracy) for r in runs]
    n_learned = sum(math.isfinite(s) for s in steps)
    median_steps = statistics.median(steps) if steps else math.inf
    expressivity_gap, optimization_gap = floor_value - bayes, loss - floor_value
    n_diverged = sum(r["status"] == "diverged" for r in runs)
    verdict = _verdict(len(runs), len(ok), n_diverged, n_learned, expressivity_gap, optimization_gap, tolerance)
    if verdict == "undetermined" and not math.isfinite(bayes):  # no Bayes loss is known (text): nothing to judge
        verdict = "n/a"
    seen, coverage = _mean(ok, "accuracy_seen"), _mean(ok, "coverage")
    row.update({
        "n_seeds": len(runs), "n_ok": len(ok), "n_diverged": n_diverged,
        "n_failed": sum(r["status"] == "failed" for r in runs), "n_runs": len(group),
        "deterministic": bool(first["deterministic"]), "rank": first["rank"], "bayes_loss": bayes,
        "floor": floor_value,
        "floor_method": "+".join(sorted({f["method"] for f in floors.values()})) or "unavailable",
        "floor_small": floor_small, "floor_fit": floor_fit,
        "loss": loss, "loss_ci": loss_ci, "accuracy": accuracy, "accuracy_ci": accuracy_ci,
        "accuracy_seen": seen, "accuracy_unseen": _mean(ok, "accuracy_unseen"), "coverage": coverage,
        "val_loss": _mean(ok, "val_loss"), "expressivity_gap": expressivity_gap, "optimization_gap": optimization_gap,
        "steps_to_learn": int(median_steps) if math.isfinite(median_steps) else None, "n_learned": n_learned,
        "learnability": mean_ci(learnability([p.test_loss for p in r["history"]],
                                             floors[r["run_id"]]["floor"]) for r in ok)[0],
        "verdict": verdict,
        "data_limited": verdict not in ("learned", "diverged", "failed") and coverage < 1
                        and seen >= seen_accuracy > accuracy,
    })
    for name in DIAGNOSTICS:
        row[f"{name}_start"] = mean_ci(_start(r, name) for r in ok)[0]
        row[f"{name}_end"] = _mean(ok, name)
    row["tokens_per_second"] = _mean(ok, "tokens_per_second")
    row["error"] = next((r["error"] for _, r in group.iterrows() if r["error"]), None)
    return row
