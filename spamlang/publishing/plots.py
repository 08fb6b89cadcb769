"""Leaderboard plots: learnability by task and head, learning curves of the cliff, kept gradient cosine against V/rank,
steps-to-learn against V/D with its censored fit, direction and scale over training.

Each plot is a pure function of the scorer's tables returning a matplotlib Figure (None when there is nothing to
draw). Figures are built without pyplot, so they render with the Agg canvas and never touch the caller's backend.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter

from spamlang.publishing.tables import with_params
from spamlang.scoring.fit import UNIT_LABELS, UNITS
from spamlang.system import atomic
from spamlang.system.processes import fork_map

#: colours of lines by V/rank: plasma without its palest yellow, which vanishes on white
RATIO_CMAP = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0, 0.88, 256)))
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _table(scored: pd.DataFrame) -> pd.DataFrame:
    """The columns the plots use: task and head labels, V, effective rank, V/rank, learnability, kept cosine."""
    data = pd.DataFrame({
        "task": [with_params(t, p) for t, p in zip(scored["task"], scored["task_params"])],
        "head": [with_params(h, p) for h, p in zip(scored["head"], scored["head_params"])],
        "V": pd.to_numeric(scored["vocab_size"]), "rank": pd.to_numeric(scored["rank"]),
        "learnability": pd.to_numeric(scored["learnability"]),
        "kept_cos": pd.to_numeric(scored["grad_kept_cos_end"])}, index=scored.index)
    data["ratio"] = data["V"] / data["rank"]
    return data.dropna(subset=["rank"])  # a configuration whose runs all failed has no rank


def _power_of_two_ticks(axis, values) -> None:
    """On a log-scaled ``axis``, a tick at each power of two in the range of ``values``, labelled as plain numbers."""
    low, high = np.floor(np.log2(np.min(values))), np.ceil(np.log2(np.max(values)))
    step = max(1, int((high - low) // 8) + 1)
    axis.set_major_locator(FixedLocator(2.0 ** np.arange(low, high + 1, step)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(FixedLocator([]))


def _design(head: str, rank, params) -> str:
    """A head design label: ``linear``, ``lowrank:2``, ``mos(components=4)``."""
    return with_params(head if pd.isna(rank) else f"{head}:{int(rank)}", params)


def learnability_heatmap(scored: pd.DataFrame) -> Figure | None:
    """Learnability as one task × head-design matrix (colour and value: the mean over the task's configurations,
    e.g. its V and D; below it, the configurations learned out of those run), sized to stay readable at page width."""
    data = pd.DataFrame({
        "task": [with_params(t, p) for t, p in zip(scored["task"], scored["task_params"])],
        "head": [_design(h, r, p) for h, r, p in zip(scored["head"], scored["head_rank"], scored["head_params"])],
        "learnability": pd.to_numeric(scored["learnability"]),
        "learned": scored["verdict"] == "learned"}).dropna(subset=["learnability"])
    if data.empty:
        return None
    cells = data.groupby(["task", "head"]).agg(value=("learnability", "mean"), learned=("learned", "sum"),
                                               configs=("learned", "size"))
    tasks, heads = sorted(data["task"].unique()), sorted(data["head"].unique())
    values = cells["value"].unstack("head").reindex(index=tasks, columns=heads).to_numpy(float)
    fig = Figure(figsize=(min(max(1.9 + 0.95 * len(heads), 5.5), 10), 1.3 + 0.5 * len(tasks)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", norm=Normalize(0, 1), aspect="auto")
    for (r, c), value in np.ndenumerate(values):
        text = "-" if np.isnan(value) else f"{value:.2f}"
        if (tasks[r], heads[c]) in cells.index:
            cell = cells.loc[(tasks[r], heads[c])]
            text += f"\n{int(cell['learned'])}/{int(cell['configs'])}"
        ax.text(c, r, text, ha="center", va="center", fontsize=7.5,
                color="white" if np.isnan(value) or value < 0.6 else "black")
    ax.set_xticks(range(len(heads)), heads, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    fig.colorbar(image, ax=ax, label="learnability", fraction=0.04, pad=0.02)
    ax.set_title("Learnability by task and head (cell: mean; configurations learned/run)", fontsize=9)
    return fig


def learning_curves(scored: pd.DataFrame, chosen: pd.DataFrame, task: str = "spam") -> Figure | None:
    """Test accuracy and loss against step for each configuration of ``task`` (mean over its ok runs at the chosen
    swept values, as :func:`spamlang.publishing.leaderboard.chosen_runs` lists them), coloured by V/rank, one line style
    per head."""
    data = _table(scored)
    runs = chosen[(chosen["task"] == task) & (chosen["status"] == "ok") & chosen["config"].isin(data.index)]
    if runs.empty:
        return None
    norm = LogNorm(data.loc[runs["config"], "ratio"].min(), data.loc[runs["config"], "ratio"].max() * 1.0001)
    styles = dict(zip(sorted(data.loc[runs["config"], "head"].unique()), LINESTYLES * 4))
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for config, group in runs.groupby("config"):
        history = pd.DataFrame([dataclasses.asdict(p) for h in group["history"] for p in h]).groupby("step")
        metrics = history[["test_accuracy", "test_loss"]]
        curve, low, high = metrics.mean(), metrics.min(), metrics.max()
        style = {"color": RATIO_CMAP(norm(data.at[config, "ratio"])), "linestyle": styles[data.at[config, "head"]],
                 "linewidth": 1.4, "alpha": 0.9}
        for ax, name in zip(axes, ("test_accuracy", "test_loss")):
            ax.plot(curve.index, curve[name], **style)
            ax.fill_between(curve.index, low[name], high[name], color=style["color"], alpha=0.12, linewidth=0)
    for ax, label in zip(axes, ("test accuracy", "test loss (nats)")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(bottom=0)
    _legend_below(fig, [Line2D([], [], color="0.3", linestyle=s, label=h) for h, s in styles.items()])
    bar = fig.colorbar(ScalarMappable(norm, RATIO_CMAP), ax=axes, label="V / rank")
    _power_of_two_ticks(bar.ax.yaxis, [norm.vmin, norm.vmax])
    fig.suptitle(f"Learning curves of '{task}' (mean over seeds at the chosen lr; band: seed range)")
    return fig


def kept_cosine(scored: pd.DataFrame) -> Figure | None:
    """The gradient's kept cosine at the end of training against V/rank, one colour per head and one marker per
    task, with the isotropic baseline sqrt(rank/V) that a gradient unrelated to the head's column space would get."""
    data = _table(scored).dropna(subset=["kept_cos"])
    data = data[data["kept_cos"] > 0]
    if data.empty:
        return None
    fig = Figure(figsize=(8.5, 5), layout="constrained")
    ax = fig.subplots()
    colours = dict(zip(sorted(data["head"].unique()), matplotlib.colormaps["tab10"].colors))
    markers = dict(zip(sorted(data["task"].unique()), MARKERS * 4))
    for (head, task), group in data.groupby(["head", "task"]):
        ax.scatter(group["ratio"], group["kept_cos"], color=colours[head], marker=markers[task], s=40, alpha=0.85,
                   edgecolors="white", linewidths=0.5)
    low, high = data["ratio"].min() / 1.5, data["ratio"].max() * 1.5
    x = np.geomspace(max(low, 1.0), high, 100)
    ax.plot(x, np.sqrt(1 / x), color="black", linestyle="--", linewidth=1, label="isotropic sqrt(rank/V)")
    ax.set_xscale("log", base=2)
    _power_of_two_ticks(ax.xaxis, [low, high])
    ax.set_xlim(low, high)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([m * 10.0 ** e for e in range(-4, 1) for m in (1, 2, 3, 5)]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("V / rank")
    ax.set_ylabel("kept gradient cosine at the end")
    ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color="black", linestyle="--", label="isotropic sqrt(rank/V)")]
    handles += [Line2D([], [], color=c, marker="o", linestyle="", label=h) for h, c in colours.items()]
    if len(markers) > 1:
        handles += [Line2D([], [], color="0.4", marker=m, linestyle="", label=t) for t, m in markers.items()]
    _legend_below(fig, handles, columns=4)
    ax.set_title("How much of the logit gradient reaches the backbone")
    return fig


