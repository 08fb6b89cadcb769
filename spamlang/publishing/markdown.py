"""The leaderboard as Markdown and CSV: the head ranking with its legend, provenance, configurations, captions,
and the one-line summary."""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import pandas as pd

from spamlang.publishing import fitreport
from spamlang.publishing import models as models
from spamlang.publishing.ranking import ALPHA, _fewest_pairs, head_ranking, without_copy_tasks
from spamlang.publishing.tables import format_table, markdown_table, with_params
from spamlang.scoring.scorer import VERDICTS
from spamlang.scoring.stats import EXACT_MAX, min_p_value


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
             "tokens.png": "Val loss against training tokens by head rank, with seed bands (tasks without a Bayes "
                           "loss)"}


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
