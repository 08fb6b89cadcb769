"""Text tables: an aligned Markdown writer, and the scorer's configuration table as Markdown, CSV or JSON."""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import pandas as pd

from spamlang.errors import ConfigError
from spamlang.scoring.configurations import table_fields
from spamlang.scoring.floors import SCALE_FIT_MAX_V
from spamlang.scoring.frames import config_key, is_missing
from spamlang.scoring.stats import is_finite

FORMATS = ("md", "csv", "json")


def plain(value: Any) -> Any:
    """A JSON-ready value: NaN and infinities become None, numpy scalars Python ones."""
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: Any, digits: int = 3) -> str:
    value = plain(value)
    return "-" if value is None else f"{value:.{digits}f}"


def with_params(name: str, params: Any) -> str:
    """A task or head as the tables show it: ``name`` or ``name(key=value, ...)``."""
    return f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})" if isinstance(params, dict) and params \
        else name


_EDGE_MARK = {"low": "↓", "high": "↑", "only": "↕"}


def _markdown_row(row: Mapping, shown: list[str], swept: list[str], scaled: bool) -> dict[str, str]:
    out = {}
    if "task" in row:
        out["task"] = with_params(row["task"], row.get("task_params"))
    out.update({_LABELS.get(f, f): str(row[f]) for f in shown})
    if "head" in row:
        rank = plain(row.get("head_rank"))
        out["head"] = with_params(row["head"] if rank is None else f"{row['head']}:{rank}", row.get("head_params"))
    out["seeds"] = f"{row['n_ok']}/{row['n_seeds']}"
    for f in swept:
        tried = row[f"{f}_tried"]
        show = (lambda v: f"{v:.3g}") if f == "lr" else str
        out[f] = show(row[f]) + _EDGE_MARK.get(row[f"{f}_at_edge"] or "", "")
        out[f"{f} tried"] = f"{show(tried[0])}..{show(tried[-1])} ({len(tried)})" if len(tried) > 1 else show(tried[0])
        if f == "lr" and row["lr_rounds"]:
            out[f"{f} tried"] += f" +{row['lr_rounds']}r"
    out["steps"] = _num(row["train_steps"], 0)
    out["ex/sym"] = _num(row["train_examples_per_symbol"], 0)
    loss, ci = _num(row["loss"]), plain(row["loss_ci"])
    out["loss"] = loss if ci is None else f"{loss}±{ci:.3f}"
    out["acc"] = _num(row["accuracy"])
    out["base"] = _num(min(row["uniform_loss"], row["unigram_loss"]) if is_finite(row["unigram_loss"])
                       else row["uniform_loss"])
    out["bayes"] = _num(row["test_bayes_loss"] if is_finite(row["test_bayes_loss"]) else row["bayes_loss"])
    out["floor"] = ("~" if "estimated" in row["floor_method"] else "") + _num(row["floor"])
    out["expr gap"], out["opt gap"] = _num(row["expressivity_gap"]), _num(row["optimization_gap"])
    if scaled:
        out["scale gap"], out["dir gap"] = _num(row["scale_gap"]), _num(row["direction_gap"])
    out["learn"] = _num(row["learnability"], 2)
    out["learned at"] = _time_cell(row)
    out["destroyed"] = f"{_num(row['grad_destroyed_start'])}→{_num(row['grad_destroyed_end'])}"
    flags = [("+data", row["data_limited"]), ("+budget", row["budget_limited"] and row["verdict"] != "budget-limited"),
             ("+lost", row["learned_then_lost"]), ("!floor", row["floor_error"])]
    out["verdict"] = " ".join([row["verdict"], *(name for name, on in flags if on)])
    return out


def _time_cell(row: Mapping) -> str:
    """``150 [100–250] (3/3)``: the median time to learn in steps, its interval, the seeds learned; ``@lr`` when read
    at another lr than the loss columns."""
    median, low, high = (row.get(f"steps_to_learn{end}") for end in ("", "_low", "_high"))
    seeds = f"({row['n_learned']}/{row['n_seeds']})"
    if is_missing(median):
        return f"- {seeds}"
    at = "" if is_missing(row.get("time_lr")) or row.get("time_lr") == row.get("lr") else f" @{row['time_lr']:g}"
    interval = f" [{'-' if is_missing(low) else low}–{'∞' if is_missing(high) else high}]"
    return f"{median}{interval}{at} {seeds}"


