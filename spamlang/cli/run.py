"""``spamlang suites`` and ``run``: suites, their cost, and running them."""
from __future__ import annotations

import sys

import click

from spamlang.cli.app import cli
from spamlang.cli.options import FiniteRange, _fail, _print_json, plugin_options, threads_option, tracker_option
from spamlang.cli.results import _board_json, _write_leaderboard


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {name, description, runs, flops, seconds, flops_per_second, "
                   "calibration_runs, basis}.")
@click.option("--calibrate-on", "folders", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Results folders whose DIR/runs records time this machine (repeatable; default: every out/*/runs "
                   "and results/*/runs below the current folder).")
@plugin_options
def suites(as_json, folders):
    """List the built-in suites with their run counts and estimated cost: the wall time of their runs one at a time,
    from their training FLOPs at the rate this machine's records show (as spamlang run --dry-run)."""
    from pathlib import Path

    from spamlang.sweeps.plan import duration, estimate, machine_rate
    from spamlang.sweeps.suite import builtin_names, load
    from spamlang.training.devices import device_name, resolve_device
    dirs = [Path(f) / "runs" for f in folders] or sorted([*Path("out").glob("*/runs"), *Path("results").glob("*/runs")])
    rate = machine_rate(dirs, device_name(resolve_device("auto")))
    rows = []
    for name in builtin_names():
        suite = load(name)
        flops, seconds = estimate(suite.runs, rate)
        rows.append({"name": name, "description": suite.description, "runs": len(suite.runs), "flops": flops,
                     "seconds": seconds, "flops_per_second": rate.flops_per_second,
                     "calibration_runs": rate.records, "basis": rate.basis})
    if as_json:
        return _print_json(rows)
    click.echo(f"{'suite':<10} {'runs':>5} {'train FLOPs':>12} {'~wall':>9}  description")
    for r in rows:
        click.echo(f"{r['name']:<10} {r['runs']:>5} {r['flops']:>12.2e} {duration(r['seconds']):>9}  "
                   f"{r['description']}")
    click.echo(f"~wall: the suite's own grid one run at a time (lr and budget rounds add runs; --workers divides it) "
               f"at {rate.flops_per_second:.2e} FLOP/s, {rate.basis}")


@cli.command()
@click.argument("suite")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Results folder (default: out/<suite name>; the published ones live in results/).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine; ray: one Ray task per run (pip install 'spamlang[ray]').")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 1024),
              help="Runs in parallel (local: worker processes).")
@click.option("--device", default=None, help="auto, cpu, cuda[:N] or mps (default: each run's own, from the suite).")
@click.option("--lr-rounds", default=3, show_default=True, type=click.IntRange(0, 20),
              help="Rounds that may extend a configuration's lr grid (x3 or /3 past an edge chosen on val); 0: none.")
@click.option("--extend-budget", type=FiniteRange(min=1), default=None,
              help="Rerun each configuration not learned at this many times its budget (default: the suite's "
                   "extend_budget; 1: none).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Keep only the runs whose KEY equals VALUE (repeatable): a run setting (vocab_size=512, lr=0.01, "
                   "head=lowrank, head=lowrank:2) or a task or head parameter (task_params.k=16). Filters on different "
                   "keys must all hold; values repeated for one key are alternatives.")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Keep only the first N runs of the suite's grid (after --filter, in the suite's order); lr rounds "
                   "may still add runs around them (--lr-rounds 0 for none).")
@click.option("--dry-run", is_flag=True,
              help="Train nothing and write nothing: list the selected runs, which are already recorded in OUT/runs, "
                   "and the estimated wall time of the rest (calibrated on this machine's records in OUT/runs when "
                   "there are some).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout instead of the tables: the plan with --dry-run, else the closing "
                   "summary (counts, files written, head ranking).")
@click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, else one line per run).")
@click.option("--ensemble/--no-ensemble", default=True, show_default=True,
              help="Train the pending CPU runs of a configuration that differ only in seed and lr, when small enough "
                   "for it to pay, as one batched computation (each run keeps its own record, equal up to float "
                   "rounding); --no-ensemble trains every run alone.")
@click.option("--snapshot-every", type=FiniteRange(min=0), default=300, show_default=True, metavar="SECONDS",
              help="A run in flight saves its state to OUT/runs/.partial at an evaluation at most every SECONDS "
                   "(0: at every evaluation; a shorter run saves none), and a rerun resumes it from there to the "
                   "same record (local executor).")
