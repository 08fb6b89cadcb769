"""The leaderboard: merge result folders, rank head designs with paired tests over seeds, publish tables and plots.

Publishing results
------------------
A results folder is any folder holding run records: the ``*.json`` run records (schema ``spamlang.run/2``, or the older
``/1``, read as 2) that ``spamlang train`` and ``spamlang run`` write (``spamlang run SUITE --out DIR`` puts them in
``DIR/runs``). To publish yours, zip the folder or commit it; nothing else is needed, since every record carries its
configuration, task version, history, device, library versions and git commit. Anyone can then rank your runs together
with theirs::

    spamlang leaderboard theirs/ yours/ --out board/

Every record is checked against the schema (a file that is not a readable record is reported and skipped; a folder
with none is an error); a task whose records come in different versions is refused, since their scores are not
comparable; a run present in several folders (same run id) is kept once, with a warning. The output folder gets
``leaderboard.md``, ``leaderboard.csv`` (head ranking), ``configurations.csv`` (one row per configuration), a
self-contained ``leaderboard.html`` and the plots as PNG and SVG files. The Markdown and HTML pages state the
provenance of their runs; the CSV files are plain tables (``pandas.read_csv(path)``) whose provenance is in
``leaderboard.provenance.json``. Runs of a task with a Bayes loss over a V grid also get the scaling fits
(``fit.csv``, ``control.csv`` and their figures, see :mod:`spamlang.scoring.fit`). Runs of tasks without a Bayes loss
(text) get the tokens-to-target table (``speedup.csv``, see :mod:`spamlang.scoring.speedup`)
and its loss-vs-tokens plot.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, NamedTuple

import pandas as pd

from spamlang.errors import SpamLangError
from spamlang.publishing import fitreport, plots
from spamlang.publishing import models as models
from spamlang.publishing.html import to_html
from spamlang.publishing.markdown import (
    _CAPTIONS,
    _provenance_items,
    copy_free_ranking_markdown,
    markdown,
    summary,
)
from spamlang.publishing.outputs import (
    FIT_PROVENANCE_FILE,
    FORMATS,
    PROVENANCE_FILE,
    TABLE_FILES,
    check_outputs,
    provenance,
    provenance_sidecar,
)
from spamlang.publishing.ranking import chosen_runs, head_ranking, own_budget
from spamlang.publishing.tables import format_table
from spamlang.scoring.floors import FloorCache
from spamlang.scoring.scorer import score
from spamlang.scoring.speedup import format_speedup, speedup_table
from spamlang.system import atomic
from spamlang.system.threads import available_cores


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
    scored = score(runs, cache=FloorCache.for_board(out, runs.attrs.get("folders", [])))
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


def check_before(out: str | Path, formats: Iterable[str] = FORMATS) -> None:
    """Refuse (SpamLangError) now, before any run trains, a leaderboard that :func:`write` would refuse at the end:
    ``out`` a file, or a file there of a name it writes (its tables, pages, sidecar and fixed plots) that the tool
    did not write."""
    names = [*_CAPTIONS, *_svgs(_CAPTIONS), fitreport.STEPS_FIGURE, *_svgs([fitreport.STEPS_FIGURE]), PROVENANCE_FILE,
             *(name for fmt in formats for name in TABLE_FILES[fmt])]
    check_outputs(Path(out), names)


def _write_files(out: Path, files: dict, formats: list[str], written: list[Path]) -> list[Path]:
    for fmt in formats:
        for name, content in files[fmt].items():
            atomic.write_text(out / name, content)
            written.append(out / name)
    return written


def _svgs(names: Iterable[str]) -> list[str]:
    """The SVG twin of each PNG name (see :func:`spamlang.publishing.plots.save_both`)."""
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
    names = ["fit.md", "fit.csv", "control.csv", FIT_PROVENANCE_FILE, *figures, *_svgs(figures)]
    check_outputs(out, names)
    prov = provenance(runs, command)
    head = ["# SpamLang scaling fits", "", "## Provenance", ""]
    head += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}"
             for key, value in _provenance_items(prov)]
    head = "\n".join(head) + "\n\n"
    tables = {"fit.csv": fitreport.fit_csv(fits.table), "control.csv": format_table(fits.control, "csv")}
    files = {FIT_PROVENANCE_FILE: provenance_sidecar(prov, tables, out), **tables,  # plain tables: read_csv reads them
             "fit.md": head + fitreport.markdown(fits, list(figures))}
    # all before any write; on the machine's cores (the rendering is most of a fit's time)
    rendered = dict(zip(figures, plots.render_many(list(figures.values()), available_cores())))
    written = []
    for name, (data, vector) in rendered.items():
        atomic.write_bytes(out / name, data)
        atomic.write_bytes(out / _svgs([name])[0], vector)
        written += [out / name, out / _svgs([name])[0]]
    for name, content in files.items():
        atomic.write_text(out / name, content)
        written.append(out / name)
    return head + fitreport.markdown(fits), written
