"""Options and helpers the commands share: plugin folders, finite floats, the training flags, output."""
from __future__ import annotations

import math
import shlex
import sys

import click


def _fail(message: str, code: int = 2):
    click.echo(f"spamlang: error: {message}", err=True)
    sys.exit(code)


def _load_plugins(ctx, param, value):
    """Callback of --tasks-dir/--heads-dir: import the user's files from each folder, and add the folders to the
    registry's environment variable so that worker processes (local or Ray) find them too."""
    if value:
        import os

        from spamlang.heads.base import HEADS
        from spamlang.task import TASKS
        registry = TASKS if param.name == "tasks_dir" else HEADS
        registry.load_folders(value)
        folders = [os.path.abspath(v) for v in value]
        os.environ[registry.path_env] = os.pathsep.join(filter(None, [os.environ.get(registry.path_env), *folders]))
    return value


def plugin_options(fn):
    fn = click.option("--heads-dir", multiple=True, expose_value=False, callback=_load_plugins, is_eager=True,
                      type=click.Path(file_okay=False), help="Extra folder of head files (repeatable).")(fn)
    return click.option("--tasks-dir", multiple=True, expose_value=False, callback=_load_plugins, is_eager=True,
                        type=click.Path(file_okay=False), help="Extra folder of task files (repeatable).")(fn)


class FiniteFloat(click.ParamType):
    """A finite float above ``low`` (nan and inf are refused)."""
    name = "float"

    def __init__(self, low: float):
        self.low = low

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= self.low:
            self.fail(f"{value!r} must be a finite number > {self.low}", param, ctx)
        return number


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (nan passes every comparison of a plain range check)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number in {self._describe_range()}", param, ctx)
        return number


def _command_line() -> str:
    """The command as the user typed it (for provenance)."""
    ctx = click.get_current_context(silent=True)
    argv = (ctx.find_root().obj or {}).get("argv") if ctx else None
    return shlex.join(["spamlang", *(sys.argv[1:] if argv is None else argv)])


def _print_json(obj) -> None:
    from spamlang.record import strict_json
    click.echo(strict_json(obj, indent=2))


param_option = click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                            help="A task parameter (repeatable).")


threads_option = click.option(
    "--threads", type=click.IntRange(1, 1024), default=None,
    help="Intra-op threads per run (default: $SPAMLANG_THREADS, else 1 for small runs and each worker's share of "
         "the cores for large ones).")


tracker_option = click.option(
    "--tracker", type=click.Choice(["tensorboard", "wandb", "mlflow"]), default=None,
    help="Also log each evaluation (step, losses, accuracies, gradient diagnostics) and the final record to this "
         "experiment tracker, one tracker run per training run: TensorBoard event files in OUT/tensorboard/<run_id>, "
         "W&B runs in OUT/wandb (or $WANDB_DIR; WANDB_MODE=offline for no network), MLflow runs at "
         "$MLFLOW_TRACKING_URI (default OUT/mlflow.db). Needs the tracker's extra, e.g. pip install 'spamlang[wandb]'.")


def _required(ctx, param, value):
    """Callback of a required option: click does not enforce ``required`` on an option whose default is None."""
    if value is None:
        raise click.MissingParameter(ctx=ctx, param=param)
    return value


def train_options(fn):
    """One option per run setting, generated from RunConfig's declarations (name, type, default, range, help)."""
    from spamlang.config import RunConfig
    from spamlang.params import REQUIRED, allowed, scalar_fields, type_of
    for field in reversed(scalar_fields(RunConfig)):
        flag, kind, meta = "--" + field.name.replace("_", "-"), type_of(field), field.metadata
        if kind is bool:
            fn = click.option(flag, field.name, is_flag=True, help=meta["help"])(fn)
            continue
        required = field.default is REQUIRED
        ranged = meta.get("low") is not None or meta.get("high") is not None
        fn = click.option(flag, field.name, type=click.Choice(meta["choices"]) if meta.get("choices") else kind,
                          default=None if required else field.default, required=required,
                          callback=_required if required else None,
                          help=meta["help"] + (f" Allowed: {allowed(field)}." if ranged else ""),
                          show_default=not required and field.default is not None)(fn)
    return fn


allow_missing_option = click.option(
    "--allow-missing-tasks", is_flag=True,
    help="Score runs whose task is not registered here (no floors, so no verdict beyond 'undetermined').")


def _task_from(name: str, params: tuple[str, ...]):
    from spamlang.params import parse_assignments
    from spamlang.task import make_task
    return make_task(name, parse_assignments(params), from_strings=True)
