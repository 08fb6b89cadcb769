"""The leaderboard: merge result folders, rank head designs with paired tests over seeds, publish tables and plots.

Publishing results
------------------
A results folder is any folder holding run records: the ``*.json`` run records (schema ``spamlang.run/2``, or the older ``/1``, read as 2) that
``spamlang train`` and ``spamlang run`` write (``spamlang run SUITE --out DIR`` puts them in ``DIR/runs``). To publish
yours, zip the folder or commit it; nothing else is needed, since every record carries its configuration, task version,
history, device, library versions and git commit. Anyone can then rank your runs together with theirs::

    spamlang leaderboard theirs/ yours/ --out board/

Every record is checked against the schema (a file that is not a readable record is reported and skipped; a folder
with none is an error); a task whose records come in different versions is refused, since their scores are not
comparable; a run present in several folders (same run id) is kept once, with a warning. The output folder gets
``leaderboard.md``, ``leaderboard.csv`` (head ranking), ``configurations.csv`` (one row per configuration), a
self-contained ``leaderboard.html`` and the plots as PNG and SVG files. The Markdown and HTML pages state the
provenance of their runs; the CSV files are plain tables (``pandas.read_csv(path)``) whose provenance is in
``leaderboard.provenance.json``. Runs of a task with a Bayes loss over a V grid also get the scaling fits
(``fit.csv``, ``control.csv`` and their figures, see :mod:`spamlang.fit`). Runs of tasks without a Bayes loss (text)
get the tokens-to-target table (``speedup.csv``, see :mod:`spamlang.speedup`)
and its loss-vs-tokens plot.
"""
from __future__ import annotations

import base64
import html
import itertools
import json
import math
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import pandas as pd

from . import __version__, atomic, fitreport, page, plots, record
from .measure import board as models
from .errors import SpamLangError
from .floors import CACHE_NAME, FloorCache
from .frames import config_key, load_runs, python_values
from .scorer import VERDICTS, learnability, score
from .stats import EXACT_MAX, holm, mean_ci, min_p_value, wilcoxon_greater
from .tables import format_table, markdown_table, with_params
from .speedup import format_speedup, speedup_table

FORMATS = ("md", "csv", "html")
#: the table files of each format
TABLE_FILES = {"md": ("leaderboard.md",),
               "csv": ("leaderboard.csv", "configurations.csv", "speedup.csv", "models.csv", "fit.csv", "control.csv"),
               "html": ("leaderboard.html",)}
#: significance level of the paired test that puts one head design ahead of the next
ALPHA = 0.05
HEAD_FIELDS = ("head", "head_rank", "head_params")


# -- loading --------------------------------------------------------------------------------------------------------
def load_folders(folders: Iterable[str | Path]) -> pd.DataFrame:
    """The run records of every folder (see :func:`spamlang.frames.load_runs`) merged as Python values
    (:func:`spamlang.frames.python_values`), with ``folder`` added.

    A folder without records, or a task recorded in different versions, raises SpamLangError; a run id already read
    from an earlier folder is skipped with a warning. A folder holding ``spamlang measure`` records is set aside in
    ``attrs["measurements"]`` for the models table (:mod:`spamlang.measure.board`).
    """
    frames, measured = [], []
    for folder in folders:
        if models.load([folder]):  # a folder of measurement records feeds the models table
            measured.append(str(folder))
            continue
        frame = load_runs(folder)
        frame["folder"] = str(folder)
        frames.append(frame)
    if not frames and not measured:
        raise SpamLangError("no result folders given")
    if not frames:
        runs = pd.DataFrame()
        runs.attrs = {"folders": [], "measurements": measured}
        return runs
    runs = python_values(pd.concat(frames, ignore_index=True))
    repeated = runs["run_id"].duplicated()
    if repeated.any():
        first = runs[~repeated].set_index("run_id")["path"]
        example = runs[repeated].iloc[0]
        warnings.warn(f"{int(repeated.sum())} run(s) appear in more than one folder; kept the first copy of each "
                      f"(e.g. {example['path']} repeats {first[example['run_id']]})", RuntimeWarning, stacklevel=2)
        runs = runs[~repeated].reset_index(drop=True)
    check_versions(runs)
    runs.attrs = {"folders": [str(f) for f in dict.fromkeys(runs["folder"])], "measurements": measured}
    return runs


