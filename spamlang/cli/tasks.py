"""``spamlang tasks``, ``tasks validate`` and ``heads``: what can be trained."""
from __future__ import annotations

import click

from spamlang.cli.app import cli
from spamlang.cli.options import _fail, _print_json, _task_from, param_option, plugin_options


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, description, params}.")
@plugin_options
@click.pass_context
def tasks(ctx, as_json):
    """List the registered tasks and their parameters."""
    if ctx.invoked_subcommand is not None:
        return
    from spamlang.task import TASKS
    rows = [{"name": n, "description": TASKS.description(n), "version": TASKS.get(n).version,
             "params": TASKS.get(n).describe_params()} for n in TASKS.names()]
    if as_json:
        return _print_json(rows)
    for row in rows:
        click.echo(f"{row['name']:<14} v{row['version']}  {row['description']}")
        for p in row["params"]:
            click.echo(f"{'':18}{p['name'] + '=' + repr(p['default']):<14} {p['help']} (allowed {p['allowed']})")


@tasks.command("validate")
@click.argument("name")
@param_option
@click.option("--vocab-size", "-V", default=64, show_default=True, type=int, help="Vocabulary size V of the check.")
@click.option("--seq-len", "-T", default=16, show_default=True, type=int, help="Tokens per sequence of the check.")
@click.option("--num-sequences", "-n", default=4000, show_default=True, type=int,
              help="Monte-Carlo sample size (2 to 10^7, and what the memory available holds).")
@plugin_options
def tasks_validate(name, params, vocab_size, seq_len, num_sequences):
    """Run the property checks every task must pass on task NAME."""
    from spamlang.data.validate import validate
    results = validate(_task_from(name, params), vocab_size, seq_len, num_sequences)
    for r in results:
        click.echo(f"{'PASS' if r.ok else 'FAIL'}  {r.name:<12} {r.detail}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        _fail(f"task '{name}' failed {len(failed)} check(s): {', '.join(failed)}", code=1)
    click.echo(f"task '{name}' passed all {len(results)} checks")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, description, uses_rank, params}.")
@plugin_options
def heads(as_json):
    """List the registered LM heads and backbones."""
    from spamlang.backbones.base import BACKBONES
    from spamlang.heads.base import HEADS, describe_params
    rows = [{"name": n, "description": HEADS.description(n), "uses_rank": HEADS.get(n).uses_rank,
             "params": describe_params(HEADS.get(n))} for n in HEADS.names()]
    if as_json:
        return _print_json(rows)
    for row in rows:
        rank = " (takes --head-rank)" if row["uses_rank"] else ""
        click.echo(f"{row['name']:<10} {row['description']}{rank}")
        for p in row["params"]:
            click.echo(f"{'':12}{p['name'] + '=' + repr(p['default']):<14} {p['help']} (allowed {p['allowed']})")
    click.echo("\nbackbones: " + ", ".join(f"{n} ({BACKBONES.description(n)})" for n in BACKBONES.names()))