_LABELS = {"vocab_size": "V", "d_model": "D", "embed_dim": "E", "seq_len": "T", "batch_size": "batch"}
_FOLDED = ("task", "task_params", "head", "head_rank", "head_params")
_LEGEND = ("lr: chosen on val; ↑/↓ the top/bottom of the range tried, ↕ the only value tried (the range does not show "
           "the optimum inside it); +Nr: rounds the lr grid was extended by. steps, ex/sym: training budget (examples "
           "per symbol). base: best trivial predictor (uniform or unigram) on the test tokens.\n"
           "bayes: Bayes loss (on the test tokens where recorded). floor: ~ estimated by fitting free vectors, "
           "otherwise analytic. gaps: expr = floor - bayes, opt = loss - floor, scale = floor at the reached logit "
           f"scale - floor (not fitted above V = {SCALE_FIT_MAX_V:,}), dir = opt - scale (nats); a gap counts when "
           "above the tolerance and 2 standard errors.\n"
           "learned at: time to learn in steps, the Kaplan–Meier median over seeds with its 95% interval [low–high] "
           "(a seed not learned is censored at its cap; ∞: unbounded), at the lr that learns fastest (@lr where it is "
           "not the chosen one), and the seeds learned. destroyed: destroyed-"
           "gradient ratio, start→end. +data: unseen symbols explain the shortfall; +budget: the val loss was still "
           "falling at the end; +lost: learned earlier, not at the end; !floor: a gap below 0 beyond noise (the floor "
           "or the Bayes loss is wrong).")


def _markdown(df: pd.DataFrame) -> str:
    by, swept = table_fields(df)
    fields = [c for c in by if c not in _FOLDED]
    shown = [f for f in fields if df[f].map(config_key).nunique(dropna=False) > 1]
    scaled = any(is_finite(v) for v in df["scale_gap"])
    rows = [_markdown_row(row, shown, swept, scaled) for _, row in df.iterrows()]
    legend = _LEGEND + _with_extended_budget(df, rows) + _with_copy_mark(df, rows)
    return markdown_table(rows, lambda cell: cell[:1] in "-~0123456789") + "\n" + legend + "\n"


def _with_copy_mark(df: pd.DataFrame, rows: list[dict[str, str]]) -> str:
    """Mark the verdict of each configuration that starts with the copy solution (``copy_at_init``); return the
    legend's note on tying (empty when no row starts with it)."""
    marks = list(df["copy_at_init"]) if "copy_at_init" in df.columns else []
    if not any(marks):
        return ""
    for row, mark in zip(rows, marks):
        if mark:
            row["verdict"] += " +copy@init"
    return ("\nembed_init/tying: +copy@init marks a head that shares the input embedding on a task whose target is "
            "the current input token: its logit for that token starts at ‖e_x‖², the largest, so the copy solution "
            "is present at initialisation and the row does not show whether the head learns.")


def _with_extended_budget(df: pd.DataFrame, rows: list[dict[str, str]]) -> str:
    """Add the ``at larger budget`` column to ``rows`` when a configuration has one (see
    :func:`spamlang.scoring.budget.extended_budget`); return its legend sentence (empty when there is none)."""
    cells = list(df["extended_budget"]) if "extended_budget" in df.columns else []
    if not any(cells):
        return ""
    for row, cell in zip(rows, cells):
        row["at larger budget"] = cell or ""
    return ("\nat larger budget: for a configuration not learned at the suite's budget, the same configuration rerun "
            "at a larger budget (the suite's extend_budget, at the chosen lr and its neighbours; its own row is "
            "below).")


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


def python_cells(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a Python value in every cell (None for missing, ``int`` for a whole count), in object columns."""
    return pd.DataFrame({column: pd.Series([None if is_missing(v) else plain(v) for v in df[column]], df.index,
                                           dtype=object) for column in df.columns}, index=df.index)


def format_table(df: pd.DataFrame, fmt: str = "md") -> str:
    """``score``'s table as text: ``md`` (aligned Markdown of the main columns and a legend), ``csv`` (every column,
    lists and dicts as JSON) or ``json`` (a list of objects with every field, null for missing numbers)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    df = python_cells(df)  # a typed table (spamlang.score) too
    if fmt == "json":
        rows = [{k: plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        cells = [{k: json.dumps(v) if isinstance(v, (list, dict)) else plain(v) for k, v in row.items()}
                 for row in df.to_dict(orient="records")]
        return pd.DataFrame(cells, columns=df.columns, dtype=object).to_csv(index=False)
    return _markdown(df) if len(df) else "(no configurations)\n"
