"""``spamlang score``, ``speedup``, ``leaderboard`` and ``fit``: results from run records."""
from __future__ import annotations

import click

from spamlang.cli.app import cli
from spamlang.cli.options import FiniteFloat, _command_line, _print_json, allow_missing_option, plugin_options
from spamlang.errors import SpamLangError


def _check_tasks(runs, allow: bool) -> None:
    """Refuse runs of tasks that are not registered (their floors and verdicts would be missing) unless ``allow``."""
    from spamlang.task import TASKS
    missing = sorted(set(runs["task"] if "task" in runs else ()) - set(TASKS.names()))  # none: measurements only
    if missing and not allow:
        raise SpamLangError(f"the runs use task(s) not registered here: {', '.join(missing)}; load their files with "
                            f"--tasks-dir DIR (or --allow-missing-tasks to score them without floors)")


def _check_out(out) -> None:
    """Refuse an output folder that is a file, the file system's root or above the working folder."""
    from pathlib import Path

    from spamlang.system.atomic import check_output_folder
    check_output_folder(Path(out))


def _by_fields(by: str | None) -> list[str] | None:
    """The fields of ``--by`` (None: the default grouping); SpamLangError for an empty list or an unknown field."""
    if by is None:
        return None
    from spamlang.scoring.frames import CONFIG_FIELDS
    fields = [f.strip() for f in by.split(",") if f.strip()]
    if not fields:
        raise SpamLangError(f"--by {by!r} names no field; give comma-separated run settings (one of "
                            f"{', '.join(CONFIG_FIELDS)}, task_version)")
    unknown = [f for f in fields if f not in (*CONFIG_FIELDS, "task_version")]
    if unknown:
        raise SpamLangError(f"--by: unknown field {unknown[0]!r} (run settings: {', '.join(CONFIG_FIELDS)}, "
                            f"task_version)")
    return fields


# -- score --------------------------------------------------------------------------------------------------------
@cli.command()
@click.argument("folder", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True,
              help="md: the main columns and a legend; csv: every column; json: a list of records, every column.")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option("--by", default=None, metavar="FIELDS",
              help="Comma-separated config fields that define a configuration (default: all but seed and lr).")
@click.option("--tolerance", default=0.05, show_default=True, type=FiniteFloat(0),
              help="Nats within which a loss counts as at the floor / the floor at the Bayes loss.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Floor cache file to read and add to (default: floors.cache.json in $XDG_CACHE_HOME/spamlang, or "
                   "$SPAMLANG_CACHE_DIR); FOLDER is never written, and a cache shipped with it is read.")
@allow_missing_option
@plugin_options
def score(folder, fmt, as_json, by, tolerance, cache, allow_missing_tasks):
    """Learnability table of the run records under FOLDER: floors, gaps, verdicts, diagnostics."""
    from spamlang.publishing.tables import format_table
    from spamlang.scoring.floors import FloorCache
    from spamlang.scoring.frames import load_runs
    from spamlang.scoring.scorer import score as run
    fields = _by_fields(by)
    runs = load_runs(folder)
    _check_tasks(runs, allow_missing_tasks)
    scored = run(runs, by=fields, tolerance=tolerance, cache=FloorCache.for_user([folder], cache))
    click.echo(format_table(scored, "json" if as_json else fmt), nl=False)


@cli.command()
@click.argument("folder", type=click.Path())
@click.option("--reference", default="linear", show_default=True, metavar="HEAD[:RANK]",
              help="The head the others are compared with.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True,
              help="Output format of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also write the loss-vs-tokens PNG here.")