def check_versions(runs: pd.DataFrame) -> None:
    """Raise SpamLangError if a task's records come in more than one task version, naming one file of each."""
    known = runs[runs["task_version"].notna()]
    for task, group in known.groupby("task", sort=True):
        files = group.groupby("task_version", sort=True)["path"].first()
        if len(files) > 1:
            versions = ", ".join(f"v{version} ({path})" for version, path in files.items())
            raise SpamLangError(f"task '{task}' has records of {len(files)} task versions, which one ranking cannot "
                                f"compare: {versions}; rank each version separately")


# -- ranking --------------------------------------------------------------------------------------------------------
def design_label(row: Mapping) -> str:
    """A head design as the tables show it: ``linear``, ``lowrank:2``, ``mos(components=4)``."""
    head = row["head"] if pd.isna(row["head_rank"]) else f"{row['head']}:{row['head_rank']}"
    return with_params(head, row["head_params"])


def chosen_runs(scored: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs behind each row of ``scored`` (those at its chosen swept values), one row per run: ``config`` (the
    row's index in ``scored``), ``design`` (see :func:`design_label`), ``setting`` (the configuration less its head),
    ``task`` (with its parameters), ``seed``, ``status``, ``history`` and ``learnability`` (of the run, against the
    task's Bayes loss rather than the head's own floor, so that a head whose floor sits at its starting loss is not
    ranked up for failing to express the task; a diverged run counts as 0, a failed one as NaN)."""
    columns = list(scored.columns)
    swept = [c[:-len("_tried")] for c in columns if c.endswith("_tried")]
    by = [c for c in columns[:columns.index("n_seeds")] if c not in swept and not c.endswith("_tried")]
    fields = by + swept
    index: dict[tuple, list] = {}
    for i, run in runs.iterrows():
        index.setdefault(tuple(config_key(run[f]) for f in fields), []).append(i)
    rows = []
    for config, row in scored.iterrows():
        setting = json.dumps([config_key(row[f]) for f in by if f not in HEAD_FIELDS], default=str)
        for i in index.get(tuple(config_key(row[f]) for f in fields), []):
            run = runs.loc[i]
            value = (learnability([p.test_loss for p in run["history"]], row["bayes_loss"]) if run["status"] == "ok"
                     else 0.0 if run["status"] == "diverged" else math.nan)
            rows.append({"config": config, "design": design_label(row), "setting": setting,
                         "task": with_params(row["task"], row["task_params"]), "seed": run["seed"],
                         "status": run["status"], "history": run["history"], "learnability": value})
    return pd.DataFrame(rows, columns=["config", "design", "setting", "task", "seed", "status", "history",
                                       "learnability"])


def head_ranking(scored: pd.DataFrame, runs: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per head design, best first: ``rank`` (``"2"``, or ``"=1"`` when the paired test does not put the
    design above it ahead of this one), ``head``, ``learnability`` (mean across tasks of the mean over the design's
    configurations of each task of its per-run learnability at the chosen swept values), ``ci`` (half-width of the 95% t-interval over seeds of the
    design's per-seed mean), ``tasks``, ``configs``, ``seeds``, ``learned`` (configurations with verdict learned),
    and against the next design: ``n_next`` (runs paired on the same configuration and seed), ``p_next`` (one-sided
    Wilcoxon signed-rank test, :func:`wilcoxon_greater`), ``p_holm`` (``p_next`` Holm-adjusted over the table's
    tests) and ``ahead`` (p_holm < ``alpha``).

    A design none of whose runs has a learnability (all failed) is left out, with a warning.
    """
    chosen = chosen_runs(scored, runs)
    unscored = sorted(set(chosen["design"]) - set(chosen.dropna(subset=["learnability"])["design"]))
    if unscored:
        warnings.warn(f"not ranked, no run with a learnability (all failed): "
                      f"{', '.join(unscored)}", RuntimeWarning)
    chosen = chosen.dropna(subset=["learnability"])
    rows, paired = [], {}
    for design, group in chosen.groupby("design", sort=False):
        per_config = group.groupby("config")["learnability"].mean()
        per_task = group.groupby(["task", "config"])["learnability"].mean().groupby(level="task").mean()
        rows.append({"head": design, "learnability": per_task.mean(),
                     "ci": mean_ci(group.groupby("seed")["learnability"].mean())[1],
                     "tasks": group["task"].nunique(), "configs": len(per_config), "seeds": group["seed"].nunique(),
                     "learned": int((scored.loc[per_config.index, "verdict"] == "learned").sum())})
        paired[design] = group.set_index(["setting", "seed"])["learnability"]
    columns = ["rank", "head", "learnability", "ci", "tasks", "configs", "seeds", "learned", "n_next", "p_next",
               "p_holm", "ahead"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).sort_values(["learnability", "head"], ascending=[False, True], ignore_index=True)
    tests = []
    for above, below in zip(table["head"], table["head"][1:]):
        pairs = pd.concat([paired[above], paired[below]], axis=1, join="inner")
        tests.append((len(pairs), wilcoxon_greater(pairs.iloc[:, 0] - pairs.iloc[:, 1]) if len(pairs) else math.nan))
    table["n_next"], table["p_next"] = zip(*tests, (0, math.nan))
    table["p_holm"] = holm(table["p_next"])
    table["ahead"] = table["p_holm"] < alpha
    ranks = ["1"]
    for i in range(1, len(table)):
        ranks.append(str(i + 1) if table["ahead"][i - 1] else "=" + ranks[-1].lstrip("="))
    table["rank"] = ranks
    return table[columns]


def own_budget(scored: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``scored`` at their suite's own budget: a configuration the runner's budget round added (run only
    for the heads that failed) would rank those heads on settings the others never ran."""
    if "budget_round" not in scored.columns:
        return scored
    return scored[[not r for r in scored["budget_round"]]]


def without_copy_tasks(scored: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of ``scored`` on tasks where no head starts with the answer: the tasks on which a head that shares the
    input embedding starts with the copy solution (``copy_at_init``, see :mod:`spamlang.tying`) are left out for
    every head, so that the ranking stays paired; None when no row starts with it."""
    if "copy_at_init" not in scored.columns or not any(scored["copy_at_init"]):
        return None
    return scored[[not c for c in scored["copies_input"]]]


def copy_free_ranking_markdown(scored: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The section that ranks the heads again without the copy tasks (empty when no row starts with the copy
    solution), with the tasks it leaves out."""
    kept = without_copy_tasks(scored)
    if kept is None:
        return ""
    left_out = sorted({with_params(t, p) for t, p, c in zip(scored["task"], scored["task_params"],
                                                             scored["copies_input"]) if c})
    note = (f"embed_init/tying: a head that shares the input embedding starts with the copy solution on "
            f"{', '.join(left_out)} (its logit for the current token is ‖e_x‖², the largest), so the ranking above "
            f"counts those tasks for it at initialisation. The ranking below leaves them out for every head.")
    ranking = ranking_markdown(head_ranking(kept, runs)) if len(kept) else "(no other tasks)\n"
    return f"## Head ranking without copy tasks\n\n{note}\n\n{ranking}"


# -- provenance -----------------------------------------------------------------------------------------------------
def provenance(runs: pd.DataFrame, command: str) -> dict:
    """Where the numbers come from: the command, folders, suites, task versions, commits, devices, library versions
    and the date range of the runs (as recorded by :func:`load_folders`), and the scorer's own version."""
    def env(key: str) -> list[str]:
        return sorted({str(e[key]) for e in runs["env"] if e.get(key) is not None})

    dates = sorted(c for c in runs["created"] if c)
    tasks = {(t, v) for t, v in zip(runs["task"], runs["task_version"]) if v is not None}
    return {"command": command, "runs": len(runs), "folders": list(runs.attrs.get("folders", [])),
            "suites": sorted({f"{s['name']} v{s['version']}" for s in runs["suite"] if s}),
            "tasks": [f"{t} v{v}" for t, v in sorted(tasks)], "commits": env("git_commit"), "devices": env("device"),
            "torch": env("torch"), "python": env("python"), "spamlang": env("spamlang"),
            "dates": [dates[0], dates[-1]] if dates else [],
            "scorer": f"spamlang {__version__} ({record.git_commit() or 'not in git'})"}


# -- output ---------------------------------------------------------------------------------------------------------
def _fewest_pairs(alpha: float = ALPHA) -> int:
    """The fewest pairs with which the exact test can reach p < alpha."""
    return next(n for n in itertools.count(1) if min_p_value(n) < alpha)


_RANKING_LEGEND = (
    f"learnability: mean over tasks of the mean over the design's configurations of that task of its runs' "
    f"learnability at the chosen lr, measured here "
    f"against the Bayes loss (not the head's floor), so expressivity failures count too (a diverged run counts 0); "
    f"95% CI: t-interval over seeds of the design's per-seed mean. learned: configurations learned.\n"
    f"ahead of next: one-sided Wilcoxon signed-rank test (exact up to {EXACT_MAX} pairs, normal approximation above, "
    f"zero differences dropped) of this design's learnability against the next one's, paired by configuration and "
    f"seed, Holm-corrected over the table's tests (p shown adjusted), at alpha {ALPHA}; a design not shown behind "
    f"the one above shares its rank (=k). With n pairs the exact test cannot go below p = 2^-n, so fewer than "
    f"{_fewest_pairs()} pairs can never put one design ahead.")


def _comparison(ahead: bool, p: float, n: int) -> str:
    """The 'ahead of next' cell: the test's answer, and why it could not be yes when too few pairs were shared."""
    if n == 0:
        return "- (no shared runs)"
    few = "" if min_p_value(n) < ALPHA else f"; too few pairs: p >= {min_p_value(n):.2g} whatever the data"
    return f"{'yes' if ahead else 'no'} (p={p:.2g}, n={n}{few})"


def ranking_markdown(ranking: pd.DataFrame) -> str:
    """The head ranking as a Markdown table with its legend."""
    if ranking.empty:
        return "(no head design has a learnability)\n"
    rows = []
    for i, row in ranking.iterrows():
        mean, ci = row["learnability"], row["ci"]
        last = i == len(ranking) - 1
        rows.append({"rank": row["rank"], "head": row["head"], "learnability": f"{mean:.3f}",
                     "95% CI": "-" if math.isnan(ci) else f"{max(0, mean - ci):.2f}–{min(1, mean + ci):.2f}",
                     "tasks": str(row["tasks"]), "configs": str(row["configs"]), "seeds": str(row["seeds"]),
                     "learned": f"{row['learned']}/{row['configs']}",
                     "ahead of next": "" if last else _comparison(row["ahead"], row["p_holm"], row["n_next"])})
    numeric = re.compile(r"[=\d.\-–/ ]*").fullmatch
    return markdown_table(rows, lambda cell: numeric(cell) is not None) + "\n" + _RANKING_LEGEND + "\n"


def _provenance_items(prov: Mapping) -> list[tuple[str, str]]:
    def listed(values: Sequence[str]) -> str:
        return ", ".join(values) or "-"

    libraries = "; ".join(f"{name} {listed(prov[name])}" for name in ("torch", "python", "spamlang"))
    return [("command", prov["command"]), ("runs", f"{prov['runs']} from {listed(prov['folders'])}"),
            ("suites", listed(prov["suites"])), ("tasks", listed(prov["tasks"])), ("commits", listed(prov["commits"])),
            ("devices", listed(prov["devices"])), ("libraries", libraries),
            ("run dates", " to ".join(prov["dates"]) or "-"), ("scored with", prov["scorer"])]


_CAPTIONS = {"learnability.png": "Learnability by task and head design (mean over each task's configurations at "
                                   "the suite's own budget, as in the ranking)",
             "curves.png": "Learning curves of the spam task, coloured by V/rank",
             "kept_cos.png": "Kept gradient cosine against V/rank, with the isotropic baseline sqrt(rank/V)",
             "tokens.png": "Val loss against training tokens by head rank, with seed bands (tasks without a Bayes loss)"}


def markdown(ranking: pd.DataFrame, scored: pd.DataFrame, prov: Mapping, images: Sequence[str] = (),
             speedup: str = "", fits: str = "", rankings: str = "") -> str:
    """The leaderboard document: title, provenance, head ranking (and the further ``rankings`` sections, when given),
    configuration table, the tokens-to-target table ``speedup`` (when given), the scaling fits section ``fits`` (when
    given) and links to ``images``."""
    lines = ["# SpamLang leaderboard", "", "## Provenance", ""]
    lines += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}"
              for key, value in _provenance_items(prov)]
    lines += ["", "## Head ranking", "", ranking_markdown(ranking)] + ([rankings] if rankings else [])
    lines += ["## Configurations", "", format_table(scored, "md")]
    if speedup:
        lines += ["## Tokens to target", "", speedup]
    if fits:
        lines += [fits]
    if images:
        lines += ["## Plots", ""] + [f"![{_caption(name)}]({name})\n" for name in images]
    return "\n".join(lines).rstrip("\n") + "\n"


def _caption(name: str) -> str:
    if name in _CAPTIONS:
        return _CAPTIONS[name]
    return fitreport.caption(name) if name.startswith(("steps_to_learn", "direction_D")) else name


def csv(table: str, prov: Mapping) -> str:
    """A CSV ``table`` headed by its provenance as ``# ``-comment lines (read it with ``pandas.read_csv(...,
    comment='#')``), as ``spamlang fit`` writes its tables; the leaderboard's are plain, with
    :data:`PROVENANCE_FILE`."""
    return "".join(f"# {key}: {value}\n" for key, value in _provenance_items(prov)) + table


#: the JSON file beside the CSV tables that holds their provenance (the CSV files are plain tables for ``read_csv``)
PROVENANCE_FILE = "leaderboard.provenance.json"
PROVENANCE_SCHEMA = "spamlang.leaderboard-provenance/1"


def _sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def provenance_sidecar(prov: Mapping, tables: Mapping[str, str], out: Path) -> str:
    """The text of :data:`PROVENANCE_FILE`: ``schema``, the provenance of the runs (see :func:`provenance`) and, in
    ``tables``, the sha256 of each CSV table about to be written to ``out``, with that of the file of the same name
    it replaces (so that a file is still known as the tool's own if the writing stops between the two), and that of
    an earlier table left in ``out`` and not rewritten."""
    hashes = {}
    for name in dict.fromkeys([*tables, *TABLE_FILES["csv"]]):  # a table of an earlier run, not rewritten, stays known
        current = out / name
        before = [_sha256(current.read_bytes())] if current.is_file() and _is_ours(current) else []
        new = [_sha256(tables[name].encode())] if name in tables else []
        if new or before:
            hashes[name] = list(dict.fromkeys([*new, *before]))
    return json.dumps({"schema": PROVENANCE_SCHEMA, **prov, "tables": hashes}, indent=1) + "\n"


def _recorded_hashes(out: Path) -> dict[str, list[str]]:
    """The CSV hashes that ``out``'s provenance file lists (none when it is missing or not the tool's)."""
    path = out / PROVENANCE_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() and _is_ours(path) else {}
    except (OSError, ValueError):
        return {}
    return data.get("tables", {}) if isinstance(data.get("tables"), dict) else {}


def _inline(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _html_table(lines: list[str]) -> str:
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    right = [c.endswith(":") for c in cells[1]]
    head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td{' class=num' if r else ''}>{_inline(c)}</td>" for c, r in zip(row, right))
                   + "</tr>" for row in cells[2:])
    return page.board(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _html_heading(line: str) -> str:
    level = len(line) - len(line.lstrip("#"))
    return f"<h{level}>{_inline(line[level:].strip())}</h{level}>"


def _html_image(line: str, images: Mapping[str, bytes]) -> str:
    """An image line's plot as an ``img`` with the image inline: its SVG (vector) where ``images`` holds one, else
    its PNG."""
    alt, name = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip()).groups()
    vector = images.get(str(Path(name).with_suffix(".svg")))
    kind, data = ("svg+xml", vector) if vector is not None else ("png", images[name])
    return page.plot(f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{base64.b64encode(data).decode()}">')


def to_html(text: str, images: Mapping[str, bytes]) -> str:
    """The Markdown that :func:`markdown` writes as one self-contained HTML page (inline CSS and script, ``images``
    embedded in base64, as SVG where ``images`` also holds ``<name>.svg``, else PNG): sortable, filterable tables that
    scroll sideways on a narrow screen (see :mod:`spamlang.page`)."""
    def kind(line: str) -> str:
        return next((k for k, p in (("table", "|"), ("item", "- "), ("heading", "#"), ("image", "![")) if
                     line.startswith(p)), "text" if line.strip() else "blank")

    parts = []
    for k, group in itertools.groupby(text.splitlines(), kind):
        group = list(group)
        if k == "table":
            parts.append(_html_table(group))
        elif k == "item":
            parts.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in group) + "</ul>")
        elif k == "text":
            parts.append("<p>" + "<br>".join(map(_inline, group)) + "</p>")
        elif k == "heading":
            parts += map(_html_heading, group)
        elif k == "image":
            parts += [_html_image(line, images) for line in group]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>SpamLang leaderboard</title>"
            f"{page.VIEWPORT}<style>{page.STYLE}</style></head>\n<body>\n" + "\n".join(parts) +
            f"\n<script>{page.SCRIPT}</script>\n</body></html>\n")