@tracker_option
@threads_option
@plugin_options
def run(suite, out, executor, workers, device, lr_rounds, extend_budget, filters, limit, dry_run, as_json, quiet,
        ensemble, snapshot_every, tracker, threads):
    """Run SUITE (a built-in name or a .toml file), resuming from what OUT/runs holds, then print the leaderboard."""
    import dataclasses
    from concurrent.futures.process import BrokenProcessPool
    from pathlib import Path

    from spamlang.cli.app import interrupted
    from spamlang.sweeps.plan import parse_filters, select
    from spamlang.sweeps.runner import run_suite
    from spamlang.sweeps.suite import load
    from spamlang.system.atomic import check_output_folder
    from spamlang.system.processes import FolderLock
    from spamlang.training import tracking
    spec = load(suite)
    if filters or limit:
        spec = dataclasses.replace(spec, runs=tuple(select(spec.runs, parse_filters(filters), limit)))
    out = Path(out or Path("out") / spec.name)
    check_output_folder(out)
    tracked = tracking.TrackerSpec(tracker, str(out.resolve()), spec.name) if tracker else None
    _check_before_run(spec, out, executor, workers, device, extend_budget, tracked, here=not dry_run)
    if dry_run:
        return _dry_run(spec, out, device, lr_rounds, as_json)
    bar = not quiet and sys.stderr.isatty()
    log = None if quiet or bar else lambda line: click.echo(line, err=True)
    with FolderLock(out / "runs"):
        try:
            counts = run_suite(spec, out, executor, workers, device, progress=bar, lr_rounds=lr_rounds,
                               threads=threads, log=log, extend_budget=extend_budget, tracker=tracked,
                               ensemble=ensemble, snapshot_every=snapshot_every)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
            what, code = interrupted(exc)
            _fail(f"{what}; the finished runs are kept in {out / 'runs'}: rerun the same command to resume", code)
        except BrokenProcessPool:
            _fail(f"a worker process died (killed by the system, e.g. for memory?); the finished runs are kept in "
                  f"{out / 'runs'}: rerun with fewer --workers to resume")
        budget = f", {counts['budget_added']} by the budget round" if counts["budget_added"] else ""
        click.echo(f"suite {spec.name}: {counts['total']} runs ({counts['lr_added']} added by {counts['lr_rounds']} "
                   f"lr round(s){budget}), {counts['skipped']} already recorded, {counts['ok']} ok, "
                   f"{counts['diverged']} diverged, {counts['failed']} failed -> {out / 'runs'}", err=True)
        board = _write_leaderboard([out / "runs"], out, as_json=as_json)
    if as_json:
        _print_json({"suite": spec.name, "source": spec.source, "runs_dir": str(out / "runs"), **counts,
                     **_board_json(board)})
    if counts["failed"]:
        sys.exit(1)


def _check_before_run(spec, out, executor: str, workers: int, device: str | None, extend_budget: float | None,
                      tracker, here: bool = True) -> None:
    """Everything ``spamlang run`` refuses, checked before its first run (and by ``--dry-run``, which must refuse
    what the run would): the device, the budget factor, the tracker (its package, login, store), the leaderboard's
    files (none of the user's is replaced) and, ``here`` (not for a dry run, which may plan a sweep for another
    machine), whether this machine has the device and the memory of the largest run times the workers beside it."""
    from spamlang.config import check_device
    from spamlang.publishing.board import check_before
    from spamlang.sweeps.suite import check_extend_budget
    from spamlang.training import tracking
    from spamlang.training.devices import resolve_device
    from spamlang.training.resources import check_run, run_memory
    if device:
        check_device(device)
    if extend_budget is not None and extend_budget != 1:
        check_extend_budget(extend_budget, "--extend-budget")
    if executor == "local" and here:
        for name in {device} if device else {c.device for c in spec.runs}:
            resolve_device(name)  # refuse it before any run
        kind = resolve_device(device or spec.runs[0].device)
        largest = max(spec.runs, key=lambda c: run_memory(c, kind.type)["total"])
        check_run(largest, kind.type, kind.index, copies=min(workers, len(spec.runs)) if kind.type == "cpu" else 1)
    if tracker:
        tracking.check_ready(tracker)
    check_before(out)


def _dry_run(spec, out, device: str | None, lr_rounds: int, as_json: bool) -> None:
    """Print what ``spamlang run`` would do (see :func:`spamlang.sweeps.plan.plan`); nothing is trained or written."""
    from spamlang.errors import ConfigError
    from spamlang.sweeps.plan import calibrate, plan, plan_text, recorded_runs
    from spamlang.training.devices import device_name, resolve_device
    try:
        name = device_name(resolve_device(device or spec.runs[0].device))
    except ConfigError:  # not on this machine: no record of it here to calibrate on
        name = None
    runs_dir = out / "runs"
    result = plan(spec.runs, runs_dir, calibrate(recorded_runs(runs_dir), name))
    if as_json:
        return _print_json({"suite": spec.name, "source": spec.source, "lr_rounds": lr_rounds, **result})
    click.echo(f"suite {spec.name} ({spec.source}) -> {runs_dir}")
    click.echo(plan_text(spec.runs, result), nl=False)
    if lr_rounds:
        click.echo(f"lr rounds (up to {lr_rounds}) may add runs beyond these; nothing was trained")
    else:
        click.echo("nothing was trained")