@plugin_options
def speedup(folder, reference, fmt, plot):
    """Tokens to target of the run records under FOLDER: how many fewer training tokens the reference head needs
    to reach each head's final val loss, with a seed-bootstrap interval, and the loss gap at equal tokens."""
    from spamlang.publishing import plots
    from spamlang.scoring.frames import load_runs
    from spamlang.scoring.speedup import check_reference, format_speedup, speedup_table
    runs = load_runs(folder)
    check_reference(runs, reference)
    table = speedup_table(runs, reference)
    click.echo(format_speedup(table, fmt), nl=False)
    if plot:
        figure = plots.loss_vs_tokens(table, runs)
        if figure is None:
            raise SpamLangError("nothing to plot: no configuration has both the reference head and another head")
        plots.save(figure, plot)


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the FOLDER, when only one is given).")
@click.option("--format", "formats", multiple=True, type=click.Choice(["md", "csv", "html"]),
              help="Table files to write (repeatable; default md, csv and html). The PNG plots are always written.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout instead of the Markdown: files, summary, ranking and "
                   "configurations (lists of records with the CSV files' column names).")
@allow_missing_option
@plugin_options
def leaderboard(folders, out, formats, as_json, allow_missing_tasks):
    """Rank head designs over the run records in one or more result FOLDERS (merged; one task version each) and
    write leaderboard.md, leaderboard.csv, configurations.csv, a self-contained leaderboard.html and PNG plots."""
    if out is None and len(folders) > 1:
        raise SpamLangError("--out is required with several folders")
    _check_out(out or folders[0])
    board = _write_leaderboard(folders, out or folders[0], formats, allow_missing_tasks, as_json=as_json)
    _check_out(out or folders[0])
    if as_json:
        _print_json(_board_json(board, configurations=True))


def _write_leaderboard(folders, out, formats=(), allow_missing_tasks=False, as_json=False):
    """Write the leaderboard of FOLDERS into OUT, print it (unless ``as_json``), then (on stderr) what was learned and
    every file; return what :func:`spamlang.publishing.leaderboard.write` returns."""
    from spamlang.publishing.board import write
    from spamlang.publishing.load import load_folders
    from spamlang.publishing.outputs import FORMATS
    runs = load_folders(folders)
    _check_tasks(runs, allow_missing_tasks)
    board = write(runs, out, formats or FORMATS, command=_command_line())
    if not as_json:
        click.echo(board.text, nl=False)
    click.echo(board.summary, err=True)
    click.echo(f"wrote {len(board.files)} files: {', '.join(map(str, board.files))}", err=True)
    return board


def _board_json(board, configurations: bool = False) -> dict:
    """The leaderboard's JSON fields: files written, the summary line, the head ranking (and the configurations
    table) as lists of records with the tables' column names, null for a missing number."""
    import json

    from spamlang.publishing.tables import format_table

    def records(table):
        return [] if table is None else json.loads(format_table(table, "json"))

    out = {"files": [str(p) for p in board.files], "summary": board.summary, "ranking": records(board.ranking)}
    return {**out, "configurations": records(board.scored)} if configurations else out


# -- fit ------------------------------------------------------------------------------------------------------------
@cli.command("fit")
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the FOLDER, when only one is given).")
@click.option("--resamples", default=1000, show_default=True, type=click.IntRange(2, 100_000),
              help="Bootstrap resamples over seeds.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the bootstrap's generator (recorded in fit.csv).")
@plugin_options
def fit(folders, out, resamples, seed):
    """Scaling fits of the run records in FOLDERS: per head and width D, steps-to-learn against V/D as a censored
    power law with a bootstrap CI over seeds, the critical V/D, and the gradproj control; writes fit.md, fit.csv,
    control.csv and the figures (PNG and SVG)."""
    from spamlang.publishing.board import write_fit
    from spamlang.publishing.load import load_folders
    if out is None and len(folders) > 1:
        raise SpamLangError("--out is required with several folders")
    _check_out(out or folders[0])
    runs = load_folders(folders)
    _check_out(out or folders[0])
    text, written = write_fit(runs, out or folders[0], _command_line(), resamples, seed)
    click.echo(text, nl=False)
    click.echo(f"wrote {len(written)} files: {', '.join(map(str, written))}", err=True)