def summary(ranking: pd.DataFrame, scored: pd.DataFrame, top: int = 3) -> str:
    """One line of what was learned: the top of the head ranking, the verdict counts, and how many comparisons had
    too few pairs to ever be significant."""
    heads = ", ".join(f"{row['rank']} {row['head']} ({row['learnability']:.3f})"
                      for _, row in ranking.head(top).iterrows()) or "none ranked"
    more = f" of {len(ranking)}" if len(ranking) > top else ""
    counts = scored["verdict"].value_counts()
    verdicts = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts)
    few = int(sum(0 < n and min_p_value(n) >= ALPHA for n in ranking["n_next"]))
    caveat = f"; {few} neighbouring pair(s) share too few runs (< {_fewest_pairs()}) to ever differ" if few else ""
    return f"heads: {heads}{more}; verdicts of {len(scored)} configurations: {verdicts}{caveat}"


#: how each file the leaderboard writes begins (by name, else by suffix), so that a file of that name the tool did
#: not write is never replaced; models.csv is the table of :mod:`spamlang.measure.board`, headed by its columns. The
#: other CSV tables are known by their sha256 in :data:`PROVENANCE_FILE` (or, written by older versions, by their
#: ``# command: `` first line).
_SIGNATURES = {"models.csv": b"model,step,", ".md": b"# SpamLang leaderboard", ".csv": b"# command: ",
               PROVENANCE_FILE: b'{\n "schema": "' + PROVENANCE_SCHEMA.encode() + b'"',
               ".html": b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>SpamLang leaderboard</title>",
               ".png": b"\x89PNG\r\n\x1a\n", "fit.md": b"# SpamLang scaling fits",
               ".svg": b'<?xml version="1.0" encoding="utf-8" standalone="no"?>\n<!DOCTYPE svg'}


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is a leaderboard file written by this tool (a PNG or SVG: one rendered by matplotlib; a CSV
    table: one whose sha256 the provenance file lists)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    signature = _SIGNATURES.get(path.name, _SIGNATURES.get(path.suffix))
    if signature is not None and head.startswith(signature):
        return path.suffix not in (".png", ".svg") or b"Matplotlib" in head
    if path.suffix == ".csv" and path.name != "models.csv":
        return _sha256(path.read_bytes()) in _recorded_hashes(path.parent).get(path.name, [])
    return False


