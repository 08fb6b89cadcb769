"""The scaling fits as text and figures: the fit table and the gradproj control as Markdown and CSV, and their plots.

Pure rendering of :mod:`spamlang.scoring.fit`'s tables; the leaderboard (:mod:`spamlang.publishing.leaderboard`) writes
them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from spamlang.publishing import plots
from spamlang.publishing.tables import format_table, markdown_table, with_params
from spamlang.scoring import fit


@dataclass(frozen=True)
class Fits:
    """What ``spamlang fit`` reports: the observations, the fit table and the gradproj control."""

    obs: pd.DataFrame
    table: pd.DataFrame
    control: pd.DataFrame


def fits(runs: pd.DataFrame, resamples: int = fit.RESAMPLES, seed: int = fit.BOOTSTRAP_SEED) -> Fits:
    """The fits of ``runs`` (SpamLangError without a task with a Bayes loss, or without a V grid)."""
    configs = fit.configurations(runs)
    tried = fit.observations(runs, every_lr=True, configs=configs)
    obs = fit.check_grid(tried[tried["chosen"]].reset_index(drop=True))
    return Fits(obs, fit.fit_table(obs, resamples, seed, tried), fit.control_table(runs, configs=configs))


def _g(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _exponent(row: pd.Series, unit: str) -> str:
    b, low, high = row[f"b_{unit}"], row[f"b_{unit}_low"], row[f"b_{unit}_high"]
    if not math.isfinite(b):
        return "- (learned at < 2 V)"
    return f"{b:.2f} [{_g(low)}, {_g(high)}]"


def _bracket(row: pd.Series) -> str:
    low, high = row["critical"], row["not_learned"]
    note = " (not monotone)" if math.isfinite(low) and math.isfinite(high) and high < low else ""
    return f"{_g(low)} ({_g(low)}, {_g(high)}){note}"


_FIT_LEGEND = (
    "Per head and width D: steps-to-learn against V/D fitted as log(steps) = a + b·log(V/D) by maximum likelihood, "
    "seeds not learned within their budget right-censored at it (Tobit), in examples per symbol (ex/sym) and in "
    "training tokens; b with its 95% percentile bootstrap interval over seeds (resampled within each V, {resamples} "
    "resamples, generator seed {seed}); prefactor: e^a, the fitted examples per symbol at V/D = 1. censored: seeds "
    "not learned. critical V/D: the largest V/D at which most seeds learned within the budget (bracket: that value, "
    "and the smallest V/D at which most did not). protocol: the budget held along V — examples/symbol (the same "
    "data for every symbol at every V) or tokens (fixed steps: the data per symbol falls as 1/V, as in the paper). "
    "Each configuration at the lr that learns fastest (smallest Kaplan–Meier median), on the largest budget run at "
    "that V; {lr_choice}")


def fit_markdown(table: pd.DataFrame) -> str:
    """The fit table as Markdown with its legend."""
    rows = [{"task": with_params(row["task"], row["task_params"]), "protocol": row["protocol"], "head": row["head"],
             "D": str(row["d_model"]),
             "b (ex/sym) [95% CI]": _exponent(row, "examples"), "prefactor": _g(row["prefactor_examples"]),
             "b (tokens) [95% CI]": _exponent(row, "tokens"), "V/D values": str(row["ratios"]),
             "seeds": str(row["n"]), "censored": str(row["n_censored"]), "critical V/D (bracket)": _bracket(row)}
            for _, row in table.iterrows()]
    lr_choice = ("each resample redoes that choice on its seeds, so the interval carries the lr choice's "
                 "uncertainty too." if table["lr_choice"].all() else "the resamples keep that lr.")
    legend = _FIT_LEGEND.format(resamples=table["resamples"].iloc[0], seed=table["bootstrap_seed"].iloc[0],
                                lr_choice=lr_choice)
    return markdown_table(rows, lambda cell: cell[:1] in "-0123456789") + "\n" + legend + "\n"


def fit_csv(table: pd.DataFrame) -> str:
    """The fit table as CSV (every column but the bootstrap resamples)."""
    return format_table(table.drop(columns=[c for c in table.columns if c.startswith("boot_") and
                                            not c.startswith("boot_valid")]), "csv")


_CONTROL_LEGEND = (
    "gradproj:r (full-rank forward, rank-r gradient) against lowrank:r (rank-r forward and gradient) and linear, at "
    "the lr at which each learns fastest and the same budget, seeds paired: loss: mean final test loss; learned: seeds "
    "learned within the budget; Δloss and Δlog steps: mean over seeds of gradproj minus the other head (a seed not "
    "learned counts at its budget, a lower bound); p: two-sided paired t-test on the losses (- when the differences "
    "are identical), the paired censored test on the times (- when no pair's order is known), Holm-adjusted over the "
    "row's tests that could be made. like: linear when gradproj differs from lowrank and not from linear, lowrank the "
    "reverse, between when it "
    "differs from both, no contrast when from neither (a loss difference counts at p < {alpha} and beyond {tol} "
    "nats, a steps difference at p < {alpha}).")


def control_markdown(control: pd.DataFrame) -> str:
    """The gradproj control as Markdown with its legend."""
    if control.empty:
        return "(no configuration has gradproj:r beside lowrank:r and linear)\n"
    rows = []
    for _, row in control.iterrows():
        cells = {"task": with_params(row["task"], row["task_params"]), "protocol": row["protocol"],
                 "V": str(row["vocab_size"]),
                 "D": str(row["d_model"]), "r": str(row["r"]), "ex/sym": _g(row["budget_examples"]),
                 "seeds": str(row["n"])}
        for head in ("gradproj", "lowrank", "linear"):
            cells[f"loss {head}"] = f"{_g(row[f'loss_{head}'])} ({row[f'learned_{head}']}/{row['n']})"
        for other in ("lowrank", "linear"):
            cells[f"vs {other}: Δloss (p)"] = f"{row[f'dloss_{other}']:+.3f} ({_g(row[f'p_loss_{other}'])})"
            cells[f"vs {other}: Δlog steps (p)"] = f"{row[f'dsteps_{other}']:+.2f} ({_g(row[f'p_steps_{other}'])})"
        cells["like"] = row["like"]
        rows.append(cells)
    legend = _CONTROL_LEGEND.format(alpha=fit.ALPHA, tol=fit.LEARNED_MARGIN)
    return markdown_table(rows, lambda cell: cell[:1] in "-+0123456789") + "\n" + legend + "\n"


def markdown(result: Fits, images: list[str] = ()) -> str:
    """The fit section: the fit table, the gradproj control and links to ``images``."""
    lines = ["## Scaling fits over V/D", "", fit_markdown(result.table), "## Gradient-only control (gradproj)", "",
             control_markdown(result.control)]
    lines += [f"![{caption(name)}]({name})\n" for name in images]
    return "\n".join(lines).rstrip("\n") + "\n"


STEPS_FIGURE = "steps_to_learn.png"


def figure_name(width: int) -> str:
    """The file of the direction/scale figure of width ``width``."""
    return f"direction_D{width}.png"


def caption(name: str) -> str:
    """The caption of a fit figure."""
    if name == STEPS_FIGURE:
        return ("Steps-to-learn against V/D with the censored power-law fits and their bootstrap bands; open markers "
                "with arrows: not learned within the budget")
    return f"Destroyed ratio, update cosine and logit scale over training, D = {name[len('direction_D'):-4]}"


def figures(result: Fits, runs: pd.DataFrame) -> dict[str, Figure]:
    """The fit figures by PNG file name: steps-to-learn against V/D, and the direction/scale figure of each D (of
    the runs at fixed examples per symbol where there are any: its x axis is the data per symbol seen)."""
    out = {STEPS_FIGURE: plots.steps_vs_ratio(result.table, result.obs)}
    per_symbol = result.obs[result.obs["protocol"] == "examples/symbol"]
    traced = per_symbol if len(per_symbol) else result.obs
    for width in sorted(traced["d_model"].unique()):
        out[figure_name(width)] = plots.direction_scale(traced, runs, width)
    return {name: fig for name, fig in out.items() if fig is not None}
