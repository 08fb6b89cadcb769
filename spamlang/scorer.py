"""The scorer: run records in, one row per configuration out, with floors, gaps, learnability and a verdict.

Swept hyper-parameters (``lr`` and any others) are chosen on the ``val`` stream; every reported number comes from the
``test`` stream. Seeds are aggregated (mean and a 95% t-interval). Pure functions of the records, except for the
expressivity floors, which are computed once per configuration and cached beside the records.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from . import record
from .record import LEARNED_ACCURACY, LEARNED_MARGIN, is_learned
from .config import EXECUTION_FIELDS, RunConfig
from .errors import ConfigError, SpamLangError
from .floors import CACHE_NAME, FloorCache, expressivity_floor
from .task import TASKS, make_task

#: nats: the margin within which a loss counts as reaching the Bayes loss (learned, non-deterministic tasks) and
#: within which a gap (floor - Bayes, loss - floor) counts as immaterial; the harness's own margin by default
TOLERANCE = LEARNED_MARGIN
#: accuracy on symbols seen in training above which, with the overall accuracy below it, a run is data-limited
SEEN_ACCURACY = 0.9
VERDICTS = ("learned", "optimization-limited", "expressivity-limited", "mixed", "diverged", "failed", "undetermined",
            "n/a")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
FORMATS = ("md", "csv", "json")
DIAGNOSTICS = ("grad_destroyed", "grad_kept_cos", "grad_baseline")


# -- loading --------------------------------------------------------------------------------------------------------
def load_runs(folder: str | Path) -> pd.DataFrame:
    """One row per run record found under ``folder`` (recursively): its config fields, plus ``run_id``, ``path``,
    ``task_version``, ``bayes_loss``, ``deterministic``, ``rank``, ``status``, ``error``, ``history``, ``final``,
    ``sweep`` (the fields its suite swept, or None), and for provenance ``suite``, ``env`` and ``created``.

    A file that is not a readable record of this schema is reported (warnings.warn, naming it) and skipped, as is a
    second record of a run already read; no record at all raises SpamLangError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpamLangError(f"run folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*.json") if p.name != CACHE_NAME and p.is_file())
    rows, problems, seen = [], [], {}
    for path in files:
        try:
            row = _row(record.read(path), path)
        except SpamLangError as exc:
            problems.append(str(exc))
            continue
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # well-formed JSON, ill-formed fields
            problems.append(f"{path}: malformed run record ({type(exc).__name__}: {exc})")
            continue
        if row["run_id"] in seen:
            problems.append(f"{path}: a second record of run {row['run_id']} (first: {seen[row['run_id']]})")
        else:
            seen[row["run_id"]] = path
            rows.append(row)
    if not rows:
        detail = f": {len(problems)} file(s) skipped, first {problems[0]}" if problems else " (no *.json files)"
        raise SpamLangError(f"no run records under {folder}{detail}")
    for problem in problems:
        warnings.warn(f"skipped {problem}", RuntimeWarning, stacklevel=2)
    df = pd.DataFrame(rows, dtype=object)  # object: keep ints, None and dicts as they are
    df.attrs["folder"] = str(folder)
    return df


def _row(rec: dict, path: Path) -> dict:
    """The DataFrame row of one record (SpamLangError if its config or metrics are not usable)."""
    try:
        if not isinstance(rec["config"], dict):
            raise TypeError("not an object")
        config = RunConfig.from_dict(rec["config"]).to_dict()
    except (SpamLangError, TypeError) as exc:
        raise SpamLangError(f"{path}: config not understood ({exc})") from None
    if rec["status"] != "failed" and not (isinstance(rec["history"], list) and rec["history"]
                                          and isinstance(rec["final"], dict)):
        raise SpamLangError(f"{path}: a run with status {rec['status']!r} needs a history and final metrics")
    suite = rec.get("suite") if isinstance(rec.get("suite"), dict) else {}
    version = rec["task_version"]
    if version is None:  # a run that failed before its task was built: it ran the version registered now, if any
        version = TASKS.get(config["task"]).version if config["task"] in TASKS.names() else None
    return {**config, "run_id": rec["run_id"], "path": str(path), "task_version": version,
            "bayes_loss": rec["bayes_loss"], "deterministic": rec["deterministic"], "rank": rec.get("rank"),
            "status": rec["status"], "error": rec.get("error"), "history": rec["history"] or [],
            "final": rec["final"] or {}, "sweep": suite.get("sweep"), "suite": suite or None,
            "env": rec["env"] if isinstance(rec["env"], dict) else {}, "created": rec.get("created")}