def check_outputs(out: Path, names: Iterable[str]) -> None:
    """Refuse (SpamLangError) to replace a file in ``out`` that the leaderboard did not write."""
    if out.exists() and not out.is_dir():
        raise SpamLangError(f"output {out} is a file, not a folder; give a folder path")
    foreign = [out / n for n in names if (out / n).exists() and not ((out / n).is_file() and _is_ours(out / n))]
    if foreign:
        raise SpamLangError(f"{foreign[0]} exists and was not written by 'spamlang leaderboard'; it is left as it is "
                            f"(move it away or choose another --out)")


class Written(NamedTuple):
    """What :func:`write` made: the Markdown leaderboard as a terminal shows it (the file's text without the plot
    links), the paths written, the one-line :func:`summary`, and the head ranking and scored configurations (None
    when there were only measurement records)."""
    text: str
    files: list[Path]
    summary: str
    ranking: pd.DataFrame | None = None
    scored: pd.DataFrame | None = None


def write(runs: pd.DataFrame, out: str | Path, formats: Iterable[str] = FORMATS, command: str = "") -> Written:
    """Score ``runs`` (as :func:`load_folders` returns them; floors cached in ``out``), write the leaderboard files
    of ``formats`` and the PNG plots into ``out``, and return what was made (see :class:`Written`)."""
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise SpamLangError(f"leaderboard format must be one of {', '.join(FORMATS)}, got {bad[0]!r}")
    out = Path(out)
    measured = models.load(runs.attrs.get("measurements", []))
    model_figures = models.figures(measured)
    fits = _fits(runs) if not runs.empty else None
    fit_figures = fitreport.figures(fits, runs) if fits else {}
    check_outputs(out, [*_CAPTIONS, *_svgs(_CAPTIONS), *model_figures, *fit_figures, *_svgs(fit_figures),
                        *(name for fmt in formats for name in TABLE_FILES[fmt]),
                        *([PROVENANCE_FILE] if "csv" in formats and not runs.empty else [])])
    if runs.empty:  # measurement records only: the models section alone
        images = {name: plots.save(fig, out / name) for name, fig in model_figures.items()}
        text = "# SpamLang leaderboard\n\n" + models.markdown(measured, list(images))
        files = {"md": {"leaderboard.md": text}, "csv": {"models.csv": models.csv(measured)},
                 "html": {"leaderboard.html": to_html(text, images)}}
        written = _write_files(out, files, formats, [out / name for name in images])
        return Written(f"# SpamLang leaderboard\n\n{models.markdown(measured, [])}", written,
                       f"models: {len(measured)} measurement(s); no training runs to rank")
    scored = score(runs, cache=FloorCache(out / CACHE_NAME))
    chosen = chosen_runs(scored, runs)
    ranking = head_ranking(own_budget(scored), runs)
    rankings = copy_free_ranking_markdown(own_budget(scored), runs)
    prov = provenance(runs, command)
    speedup = speedup_table(runs[runs["bayes_loss"].map(lambda b: b is None or not math.isfinite(b))])
    figures = {"learnability.png": plots.learnability_heatmap(own_budget(scored)),  # the ranking's configurations
               "curves.png": plots.learning_curves(scored, chosen),
               "kept_cos.png": plots.kept_cosine(scored),
               "tokens.png": plots.loss_vs_tokens(speedup, runs), **fit_figures, **model_figures}
    saved = {name: plots.save_both(fig, out / name) for name, fig in figures.items() if fig is not None}
    images = {name: data for name, (data, _) in saved.items()}
    vectors = {_svgs([name])[0]: vector for name, (_, vector) in saved.items()}
    written = [out / n for name in images for n in (name, *_svgs([name]))]
    speedup_text = format_speedup(speedup) if len(speedup) else ""
    fit_text = fitreport.markdown(fits) if fits else ""
    text = markdown(ranking, scored, prov, [name for name in images if name not in model_figures], speedup_text,
                    fit_text, rankings)
    shown = markdown(ranking, scored, prov, speedup=speedup_text, fits=fit_text,
                     rankings=rankings)  # a terminal: no image links
    if measured:
        text += "\n" + models.markdown(measured, [name for name in images if name in model_figures])
        shown += "\n" + models.markdown(measured, [])
    tables = {"leaderboard.csv": ranking.to_csv(index=False), "configurations.csv": format_table(scored, "csv"),
              **({"speedup.csv": format_speedup(speedup, "csv")} if len(speedup) else {}),
              **({"fit.csv": fitreport.fit_csv(fits.table), "control.csv": format_table(fits.control, "csv")}
                 if fits else {}),
              **({"models.csv": models.csv(measured)} if measured else {})}
    files = {"md": {"leaderboard.md": text},
             "csv": {PROVENANCE_FILE: provenance_sidecar(prov, tables, out), **tables},  # the hashes first
             "html": {"leaderboard.html": to_html(text, {**images, **vectors})}}
    return Written(shown, _write_files(out, files, formats, written), summary(ranking, scored), ranking, scored)