def png(fig: Figure) -> bytes:
    """``fig`` rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def save(fig: Figure, path: str | Path) -> bytes:
    """Write ``fig`` as a PNG at ``path`` atomically; return the bytes written."""
    data = png(fig)
    atomic.write_bytes(path, data)
    return data


def loss_vs_tokens(table: pd.DataFrame, runs: pd.DataFrame) -> Figure | None:
    """Val loss against training tokens (log x) for each head of the speedup ``table`` (its runs at the chosen lr,
    from ``runs``): the mean over seeds with a band from the lowest to the highest seed, coloured by rank, one line
    style per head, one panel per configuration (e.g. per V)."""
    if table.empty:
        return None
    by_id = runs.set_index("run_id")
    fields = [c for c in table.columns[:list(table.columns).index("head")] if table[c].map(str).nunique() > 1]
    panels = table.groupby(fields or (lambda i: 0), sort=False)
    ranks = pd.to_numeric(table["rank"])
    norm = LogNorm(ranks.min(), ranks.max() * 1.0001)
    styles = dict(zip(sorted(table["head"].unique()), LINESTYLES * 4))
    fig = Figure(figsize=(5.5 * panels.ngroups + 1.5, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels.ngroups))
    for ax, (key, panel) in zip(axes, panels):
        for _, row in panel.iterrows():
            points = pd.DataFrame([{"tokens": p.tokens, "loss": p.val_loss, "run": i}
                                   for i in row["run_ids"] for p in by_id.at[i, "history"] if p.tokens > 0])
            stats = points.groupby("tokens")["loss"].agg(["mean", "min", "max"])
            colour = RATIO_CMAP(norm(row["rank"]))
            ax.plot(stats.index, stats["mean"], color=colour, linestyle=styles[row["head"]], linewidth=1.4)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("val loss (nats)")
        ax.grid(alpha=0.3, which="both")
        if panels.ngroups > 1:
            ax.set_title(", ".join(f"{f}={v}" for f, v in zip(fields, key if isinstance(key, tuple) else (key,))),
                         fontsize=10)
    _legend_below(fig, [Line2D([], [], color="0.3", linestyle=s, label=h) for h, s in styles.items()])
    bar = fig.colorbar(ScalarMappable(norm, RATIO_CMAP), ax=axes, label="head rank")
    _power_of_two_ticks(bar.ax.yaxis, [norm.vmin, norm.vmax])
    fig.suptitle("Val loss against training tokens (mean over seeds; band: seed range)")
    return fig


def save_both(fig: Figure, path: str | Path) -> tuple[bytes, bytes]:
    """Write ``fig`` as a PNG at ``path`` and as an SVG beside it (same name, ``.svg``), each atomically; return
    (the PNG bytes, the SVG bytes)."""
    path = Path(path)
    data, vector = render_both(fig)
    atomic.write_bytes(path, data)
    atomic.write_bytes(path.with_suffix(".svg"), vector)
    return data, vector


def render_both(fig: Figure) -> tuple[bytes, bytes]:
    """(PNG bytes, SVG bytes) of ``fig``, its layout computed once: the PNG render lays the figure out, the SVG
    render reuses those positions (a constrained layout is about half of a render of the fit figures)."""
    data = png(fig)
    engine = fig.get_layout_engine()
    if engine is None:
        return data, svg(fig)
    fig.set_layout_engine("none")
    try:
        return data, svg(fig)
    finally:
        fig.set_layout_engine(engine)


_TO_RENDER: list[Figure] = []


def _render_one(i: int) -> tuple[bytes, bytes]:
    return render_both(_TO_RENDER[i])


def render_many(figures: list[Figure], processes: int) -> list[tuple[bytes, bytes]]:
    """:func:`render_both` of each figure, on up to ``processes`` forked processes (the figures are inherited, not
    pickled: :func:`spamlang.system.processes.fork_map`). The bytes are the same either way."""
    _TO_RENDER[:] = figures
    try:
        return fork_map(_render_one, range(len(figures)), processes)
    finally:
        _TO_RENDER.clear()


def svg(fig: Figure) -> bytes:
    """``fig`` rendered as SVG bytes (no date in its metadata and a fixed salt for its element ids, which matplotlib
    otherwise draws at random, so the same figure gives the same file)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "spamlang"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def _legend_below(fig: Figure, handles: list, columns: int = 6) -> None:
    """A figure legend under the axes, outside the data."""
    fig.legend(handles=handles, loc="outside lower center", ncols=min(columns, len(handles)), fontsize=8,
               frameon=False)


