"""Tokens to target: how many fewer training tokens a reference head needs to reach another head's final loss.

For a head H and a reference head R (full-rank ``linear`` by default) trained with everything else equal:

- target = H's final val loss (mean over its seeds), after H has trained on ``tokens`` tokens;
- ``ref_tokens`` = the training tokens at which R's val-loss curve (mean over its seeds at each evaluation) first
  reaches the target, interpolated linearly in log(tokens) between evaluations (at most the first evaluation's
  tokens when R is there already at its first); unknown (censored) when R never gets there;
- ``speedup`` = tokens / ref_tokens: the paper's "16x" (a rank-4096 head reached a rank-32 head's final loss with
  about 16 times fewer tokens), with a percentile bootstrap 95% interval that resamples H's and R's seeds
  independently;
- loss at equal tokens: R's val loss at H's final token count (``ref_loss``) and ``loss_gap`` = target - ref_loss.

Pure functions of the run records as :func:`spamlang.scoring.frames.load_runs` returns them (ok runs only). Where a
learning rate was swept, each head uses the one with the lowest mean final val loss over its seeds.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from spamlang.errors import SpamLangError
from spamlang.heads.base import HEAD_FIELDS, head_label
from spamlang.publishing.tables import markdown_table, with_params
from spamlang.scoring.configurations import chosen_runs
from spamlang.scoring.frames import CONFIG_FIELDS, config_key, python_values, value_order

#: the fields that tell the compared heads apart, or are chosen per head (lr), or vary within one cell (seed)
NOT_GROUPED = (*HEAD_FIELDS, "seed", "lr", "device", "compile", "precision")
BOOTSTRAP = 2000
FORMATS = ("md", "csv", "json")


def tokens_to_reach(tokens: Sequence[float], losses: Sequence[float], target: float) -> float:
    """The first token count at which the curve ``losses`` (at increasing ``tokens``) reaches ``target``,
    interpolated linearly in log(tokens); NaN if it never does. Points at 0 tokens are ignored."""
    points = [(t, loss) for t, loss in zip(tokens, losses) if t > 0 and loss is not None and math.isfinite(loss)]
    for i, (t, loss) in enumerate(points):
        if loss <= target:
            if i == 0:
                return float(t)
            t0, l0 = points[i - 1]
            share = (l0 - target) / (l0 - loss)
            return float(math.exp(math.log(t0) + share * (math.log(t) - math.log(t0))))
    return math.nan


def loss_at(tokens: Sequence[float], losses: Sequence[float], at: float) -> float:
    """The curve's loss at ``at`` tokens, interpolated linearly in log(tokens); NaN outside its evaluations."""
    points = [(t, loss) for t, loss in zip(tokens, losses) if t > 0 and loss is not None and math.isfinite(loss)]
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if t0 <= at <= t1:
            return l0 + (math.log(at) - math.log(t0)) / (math.log(t1) - math.log(t0)) * (l1 - l0)
    return points[0][1] if len(points) == 1 and points[0][0] == at else math.nan


def curves(runs: pd.DataFrame, field: str = "val_loss") -> tuple[np.ndarray, np.ndarray]:
    """Token counts (E,) evaluated by every run, and each run's ``field`` there: (runs, E)."""
    tables = [{p.tokens: getattr(p, field) for p in h} for h in runs["history"]]
    common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    values = [[np.nan if t[x] is None else t[x] for x in common] for t in tables]
    return np.array(common, dtype=float), np.array(values, dtype=float).reshape(len(tables), len(common))


