"""``spamlang train`` and ``probe``: one run, and the diagnostics of a trained one."""
from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from spamlang.cli.app import cli
from spamlang.cli.options import (
    _print_json,
    param_option,
    plugin_options,
    threads_option,
    tracker_option,
    train_options,
)


@cli.command()
@train_options
@param_option
@click.option("--head-param", "head_param", multiple=True, metavar="KEY=VALUE", help="A head parameter (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Folder for the record <run_id>.json.")
@click.option("--save-checkpoint", is_flag=True, help="Also save the weights as <run_id>.pt (for 'spamlang probe').")
@click.option("--json", "as_json", is_flag=True, help="Print the record on stdout and nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@tracker_option
@threads_option
@plugin_options
def train(params, head_param, out, save_checkpoint, as_json, quiet, tracker, threads, **settings):
    """Train one model on one task and write its run record."""
    from pathlib import Path

    from spamlang import record
    from spamlang.config import RunConfig
    from spamlang.params import parse_assignments
    from spamlang.system.atomic import check_output_folder
    from spamlang.training import tracking
    from spamlang.training.devices import resolve_device
    from spamlang.training.resources import check_run
    ctx = click.get_current_context()
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    config = RunConfig.from_user({**given, "task_params": parse_assignments(params),
                                  "head_params": parse_assignments(head_param, "--head-param")})
    device = resolve_device(config.device)
    check_run(config, device.type, device.index)
    check_output_folder(Path(out))
    record.read_replaceable(Path(out) / f"{config.run_id}.json")  # a file there that is not our record stays
    checkpoint = Path(out) / f"{config.run_id}.pt" if save_checkpoint else None
    if tracker:
        spec = tracking.TrackerSpec(tracker, str(out))
        tracking.check_ready(spec)
        logged = tracking.start(spec, config)  # refuses a missing package
    from spamlang.training.loop import train as run
    rec = run(config, progress=not quiet and not as_json and sys.stderr.isatty(), checkpoint=checkpoint,
              threads=threads, on_eval=logged.log_point if tracker else None)
    path = record.write(rec, out)
    if tracker:
        tracking.finish(logged, rec, tracker)
    if as_json:
        return click.echo(rec.to_json(indent=2))
    f = rec.final
    learned = "not learned" if f.steps_to_learn is None else f"learned at step {f.steps_to_learn}"
    click.echo(f"{rec.status}: test loss {f.loss:.4f} (Bayes {rec.bayes_loss:.4f}), accuracy {f.accuracy:.4f}, "
               f"{learned}, {f.tokens_per_second:,.0f} tokens/s, grad kept cos {f.grad_kept_cos:.3f} -> {path}")


# -- probe --------------------------------------------------------------------------------------------------------
@cli.command()
@click.argument("checkpoint_or_run", type=click.Path())
@click.option("--batches", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="Batches of diag_tokens predictable positions (a stream of their own) the diagnostics average over.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@plugin_options
def probe(checkpoint_or_run, batches, as_json):
    """Gradient diagnostics and logit-gradient spectrum of a trained model (a <run_id>.json or .pt)."""
    from spamlang.training.probe import probe as run
    result = run(checkpoint_or_run, batches)
    if as_json:
        return _print_json(result)
    for key, value in result.items():
        click.echo(f"{key:<18} {value:.4f}" if isinstance(value, float) else f"{key:<18} {value}")