def steps_vs_ratio(table: pd.DataFrame, obs: pd.DataFrame) -> Figure | None:
    """Steps-to-learn against V/D, log-log, from :func:`spamlang.scoring.fit.fit_table` and its observations: one row of
    panels per unit (examples per symbol, tokens), one column per width D, one colour per head; each seed a marker
    (filled: learned at that value; open with an upward arrow: not learned, drawn at its budget), the censored
    power-law fit as a line with its bootstrap 95% band. Both budget protocols on the same axes where both were run:
    fixed examples per symbol (circles, solid lines) and fixed tokens (triangles, dashed lines, with the budget that
    protocol gives each V/D as a grey dotted line: where the heads' needs cross it, the fixed-token cliff)."""
    if table.empty:
        return None
    widths = sorted(table["d_model"].unique())
    colours = dict(zip(sorted(table["head"].unique()), matplotlib.colormaps["tab10"].colors * 3))
    protocols = list(dict.fromkeys(sorted(table["protocol"])))
    styles = {"examples/symbol": ("o", "-"), "tokens": ("^", "--")}
    fig = Figure(figsize=(max(3.6 * len(widths) + 0.6, 6.0), 6.8), layout="constrained")
    axes = fig.subplots(len(UNITS), len(widths), squeeze=False, sharex="col")
    for col, width in enumerate(widths):
        for row, unit in enumerate(UNITS):
            ax = axes[row, col]
            for _, fit in table[table["d_model"] == width].iterrows():
                seen = obs[(obs["group"] == fit["group"]) & (obs[unit] > 0)]
                colour = colours[fit["head"]]
                marker, line = styles[fit["protocol"]]
                learned, censored = seen[~seen["censored"]], seen[seen["censored"]]
                ax.scatter(learned["ratio"], learned[unit], color=colour, s=14, alpha=0.8, linewidths=0, marker=marker)
                if len(censored):
                    ax.errorbar(censored["ratio"], censored[unit], yerr=0.35 * censored[unit], lolims=True,
                                fmt=marker, mfc="white", mec=colour, ecolor=colour, ms=4.5, elinewidth=0.8, capsize=2)
                if fit["protocol"] == "tokens" and len(protocols) > 1:
                    budget = seen.groupby("ratio")[f"budget_{unit}"].median()
                    ax.plot(budget.index, budget, color="0.5", linestyle=":", linewidth=1.0)
                if np.isfinite(fit[f"b_{unit}"]):
                    x = np.geomspace(seen["ratio"].min(), seen["ratio"].max(), 50)
                    ax.plot(x, fit[f"prefactor_{unit}"] * x ** fit[f"b_{unit}"], color=colour, linewidth=1.4,
                            linestyle=line)
                    boot = fit[f"boot_{unit}"]
                    if len(boot) >= 2:
                        lines = np.exp(boot[:, :1] + boot[:, 1:] * np.log(x)[None])  # (resamples, points)
                        low, high = np.quantile(lines, [0.025, 0.975], axis=0)
                        ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(f"D = {width}", fontsize=10)
            if row == len(UNITS) - 1:
                ax.set_xlabel("V / D")
            if col == 0:
                ax.set_ylabel(f"{UNIT_LABELS[unit]} to learn")
    handles = [Line2D([], [], color=c, marker="o", label=h) for h, c in colours.items()]
    handles += [Line2D([], [], color="0.4", marker="o", mfc="white", linestyle="", label="not learned (at budget)")]
    if len(protocols) > 1:
        handles += [Line2D([], [], color="0.4", marker=styles[p][0], linestyle=styles[p][1], label=f"fixed {p}")
                    for p in protocols]
        handles += [Line2D([], [], color="0.5", linestyle=":", label="fixed-token budget")]
    _legend_below(fig, handles)
    fig.suptitle("Time to learn against V/D (censored fit; band: 95% bootstrap over seeds and the lr choice)"
                 if table["lr_choice"].all() else "Time to learn against V/D (censored fit; band: 95% seed bootstrap)")
    return fig


