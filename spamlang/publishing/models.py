"""The leaderboard's models section: a table of measurement records (Markdown, CSV) and two plots (destroyed ratio
against the isotropic baseline over models; the cumulative spectra of the logit gradient)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spamlang.measure import record
from spamlang.publishing.tables import markdown_table

LEGEND = (
    "destroyed: per-token ‖g − gQQᵀ‖/‖g‖ (mean, median), Q an orthonormal basis of the output embedding's column "
    "space; baseline: sqrt(1 − rank/V), what a direction unrelated to it would lose; kept cos: mean per-token "
    "sqrt(1 − r²). k70 … k99.9: components of the batch logit gradient G (N × V) holding that share of ‖G‖² "
    "(a range a–b where a sketch bounds it, a–? where it cannot tell); share 2r: ‖G‖² share a rank-2·rank update "
    "can represent. update: loss decrease of the realisable step over the ideal step −G at equal norm, first order "
    "/ actual.")


#: cells right-aligned in the Markdown table: numbers, ranges, pairs and "-"
NUMERIC = re.compile(r"[-+\d.,–?/ e]+").fullmatch


def load(folders: Iterable[str | Path]) -> list[dict]:
    """The measurement records found (recursively) under ``folders``, ordered by model path and step."""
    records = []
    for folder in map(Path, folders):
        for path in sorted(folder.rglob("*.json")) if folder.is_dir() else ():
            if record.is_measurement(path):
                records.append(record.read(path))
    return sorted(records, key=lambda r: (str(Path(r["model"]["path"]).parent), r["model"]["step"] or -1,
                                          r["model"]["name"]))


def _label(rec: dict) -> str:
    return rec["model"]["name"]


def _count(pair: list) -> str:
    lo, hi = pair
    if lo == hi:
        return "-" if lo is None else str(lo)
    return f"{lo}–{'?' if hi is None else hi}"


def rows(records: list[dict]) -> pd.DataFrame:
    """One row per record: the numbers the table shows, unformatted."""
    out = []
    for rec in records:
        m, pt, spec, upd = rec["model"], rec["per_token"], rec["spectrum"], rec["update"]
        out.append({"model": _label(rec), "step": m["step"], "architecture": m["architecture"],
                    "V": m["vocab_size"], "D": m["hidden_size"], "rank": m["head_rank"], "tied": m["tied"],
                    "tokens": rec["text"]["tokens"], "loss": upd["loss"],
                    "destroyed_mean": pt["destroyed"]["mean"], "destroyed_median": pt["destroyed"]["q50"],
                    "baseline": pt["baseline"], "kept_cos_mean": pt["kept_cos"]["mean"],
                    "frobenius_destroyed": pt["frobenius_destroyed"], "spectrum_method": spec["method"],
                    **{f"k{level}": _count(pair) for level, pair in spec["components"].items()},
                    "share_2r": spec["share_2r"][0], "share_2r_hi": spec["share_2r"][1],
                    "update_ratio_first_order": upd["ratio_first_order"], "update_ratio_actual": upd["ratio_actual"],
                    "tokens_per_second": rec["timing"]["tokens_per_second"], "measure_id": rec["measure_id"]})
    return pd.DataFrame(out)


def _share(lo: float, hi: float) -> str:
    return f"{lo:.3f}" if hi - lo < 5e-4 else f"{lo:.3f}–{hi:.3f}"


def summary_table(records: list[dict]) -> str:
    """The models table in Markdown, with its legend."""
    if not records:
        return "(no measurements)\n"
    cells = []
    for r in rows(records).to_dict(orient="records"):
        cells.append({"model": r["model"],
                      "step": "-" if r["step"] is None or pd.isna(r["step"]) else str(int(r["step"])),
                      "V": f"{r['V']:,}", "D": str(r["D"]), "rank": str(r["rank"]),
                      "tied": "yes" if r["tied"] else "no", "tokens": f"{r['tokens']:,}", "loss": f"{r['loss']:.3f}",
                      "destroyed": f"{r['destroyed_mean']:.4f} / {r['destroyed_median']:.4f}",
                      "baseline": f"{r['baseline']:.4f}", "kept cos": f"{r['kept_cos_mean']:.3f}",
                      **{f"k{level}": r[f"k{level}"] for level in ("70", "90", "99", "99.9")},
                      "share 2r": _share(r["share_2r"], r["share_2r_hi"]),
                      "update": f"{r['update_ratio_first_order']:.3g} / {r['update_ratio_actual']:.3g}",
                      "tok/s": f"{r['tokens_per_second']:,.0f}"})
    return markdown_table(cells, NUMERIC) + "\n" + LEGEND + "\n"


def suppression_plot(records: list[dict]) -> Figure | None:
    """Per-token destroyed ratio (mean, with the 25–75% range) against the isotropic baseline, one column per
    model."""
    if not records:
        return None
    fig = Figure(figsize=(max(5.0, 0.9 * len(records) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(records))
    mean = [r["per_token"]["destroyed"]["mean"] for r in records]
    low = [r["per_token"]["destroyed"]["mean"] - r["per_token"]["destroyed"]["q25"] for r in records]
    high = [r["per_token"]["destroyed"]["q75"] - r["per_token"]["destroyed"]["mean"] for r in records]
    ax.errorbar(x, mean, yerr=[np.maximum(low, 0), np.maximum(high, 0)], fmt="o", color="C0", capsize=3,
                label="destroyed ratio (mean, 25–75%)")
    ax.scatter(x, [r["per_token"]["baseline"] for r in records], marker="_", s=400, color="black",
               label="isotropic baseline sqrt(1 − rank/V)", zorder=3)
    ax.set_xticks(x, [_label(r) for r in records], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of the logit gradient's norm destroyed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("How much of each token's logit gradient the LM head destroys")
    return fig


def spectrum_plot(records: list[dict]) -> Figure | None:
    """Cumulative share of ‖G‖² against the number of components (log scale), one line per model (a band where a
    sketch bounds it), with each model's 2·rank marked."""
    if not records:
        return None
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"].colors
    for i, rec in enumerate(records):
        curve, colour = rec["spectrum"]["curve"], colours[i % len(colours)]
        ax.plot(curve["k"], curve["lo"], color=colour, label=_label(rec))
        if rec["spectrum"]["method"] != "exact":
            ax.fill_between(curve["k"], curve["lo"], curve["hi"], color=colour, alpha=0.2, linewidth=0)
        ax.axvline(rec["spectrum"]["rank_2r"], color=colour, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("components k (dotted: 2·rank)")
    ax.set_ylabel("share of ‖G‖² in the top k")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Spectrum of the batch logit gradient")
    return fig


def figures(records: list[dict]) -> dict[str, Figure]:
    """The models section's plots by file name (those with something to draw)."""
    figs = {"models_destroyed.png": suppression_plot(records), "models_spectrum.png": spectrum_plot(records)}
    return {name: fig for name, fig in figs.items() if fig is not None}


def markdown(records: list[dict], images: Iterable[str]) -> str:
    """The models section of the leaderboard document."""
    lines = ["## Models", "", summary_table(records)]
    lines += [f"![{name[:-4].replace('_', ' ')}]({name})\n" for name in images]
    return "\n".join(lines)


def csv(records: list[dict]) -> str:
    return rows(records).to_csv(index=False)