# -- statistics -----------------------------------------------------------------------------------------------------
def _t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:
        term, total = c, 0.0
        for j in range((df - 1) // 2):
            total += term
            term *= c * c * (2 * j + 2) / (2 * j + 3)
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0
    for j in range(df // 2):
        total += term
        term *= c * c * (2 * j + 1) / (2 * j + 2)
    return s * total


@functools.lru_cache(maxsize=None)
def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (2-sided 95%: 12.706 at 1)."""
    low, high = 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_coverage(mid, df) < level else (low, mid)
    return (low + high) / 2


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% t-interval) of the finite values; NaN where undefined (none, or one for the CI)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return math.nan, math.nan
    if len(xs) == 1:
        return xs[0], math.nan
    return statistics.fmean(xs), t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


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
def _key(value: Any) -> Any:
    """A hashable, order-independent stand-in for a config value (dicts and lists become canonical JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _order(value: Any) -> tuple:
    """Sort key: numbers in numerical order, then strings, then missing values (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, "")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value) if number else (1, str(value))


def _steps_to_learn(run: Mapping, tolerance: float, learned_accuracy: float) -> float:
    """The first evaluation step at which the test stream meets the learned criterion (inf if none, or not ok)."""
    if run["status"] != "ok":
        return math.inf
    for point in run["history"]:
        if is_learned(point.get("test_accuracy"), point.get("test_loss"), run["bayes_loss"], run["deterministic"],
                      learned_accuracy, tolerance):
            return point["step"]
    return math.inf


def _selection_key(runs: pd.DataFrame) -> tuple:
    """Order of the settings of swept values: mean final val loss over seeds (a run that is not ok counts as inf),
    then fewer runs not ok, then the mean over the ok ones."""
    val = [r["final"].get("val_loss") if r["status"] == "ok" else None for _, r in runs.iterrows()]
    val = [v if v is not None and math.isfinite(v) else math.inf for v in val]
    finite = [v for v in val if math.isfinite(v)]
    return statistics.fmean(val), len(val) - len(finite), statistics.fmean(finite) if finite else math.inf


FLOOR_FIELDS = ("task", "task_params", "vocab_size", "seq_len", "head", "d_model", "head_rank", "head_params",
                "embed_dim")


def _floors(cache: FloorCache):
    """A function from a run to the expressivity floor of its configuration, each computed (or warned about) once."""
    seen: dict[tuple, dict] = {}

    def floor_of(run: Mapping) -> dict:
        key = tuple(_key(run[f]) for f in FLOOR_FIELDS)
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
    return mean_ci(run["final"].get(field) for run in runs)[0]


def _start(run: Mapping, field: str) -> float | None:
    """A diagnostic's value at the first evaluation that has it."""
    return next((p[field] for p in run["history"] if p.get(field) is not None), None)


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
    """
    if df.empty:
        raise SpamLangError("no runs to score")
    swept = list(dict.fromkeys(["lr", *sweep, *(f for s in df["sweep"] if isinstance(s, list) for f in s)]))
    unknown = [f for f in [*swept, *(by or [])] if f not in (*CONFIG_FIELDS, "task_version")]
    if unknown:
        raise ConfigError(f"cannot group or sweep by '{unknown[0]}' (run settings: {', '.join(CONFIG_FIELDS)}, "
                          f"task_version)")
    if by is None:
        by = [f for f in CONFIG_FIELDS if f not in ("seed", *swept, *EXECUTION_FIELDS)] + ["task_version"]
    by = list(by)
    swept = [f for f in swept if f not in by and f != "seed"]
    if cache is None:
        cache = FloorCache(Path(df.attrs["folder"]) / CACHE_NAME if "folder" in df.attrs else None)
    floor_of = _floors(cache)
    keys = pd.DataFrame({f: df[f].map(_key) for f in by + swept}, index=df.index)
    rows = []
    for _, group in sorted(keys.groupby(by, sort=False, dropna=False), key=lambda g: tuple(map(_order, g[0]))):
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
        row[f"{f}_tried"] = sorted(set(group[f].map(_key)), key=_order)
    bayes = mean_ci(ran["bayes_loss"])[0]
    floor_value, floor_small, floor_fit = (mean_ci(f.get(k) for f in floors.values())[0]
                                           for k in ("floor", "floor_small", "floor_fit"))
    loss, loss_ci = mean_ci(r["final"].get("loss") for r in ok)
    accuracy, accuracy_ci = mean_ci(r["final"].get("accuracy") for r in ok)
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
        "learnability": mean_ci(learnability([p.get("test_loss") for p in r["history"]],
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


# -- output ---------------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A JSON-ready value: NaN and infinities become None, numpy scalars Python ones."""
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: Any, digits: int = 3) -> str:
    value = _plain(value)
    return "-" if value is None else f"{value:.{digits}f}"


def _with_params(name: str, params: Any) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})" if isinstance(params, dict) and params \
        else name