def compare(head_final: np.ndarray, head_tokens: float, ref_tokens: np.ndarray, ref_curves: np.ndarray,
            n_boot: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Tokens to target of one head against the reference: ``head_final`` (seeds,) final val losses after
    ``head_tokens`` tokens; ``ref_curves`` (seeds, E) the reference's val losses at ``ref_tokens`` (E,)."""
    target = float(np.mean(head_final))
    ref_mean = ref_curves.mean(axis=0)
    needed = tokens_to_reach(ref_tokens, ref_mean, target)
    ref_loss = loss_at(ref_tokens, ref_mean, head_tokens)
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    for b in range(n_boot):
        h = head_final[rng.integers(len(head_final), size=len(head_final))]
        r = ref_curves[rng.integers(len(ref_curves), size=len(ref_curves))].mean(axis=0)
        ratios[b] = head_tokens / tokens_to_reach(ref_tokens, r, float(h.mean()))
    ratios = np.sort(np.where(np.isnan(ratios), np.inf, ratios))  # never reached: more tokens than trained
    low, high = ratios[int(0.025 * n_boot)], ratios[math.ceil(0.975 * n_boot) - 1]
    return {"target": target, "tokens": float(head_tokens), "ref_tokens": needed,
            "speedup": head_tokens / needed if math.isfinite(needed) else math.nan,
            "speedup_low": float(low), "speedup_high": float(high),
            "ref_loss": ref_loss, "loss_gap": target - ref_loss, "censored": not math.isfinite(needed)}


def _parse_reference(reference: str) -> tuple[str, int | None]:
    name, _, rank = reference.partition(":")
    if not name or (rank and not rank.isdigit()):
        raise SpamLangError(f"reference head must be NAME or NAME:RANK, got {reference!r}")
    return name, int(rank) if rank else None


def check_reference(runs: pd.DataFrame, reference: str) -> None:
    """SpamLangError unless some run of ``runs`` (a run frame) has the head ``reference`` (NAME or NAME:RANK)."""
    name, rank = _parse_reference(reference)
    heads = {(h, None if r is None or r != r else int(r)) for h, r in zip(runs["head"], runs["head_rank"])}
    if (name, rank) not in heads:
        shown = sorted(f"{h}:{r}" if r is not None else h for h, r in heads)
        raise SpamLangError(f"--reference {reference!r}: no run has that head (heads: {', '.join(shown)})")


def _finite(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.inf


def speedup_table(runs: pd.DataFrame, reference: str = "linear", n_boot: int = BOOTSTRAP, seed: int = 0) \
        -> pd.DataFrame:
    """One row per head and configuration that has a reference run: the configuration's fields, ``head``,
    ``head_rank``, ``head_params``, ``rank``, ``lr``, ``n_seeds``, ``ref_seeds``, ``reference``, ``run_ids`` (the
    head's runs at its chosen lr) and the fields of :func:`compare`.
    Empty when no configuration has both the reference and another head."""
    ref_name, ref_rank = _parse_reference(reference)
    runs = python_values(runs)
    ok = runs[runs["status"] == "ok"]
    group_fields = [f for f in CONFIG_FIELDS if f not in NOT_GROUPED]
    rows = []
    keys = pd.DataFrame({f: ok[f].map(config_key) for f in group_fields + list(HEAD_FIELDS)}, index=ok.index)
    for _, group in keys.groupby(group_fields, sort=False, dropna=False):
        cell = ok.loc[group.index]
        is_ref = (cell["head"] == ref_name) & cell["head_rank"].map(lambda r: r == ref_rank or
                                                                    (r is None and ref_rank is None))
        if not is_ref.any():
            continue
        ref = chosen_runs(cell[is_ref])
        ref_tokens, ref_curves = curves(ref)
        heads = keys.loc[group.index].groupby(list(HEAD_FIELDS), sort=False, dropna=False)
        for _, head_keys in heads:
            head = chosen_runs(cell.loc[head_keys.index])
            final = np.array([f.val_loss for f in head["final"]], dtype=float)
            tokens = float(head["history"].iloc[0][-1].tokens)
            first = head.iloc[0]
            row = {f: first[f] for f in group_fields}
            row.update({f: first[f] for f in HEAD_FIELDS})
            row.update({"rank": first["rank"], "lr": first["lr"], "n_seeds": len(head), "ref_seeds": len(ref),
                        "reference": reference, "run_ids": list(head["run_id"])})
            row.update(compare(final, tokens, ref_tokens, ref_curves, n_boot, seed))
            rows.append(row)
    table = pd.DataFrame(rows, dtype=object)
    if table.empty:
        return table
    order = sorted(table.index,
                   key=lambda i: tuple(value_order(table.at[i, f]) for f in [*group_fields, "rank", "head"]))
    return table.loc[order].reset_index(drop=True)


def _tokens(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}k"


def _ratio(row) -> str:
    if row["censored"]:
        return "ref never reached it"
    high = "inf" if not math.isfinite(row["speedup_high"]) else f"{row['speedup_high']:.2f}"
    return f"{row['speedup']:.2f}x [{row['speedup_low']:.2f}, {high}]"


def format_speedup(table: pd.DataFrame, fmt: str = "md") -> str:
    """The speedup table as Markdown (with a legend), CSV or JSON."""
    if fmt not in FORMATS:
        raise SpamLangError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return json.dumps([{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                           for r in table.to_dict(orient="records")], indent=2, default=str) + "\n"
    if fmt == "csv":
        return table.to_csv(index=False)
    if table.empty:
        return "(no configuration has both the reference head and another head)\n"
    fields = [c for c in table.columns[:list(table.columns).index("head")]
              if table[c].map(config_key).nunique(dropna=False) > 1]
    rows = []
    for _, row in table.iterrows():
        cells = {"task": with_params(row["task"], row.get("task_params"))} if "task" in table else {}
        cells.update({f: str(row[f]) for f in fields if f not in ("task", "task_params")})
        cells["head"] = head_label(row["head"], row["head_rank"], row["head_params"])
        cells.update({"seeds": str(row["n_seeds"]), "val loss": f"{row['target']:.3f}",
                      "tokens": _tokens(row["tokens"]), "ref tokens to it": _tokens(row["ref_tokens"]),
                      "speedup [95% CI]": _ratio(row),
                      "ref loss at tokens": "-" if not math.isfinite(row["ref_loss"]) else f"{row['ref_loss']:.3f}",
                      "gap": "-" if not math.isfinite(row["loss_gap"]) else f"{row['loss_gap']:+.3f}"})
        rows.append(cells)
    reference = table["reference"].iloc[0]
    legend = (f"val loss: the head's final val loss (mean over seeds) after `tokens` training tokens. "
              f"ref tokens to it: tokens the reference ({reference}) needed to reach that loss (log-interpolated).\n"
              f"speedup: tokens / ref tokens, with a seed-bootstrap 95% interval (inf: some resamples never reach it). "
              f"gap: val loss - the reference's val loss at the same tokens.")
    return markdown_table(rows, lambda cell: cell[:1] in "-+0123456789") + "\n" + legend + "\n"
