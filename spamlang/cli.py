"""The ``spamlang`` command line: thin wrappers that parse input, call the library and print results."""
from __future__ import annotations

import json
import sys
import warnings

import click

from . import __version__
from .errors import SpamLangError


def _fail(message: str, code: int = 2):
    click.echo(f"spamlang: error: {message}", err=True)
    sys.exit(code)


def _load_plugins(ctx, param, value):
    """Callback of --tasks-dir/--heads-dir: import the user's files from each folder."""
    if value:
        from .heads.base import HEADS
        from .task import TASKS
        (TASKS if param.name == "tasks_dir" else HEADS).load_folders(value)
    return value


def plugin_options(fn):
    fn = click.option("--heads-dir", multiple=True, expose_value=False, callback=_load_plugins, is_eager=True,
                      type=click.Path(file_okay=False), help="Extra folder of head files (repeatable).")(fn)
    return click.option("--tasks-dir", multiple=True, expose_value=False, callback=_load_plugins, is_eager=True,
                        type=click.Path(file_okay=False), help="Extra folder of task files (repeatable).")(fn)


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="spamlang")
def cli():
    """SpamLang: how much does the LM head's gradient bottleneck stop a model from learning?"""


# -- tasks --------------------------------------------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, description, params}.")
@plugin_options
@click.pass_context
def tasks(ctx, as_json):
    """List the registered tasks and their parameters."""
    if ctx.invoked_subcommand is not None:
        return
    from .task import TASKS
    rows = [{"name": n, "description": TASKS.get(n).description(), "version": TASKS.get(n).version,
             "params": TASKS.get(n).describe_params()} for n in TASKS.names()]
    if as_json:
        return _print_json(rows)
    for row in rows:
        click.echo(f"{row['name']:<14} v{row['version']}  {row['description']}")
        for p in row["params"]:
            click.echo(f"{'':18}{p['name'] + '=' + repr(p['default']):<14} {p['help']} (allowed {p['allowed']})")


def _task_from(name: str, params: tuple[str, ...]):
    from .params import parse_assignments
    from .task import make_task
    return make_task(name, parse_assignments(params), from_strings=True)


param_option = click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                            help="A task parameter (repeatable).")


@tasks.command("validate")
@click.argument("name")
@param_option
@click.option("--vocab-size", "-V", default=64, show_default=True, type=int)
@click.option("--seq-len", "-T", default=16, show_default=True, type=int)
@click.option("--num-sequences", "-n", default=4000, show_default=True, type=int, help="Monte-Carlo sample size.")
@plugin_options
def tasks_validate(name, params, vocab_size, seq_len, num_sequences):
    """Run the property checks every task must pass on task NAME."""
    from .validate import validate
    results = validate(_task_from(name, params), vocab_size, seq_len, num_sequences)
    for r in results:
        click.echo(f"{'PASS' if r.ok else 'FAIL'}  {r.name:<12} {r.detail}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        _fail(f"task '{name}' failed {len(failed)} check(s): {', '.join(failed)}", code=1)
    click.echo(f"task '{name}' passed all {len(results)} checks")


# -- generate -----------------------------------------------------------------------------------------------------
@cli.command()
@click.argument("task")
@click.option("--vocab-size", "-V", required=True, type=int, help="Vocabulary size V (2 <= V < 2**31).")
@click.option("--seq-len", "-T", required=True, type=int, help="Tokens per sequence (>= 2).")
@click.option("--num-sequences", "-n", required=True, type=int, help="Number of sequences (>= 1).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--out", required=True, type=click.Path(), help="Output folder (tokens.npy, meta.json).")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@param_option
@plugin_options
def generate(task, vocab_size, seq_len, num_sequences, seed, out, force, quiet, params):
    """Write a corpus of TASK: OUT/tokens.npy (N x T, smallest unsigned dtype) and OUT/meta.json."""
    from .corpus import generate as run
    meta = run(_task_from(task, params), vocab_size, seq_len, num_sequences, seed, out, force=force,
               progress=not quiet and sys.stderr.isatty())
    click.echo(f"wrote {num_sequences} x {seq_len} {meta['dtype']} tokens of '{task}' to {out} "
               f"(sha256 {meta['sha256'][:12]}…, Bayes loss {meta['bayes_loss']:.4f} nats)")


def main(argv=None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    warnings.showwarning = lambda message, *a, **k: click.echo(f"spamlang: warning: {message}", err=True)
    try:
        cli.main(args=argv, prog_name="spamlang", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: bad flag, missing or malformed value
        _fail(exc.format_message().replace("\n", " "), code=exc.exit_code)
    except click.Abort:
        _fail("interrupted", code=130)
    except SpamLangError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)


if __name__ == "__main__":
    main()