def _write_files(out: Path, files: dict, formats: list[str], written: list[Path]) -> list[Path]:
    for fmt in formats:
        for name, content in files[fmt].items():
            atomic.write_text(out / name, content)
            written.append(out / name)
    return written


# -- scaling fits ---------------------------------------------------------------------------------------------------
def _svgs(names: Iterable[str]) -> list[str]:
    """The SVG twin of each PNG name (see :func:`spamlang.plots.save_both`)."""
    return [str(Path(name).with_suffix(".svg")) for name in names if name.endswith(".png")]


def _fits(runs: pd.DataFrame) -> "fitreport.Fits | None":
    """The scaling fits of ``runs`` where the data allow them (a task with a Bayes loss run over a V grid), else
    None."""
    try:
        return fitreport.fits(runs)
    except SpamLangError:
        return None


def write_fit(runs: pd.DataFrame, out: str | Path, command: str = "", resamples: int = fitreport.fit.RESAMPLES,
              seed: int = fitreport.fit.BOOTSTRAP_SEED) -> tuple[str, list[Path]]:
    """Fit ``runs`` (as :func:`load_folders` returns them; SpamLangError without a task with a Bayes loss or without
    a V grid) and write ``fit.md``, ``fit.csv``, ``control.csv`` and the fit figures (PNG and SVG) into ``out``,
    replacing only files this tool wrote; return the Markdown as a terminal shows it (no image links) and the paths
    written."""
    if runs.empty:
        raise SpamLangError("no training runs to fit (only measurement records)")
    fits = fitreport.fits(runs, resamples, seed)
    out = Path(out)
    figures = fitreport.figures(fits, runs)
    names = ["fit.md", "fit.csv", "control.csv", *figures, *_svgs(figures)]
    check_outputs(out, names)
    prov = provenance(runs, command)
    head = ["# SpamLang scaling fits", "", "## Provenance", ""]
    head += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in _provenance_items(prov)]
    head = "\n".join(head) + "\n\n"
    files = {"fit.md": head + fitreport.markdown(fits, list(figures)),
             "fit.csv": csv(fitreport.fit_csv(fits.table), prov),
             "control.csv": csv(format_table(fits.control, "csv"), prov)}
    rendered = {name: (plots.png(fig), plots.svg(fig)) for name, fig in figures.items()}  # all before any write
    written = []
    for name, (data, vector) in rendered.items():
        atomic.write_bytes(out / name, data)
        atomic.write_bytes(out / _svgs([name])[0], vector)
        written += [out / name, out / _svgs([name])[0]]
    for name, content in files.items():
        atomic.write_text(out / name, content)
        written.append(out / name)
    return head + fitreport.markdown(fits), written