def _markdown_row(row: Mapping, shown: list[str], swept: list[str]) -> dict[str, str]:
    out = {}
    if "task" in row:
        out["task"] = _with_params(row["task"], row.get("task_params"))
    out.update({_LABELS.get(f, f): str(row[f]) for f in shown})
    if "head" in row:
        rank = _plain(row.get("head_rank"))
        out["head"] = _with_params(row["head"] if rank is None else f"{row['head']}:{rank}", row.get("head_params"))
    out["seeds"] = f"{row['n_ok']}/{row['n_seeds']}"
    for f in swept:
        tried = row[f"{f}_tried"]
        show = (lambda v: f"{v:.3g}") if f == "lr" else str
        out[f] = show(row[f])
        out[f"{f} tried"] = f"{show(tried[0])}..{show(tried[-1])} ({len(tried)})" if len(tried) > 1 else show(tried[0])
    loss, ci = _num(row["loss"]), _plain(row["loss_ci"])
    out["loss"] = loss if ci is None else f"{loss}±{ci:.3f}"
    out["acc"] = _num(row["accuracy"])
    out["bayes"] = _num(row["bayes_loss"])
    out["floor"] = ("~" if "estimated" in row["floor_method"] else "") + _num(row["floor"])
    out["expr gap"], out["opt gap"] = _num(row["expressivity_gap"]), _num(row["optimization_gap"])
    out["learn"] = _num(row["learnability"], 2)
    steps = row["steps_to_learn"]
    out["learned at"] = f"{'-' if steps is None else steps} ({row['n_learned']}/{row['n_seeds']})"
    out["destroyed"] = f"{_num(row['grad_destroyed_start'])}→{_num(row['grad_destroyed_end'])}"
    out["verdict"] = row["verdict"] + (" +data" if row["data_limited"] else "")
    return out


_LABELS = {"vocab_size": "V", "d_model": "D", "embed_dim": "E", "seq_len": "T", "batch_size": "batch"}
_FOLDED = ("task", "task_params", "head", "head_rank", "head_params")
_LEGEND = ("floor: ~ estimated by fitting free vectors, otherwise analytic. gaps: expr = floor - bayes, "
           "opt = loss - floor (nats).\nlearned at: median first step learned (seeds learned). destroyed: destroyed-"
           "gradient ratio, start→end. +data: data-limited (unseen symbols explain the shortfall).")


def _markdown(df: pd.DataFrame) -> str:
    swept = [c[:-len("_tried")] for c in df.columns if c.endswith("_tried")]
    start = list(df.columns).index("n_seeds")
    fields = [c for c in df.columns[:start] if c not in swept and not c.endswith("_tried") and c not in _FOLDED]
    shown = [f for f in fields if df[f].map(_key).nunique(dropna=False) > 1]
    rows = [_markdown_row(row, shown, swept) for _, row in df.iterrows()]
    return markdown_table(rows, lambda cell: cell[:1] in "-~0123456789") + "\n" + _LEGEND + "\n"


def markdown_table(rows: list[Mapping[str, str]], numeric: Callable[[str], bool]) -> str:
    """An aligned Markdown table of string cells; a column all of whose cells are ``numeric`` is right-aligned."""
    columns = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    right = {c for c in columns if all(numeric(r[c]) for r in rows)}

    def line(cells: Mapping[str, str]) -> str:
        return "| " + " | ".join(cells[c].rjust(width[c]) if c in right else cells[c].ljust(width[c])
                                 for c in columns) + " |"

    rule = "|" + "|".join("-" * (width[c] + 1) + ":" if c in right else "-" * (width[c] + 2) for c in columns) + "|"
    return "\n".join([line({c: c for c in columns}), rule, *map(line, rows)]) + "\n"


def format_table(df: pd.DataFrame, fmt: str = "md") -> str:
    """``score``'s table as text: ``md`` (aligned Markdown of the main columns and a legend), ``csv`` (every column,
    lists and dicts as JSON) or ``json`` (a list of objects with every field, null for missing numbers)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        rows = [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        cells = [{k: json.dumps(v) if isinstance(v, (list, dict)) else _plain(v) for k, v in row.items()}
                 for row in df.to_dict(orient="records")]
        return pd.DataFrame(cells, columns=df.columns, dtype=object).to_csv(index=False)
    return _markdown(df) if len(df) else "(no configurations)\n"