#: the training diagnostics of the direction/scale figure: (EvalPoint field, axis label, log scale)
DIRECTION_ROWS = (("grad_destroyed", "destroyed ratio", False), ("update_cosine", "update cosine with −G", False),
                  ("logit_scale", "logit scale (half-range)", True))


def direction_scale(obs: pd.DataFrame, runs: pd.DataFrame, width: int) -> Figure | None:
    """For width ``width``: the destroyed-gradient ratio, the realised update's cosine with −G and the logit scale
    over training (x: examples per symbol seen) of every configuration in ``obs``
    (:func:`spamlang.scoring.fit.observations`), one column per head, coloured by V/D; the mean over seeds with a band
    from the lowest to the highest seed, solid where most seeds learned within the budget, dashed where they did not."""
    obs = obs[obs["d_model"] == width]
    if obs.empty:
        return None
    by_id = runs.set_index("run_id")["history"]
    rows = []
    for _, seen in obs.iterrows():
        per_step = seen["budget_examples"] / seen["budget_steps"]
        for p in by_id[seen["run_id"]]:
            x = p.examples_per_symbol if p.examples_per_symbol is not None else p.step * per_step
            rows.append({"head": seen["head"], "ratio": seen["ratio"], "x": x,
                         **{name: getattr(p, name) for name, _, _ in DIRECTION_ROWS}})
    points = pd.DataFrame(rows).astype({name: float for name, _, _ in DIRECTION_ROWS})
    points = points[points["x"] > 0]
    learned = obs.groupby(["head", "ratio"])["learned"].mean() > 0.5
    heads = sorted(obs["head"].unique())
    norm = LogNorm(obs["ratio"].min(), obs["ratio"].max() * 1.0001)
    width_in = 2.9 * len(heads) + 1.4
    fig = Figure(figsize=(width_in, 7.2))  # fixed margins: a constrained layout would double the render time
    fig.subplots_adjust(left=0.75 / width_in, right=1 - 1.1 / width_in, bottom=0.14, top=0.92, wspace=0.08,
                        hspace=0.1)
    axes = fig.subplots(len(DIRECTION_ROWS), len(heads), squeeze=False, sharex=True, sharey="row")
    for col, head in enumerate(heads):
        for (ratio,), curve in points[points["head"] == head].groupby(["ratio"]):
            stats = curve.groupby("x")
            style = {"color": RATIO_CMAP(norm(ratio)), "linestyle": "-" if learned[(head, ratio)] else "--"}
            for row, (name, _, _) in enumerate(DIRECTION_ROWS):
                mean = stats[name].mean()
                if mean.notna().any():
                    axes[row, col].plot(mean.index, mean, linewidth=1.2, **style)
                    axes[row, col].fill_between(mean.index, stats[name].min(), stats[name].max(), alpha=0.12,
                                                linewidth=0, color=style["color"])
        axes[0, col].set_title(head, fontsize=10)
        axes[-1, col].set_xlabel("examples per symbol seen")
        axes[-1, col].set_xscale("log")
    for row, (_, label, log) in enumerate(DIRECTION_ROWS):
        axes[row, 0].set_ylabel(label, fontsize=9)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            if log:
                ax.set_yscale("log")
    bar = fig.colorbar(ScalarMappable(norm, RATIO_CMAP), cax=fig.add_axes((1 - 0.85 / width_in, 0.14,
                                                                            0.15 / width_in, 0.78)), label="V / D")
    _power_of_two_ticks(bar.ax.yaxis, [norm.vmin, norm.vmax])
    fig.legend(handles=[Line2D([], [], color="0.3", linestyle="-", label="learned within the budget"),
                        Line2D([], [], color="0.3", linestyle="--", label="not learned")],
               loc="lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(f"Direction and scale over training, D = {width} (mean over seeds; band: seed range)")
    return fig
