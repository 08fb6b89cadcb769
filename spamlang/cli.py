"""The ``spamlang`` command line: thin wrappers that parse input, call the library and print results."""
from __future__ import annotations

import math
import re
import shlex
import sys
import warnings

import click
from click.core import ParameterSource

from . import __version__
from .errors import SpamLangError


def _fail(message: str, code: int = 2):
    click.echo(f"spamlang: error: {message}", err=True)
    sys.exit(code)


def _load_plugins(ctx, param, value):
    """Callback of --tasks-dir/--heads-dir: import the user's files from each folder, and add the folders to the
    registry's environment variable so that worker processes (local or Ray) find them too."""
    if value:
        import os

        from .heads.base import HEADS
        from .task import TASKS
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


def _command_line() -> str:
    """The command as the user typed it (for provenance)."""
    ctx = click.get_current_context(silent=True)
    argv = (ctx.find_root().obj or {}).get("argv") if ctx else None
    return shlex.join(["spamlang", *(sys.argv[1:] if argv is None else argv)])


def _print_json(obj) -> None:
    from .record import strict_json
    click.echo(strict_json(obj, indent=2))


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
    rows = [{"name": n, "description": TASKS.description(n), "version": TASKS.get(n).version,
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
@click.option("--vocab-size", "-V", default=64, show_default=True, type=int, help="Vocabulary size V of the check.")
@click.option("--seq-len", "-T", default=16, show_default=True, type=int, help="Tokens per sequence of the check.")
@click.option("--num-sequences", "-n", default=4000, show_default=True, type=int,
              help="Monte-Carlo sample size (>= 2).")
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
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the generated stream (the same seed gives the same tokens).")
@click.option("--format", "fmt", type=click.Choice(["npy", "bin", "parquet"]), default="npy", show_default=True,
              help="npy: N x T array; bin: nanoGPT's flat uint16 (uint32 above V = 65536) memmap; parquet: one row "
                   "per sequence, column input_ids (needs pyarrow).")
@click.option("--out", required=True, type=click.Path(), help="Output folder (the tokens file, meta.json).")
@click.option("--force", is_flag=True, help="Replace a folder that holds a previous corpus and nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@param_option
@plugin_options
def generate(task, vocab_size, seq_len, num_sequences, seed, fmt, out, force, quiet, params):
    """Write a corpus of TASK: OUT/tokens.npy, tokens.bin or tokens.parquet (see --format) and OUT/meta.json (task,
    parameters, seed, format, dtype, shape, sha256, Bayes loss)."""
    from pathlib import Path

    from .corpus import generate as run
    meta = run(_task_from(task, params), vocab_size, seq_len, num_sequences, seed, out, fmt=fmt, force=force,
               progress=not quiet and sys.stderr.isatty())
    click.echo(f"wrote {num_sequences} x {seq_len} {meta['dtype']} tokens of '{task}' to {Path(out) / meta['file']} "
               f"(sha256 {meta['sha256'][:12]}…, Bayes loss {meta['bayes_loss']:.4f} nats)")


@cli.command("prepare-text")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(), help="Output folder (documents.jsonl, meta.json).")
@click.option("--txt-documents", type=click.Choice(["paragraph", "line", "file"]), default="paragraph",
              show_default=True, help="What one document is in a plain-text file.")
@click.option("--vocab-size", "-V", "vocab_sizes", multiple=True, type=int,
              help="Also train the BPE tokenizer at this V and tokenize the splits into the cache (repeatable).")
@click.option("--split-seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the assignment of documents to train, val and test.")
@click.option("--holdout", default=0.05, show_default=True, type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
              help="Share of documents in each of val and test.")
@click.option("--force", is_flag=True, help="Replace a folder that holds a previous prepared corpus and nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def prepare_text(sources, out, txt_documents, vocab_sizes, split_seed, holdout, force, quiet):
    """Read text SOURCES (files or folders of .txt/.md, .jsonl with a 'text' field, .parquet with a 'text' column;
    or one built-in corpus name) into a corpus folder for the 'text' task (task parameter corpus=OUT)."""
    from pathlib import Path

    from .textcorpus import prepare
    from .tokenizer import check_tokenizer, load
    progress = not quiet and sys.stderr.isatty()
    for v in vocab_sizes:
        check_tokenizer("bpe", v)  # refuse an impossible V before reading anything
    meta = prepare(list(sources), out, txt_documents=txt_documents, force=force, progress=progress)
    click.echo(f"wrote {meta['documents']} documents ({meta['characters']:,} characters) to {out} "
               f"(sha256 {meta['sha256'][:12]}…)")
    for v in vocab_sizes:
        arrays = load(Path(out), "bpe", v, split_seed, holdout, progress=progress)
        tokens = ", ".join(f"{s} {n:,}" for s, n in arrays.meta["tokens"].items())
        click.echo(f"V={v}: tokens {tokens} -> {arrays.folder}")


# -- heads --------------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, description, uses_rank, params}.")
@plugin_options
def heads(as_json):
    """List the registered LM heads and backbones."""
    from .backbones.base import BACKBONES
    from .heads.base import HEADS, describe_params
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


threads_option = click.option(
    "--threads", type=click.IntRange(1, 1024), default=None,
    help="Intra-op threads per run (default: $SPAMLANG_THREADS, else 1 for small runs and each worker's share of "
         "the cores for large ones).")


# -- train --------------------------------------------------------------------------------------------------------
tracker_option = click.option(
    "--tracker", type=click.Choice(["tensorboard", "wandb", "mlflow"]), default=None,
    help="Also log each evaluation (step, losses, accuracies, gradient diagnostics) and the final record to this "
         "experiment tracker, one tracker run per training run: TensorBoard event files in OUT/tensorboard/<run_id>, "
         "W&B runs in OUT/wandb (or $WANDB_DIR; WANDB_MODE=offline for no network), MLflow runs at "
         "$MLFLOW_TRACKING_URI (default OUT/mlflow.db). Needs the tracker's extra, e.g. pip install 'spamlang[wandb]'.")


def train_options(fn):
    """One option per run setting, generated from RunConfig's declarations (name, type, default, range, help)."""
    from .config import RunConfig
    from .params import REQUIRED, allowed, scalar_fields, type_of
    for field in reversed(scalar_fields(RunConfig)):
        flag, kind, meta = "--" + field.name.replace("_", "-"), type_of(field), field.metadata
        if kind is bool:
            fn = click.option(flag, field.name, is_flag=True, help=meta["help"])(fn)
            continue
        required = field.default is REQUIRED
        ranged = meta.get("low") is not None or meta.get("high") is not None
        fn = click.option(flag, field.name, type=click.Choice(meta["choices"]) if meta.get("choices") else kind,
                          default=None if required else field.default, required=required,
                          help=meta["help"] + (f" Allowed: {allowed(field)}." if ranged else ""),
                          show_default=not required and field.default is not None)(fn)
    return fn


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

    from . import record
    from .config import RunConfig
    from .params import parse_assignments
    from . import tracking
    from .harness import resolve_device, train as run
    from .resources import check_run
    if settings["examples_per_symbol"] is not None and \
            click.get_current_context().get_parameter_source("steps") is ParameterSource.COMMANDLINE:
        raise SpamLangError("give --steps or --examples-per-symbol, not both")
    config = RunConfig(**{k: v for k, v in settings.items() if v is not None}, task_params=parse_assignments(params),
                       head_params=parse_assignments(head_param, "--head-param")).resolve()
    device = resolve_device(config.device)
    check_run(config, device.type, device.index)
    record.read_replaceable(Path(out) / f"{config.run_id}.json")  # a file there that is not our record stays
    checkpoint = Path(out) / f"{config.run_id}.pt" if save_checkpoint else None
    if tracker:
        logged = tracking.start(tracking.TrackerSpec(tracker, str(out)), config)  # refuses a missing package
    rec = run(config, progress=not quiet and not as_json and sys.stderr.isatty(), checkpoint=checkpoint,
              threads=threads, on_eval=logged.log_point if tracker else None)
    path = record.write(rec, out)
    if tracker:
        logged.finish(rec)
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
    from .probe import probe as run
    result = run(checkpoint_or_run, batches)
    if as_json:
        return _print_json(result)
    for key, value in result.items():
        click.echo(f"{key:<18} {value:.4f}" if isinstance(value, float) else f"{key:<18} {value}")


# -- measure ------------------------------------------------------------------------------------------------------
@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--text", "texts", multiple=True, required=True, type=click.Path(),
              help="Text file (repeatable): .txt, .jsonl ('text' field), .parquet ('text' column) or .npy token ids.")
@click.option("--tokens", default=16384, show_default=True, type=click.IntRange(1), help="Predicted tokens measured.")
@click.option("--seq-len", type=click.IntRange(2), default=None,
              help="Tokens per window (default: min(1024, the model's positions)).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the windows drawn from the text.")
@click.option("--spectrum", "spectrum_method", type=click.Choice(["auto", "exact", "sketch"]), default="auto",
              show_default=True, help="Exact Gram spectrum, Frequent Directions sketch, or exact when min(N, V) <= 8192.")
@click.option("--sketch-size", type=click.IntRange(2), default=None,
              help="Directions kept by the sketch (default: max(1024, 2·rank + 128)).")
@click.option("--step-norm", default=0.1, show_default=True, type=click.FloatRange(0, min_open=True),
              help="RMS logit change per token of the equal-norm update.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Windows per forward batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N] or mps.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "float64"]), default="float32",
              show_default=True, help="The model's weights (the head's analysis runs in float32, or float64).")
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
              help="Tokenizer folder (default: the checkpoint's, or its parent's for a trajectory).")
@click.option("--max-memory", type=click.FloatRange(0, min_open=True), default=None,
              help="GiB the measurement may use (default: the memory available); checked before loading.")
@click.option("--out", type=click.Path(file_okay=False), default="measurements", show_default=True,
              help="Folder for the records <measure_id>.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON list and nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def measure(models, texts, tokens, seq_len, seed, spectrum_method, sketch_size, step_norm, batch_size, device, dtype,
            tokenizer, max_memory, out, as_json, quiet):
    """Gradient bottleneck of local causal LMs: each MODEL is a Hugging Face checkpoint folder, or a folder of
    checkpoints (a trajectory, measured in step order). Writes one record per checkpoint to OUT."""
    from .measure.board import summary_table
    from .measure.run import Settings, measure as run
    settings = Settings(tokens=tokens, seq_len=seq_len, seed=seed, batch_size=batch_size, spectrum=spectrum_method,
                        sketch_size=sketch_size, step_norm=step_norm, device=device, dtype=dtype,
                        max_memory=max_memory, tokenizer=tokenizer)
    results = run(list(models), list(texts), out, settings, progress=not quiet and not as_json and sys.stderr.isatty())
    if as_json:
        return _print_json([rec for rec, _ in results])
    click.echo(summary_table([rec for rec, _ in results]), nl=False)
    click.echo(f"wrote {len(results)} record(s) to {out}: {', '.join(p.name for _, p in results)}", err=True)


allow_missing_option = click.option(
    "--allow-missing-tasks", is_flag=True,
    help="Score runs whose task is not registered here (no floors, so no verdict beyond 'undetermined').")


def _check_tasks(runs, allow: bool) -> None:
    """Refuse runs of tasks that are not registered (their floors and verdicts would be missing) unless ``allow``."""
    from .task import TASKS
    missing = sorted(set(runs["task"] if "task" in runs else ()) - set(TASKS.names()))  # none: measurements only
    if missing and not allow:
        raise SpamLangError(f"the runs use task(s) not registered here: {', '.join(missing)}; load their files with "
                            f"--tasks-dir DIR (or --allow-missing-tasks to score them without floors)")


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
@allow_missing_option
@plugin_options
def score(folder, fmt, as_json, by, tolerance, allow_missing_tasks):
    """Learnability table of the run records under FOLDER: floors, gaps, verdicts, diagnostics."""
    from pathlib import Path

    from .floors import CACHE_NAME, FloorCache
    from .frames import load_runs
    from .scorer import score as run
    from .tables import format_table
    fields = [f.strip() for f in by.split(",") if f.strip()] if by else None
    runs = load_runs(folder)
    _check_tasks(runs, allow_missing_tasks)
    scored = run(runs, by=fields, tolerance=tolerance, cache=FloorCache(Path(folder) / CACHE_NAME))
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
    from . import plots
    from .frames import load_runs
    from .speedup import format_speedup, speedup_table
    runs = load_runs(folder)
    table = speedup_table(runs, reference)
    click.echo(format_speedup(table, fmt), nl=False)
    if plot:
        figure = plots.loss_vs_tokens(table, runs)
        if figure is None:
            raise SpamLangError("nothing to plot: no configuration has both the reference head and another head")
        plots.save(figure, plot)


# -- suites and run -----------------------------------------------------------------------------------------------
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

    from .harness import device_name, resolve_device
    from .plan import duration, estimate, machine_rate
    from .suite import builtin_names, load
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
@click.option("--extend-budget", type=click.FloatRange(min=1), default=None,
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
@tracker_option
@threads_option
@plugin_options
def run(suite, out, executor, workers, device, lr_rounds, extend_budget, filters, limit, dry_run, as_json, quiet,
        tracker, threads):
    """Run SUITE (a built-in name or a .toml file), resuming from what OUT/runs holds, then print the leaderboard."""
    import dataclasses
    from pathlib import Path

    from . import tracking
    from .config import check_device
    from .harness import resolve_device
    from .plan import parse_filters, select
    from .resources import check_run, run_memory
    from .runner import run_suite
    from .suite import load
    spec = load(suite)
    if filters or limit:
        spec = dataclasses.replace(spec, runs=tuple(select(spec.runs, parse_filters(filters), limit)))
    if device:
        check_device(device)
    if tracker:
        tracking.check(tracker)
    if dry_run:
        return _dry_run(spec, Path(out or Path("out") / spec.name), device, lr_rounds, as_json)
    if executor == "local":
        for name in {device} if device else {c.device for c in spec.runs}:
            resolve_device(name)  # refuse it before any run
        kind = resolve_device(device or spec.runs[0].device)
        largest = max(spec.runs, key=lambda c: run_memory(c, kind.type)["total"])
        check_run(largest, kind.type, kind.index, copies=min(workers, len(spec.runs)) if kind.type == "cpu" else 1)
    out = Path(out or Path("out") / spec.name)
    bar = not quiet and sys.stderr.isatty()
    log = None if quiet or bar else lambda line: click.echo(line, err=True)
    try:
        counts = run_suite(spec, out, executor, workers, device, progress=bar, lr_rounds=lr_rounds, threads=threads,
                           log=log, extend_budget=extend_budget,
                           tracker=tracking.TrackerSpec(tracker, str(out.resolve()), spec.name) if tracker else None)
    except KeyboardInterrupt:
        _fail(f"interrupted; the finished runs are kept in {out / 'runs'}: rerun the same command to resume", 130)
    budget = f", {counts['budget_added']} by the budget round" if counts["budget_added"] else ""
    click.echo(f"suite {spec.name}: {counts['total']} runs ({counts['lr_added']} added by {counts['lr_rounds']} lr "
               f"round(s){budget}), {counts['skipped']} already recorded, {counts['ok']} ok, {counts['diverged']} diverged, "
               f"{counts['failed']} failed -> {out / 'runs'}", err=True)
    board = _write_leaderboard([out / "runs"], out, as_json=as_json)
    if as_json:
        _print_json({"suite": spec.name, "source": spec.source, "runs_dir": str(out / "runs"), **counts,
                     **_board_json(board)})
    if counts["failed"]:
        sys.exit(1)


def _dry_run(spec, out, device: str | None, lr_rounds: int, as_json: bool) -> None:
    """Print what ``spamlang run`` would do (see :func:`spamlang.plan.plan`); nothing is trained or written."""
    from .errors import ConfigError
    from .harness import device_name, resolve_device
    from .plan import calibrate, plan, plan_text, recorded_runs
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


# -- leaderboard --------------------------------------------------------------------------------------------------
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
    board = _write_leaderboard(folders, out or folders[0], formats, allow_missing_tasks, as_json=as_json)
    if as_json:
        _print_json(_board_json(board, configurations=True))


def _write_leaderboard(folders, out, formats=(), allow_missing_tasks=False, as_json=False):
    """Write the leaderboard of FOLDERS into OUT, print it (unless ``as_json``), then (on stderr) what was learned and
    every file; return what :func:`spamlang.leaderboard.write` returns."""
    from .leaderboard import FORMATS, load_folders, write
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

    from .tables import format_table

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
    from .leaderboard import load_folders, write_fit
    if out is None and len(folders) > 1:
        raise SpamLangError("--out is required with several folders")
    runs = load_folders(folders)
    text, written = write_fit(runs, out or folders[0], _command_line(), resamples, seed)
    click.echo(text, nl=False)
    click.echo(f"wrote {len(written)} files: {', '.join(map(str, written))}", err=True)


# -- doctor -------------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--seconds", default=2.0, show_default=True, type=click.FloatRange(0, 60),
              help="How long the throughput check trains a small model on the CPU (0: skip it).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, ok, detail}.")
def doctor(seconds, as_json):
    """Check this machine for SpamLang: versions and optional extras, the thread policy, devices, bf16 autocast and
    torch.compile, free memory and disk, the tasks, heads and built-in suites, and a short training throughput. Exit
    status 1 when something SpamLang needs is broken (a missing extra or GPU is reported, not an error)."""
    from .doctor import run_checks
    checks = run_checks(seconds)
    if as_json:
        _print_json(checks)
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{'ok ' if c.ok else 'BAD'}  {c.name:<{width}}  {c.detail}")
    bad = [c.name for c in checks if not c.ok]
    if bad:
        _fail(f"{len(bad)} check(s) failed: {', '.join(bad)}", code=1)


#: allocator messages of an out-of-memory RuntimeError (PyTorch's CPU and CUDA allocators)
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|not enough memory", re.I)


def _memory_message(exc: BaseException) -> str:
    tried = re.search(r"allocate (\d+) bytes", str(exc))
    if tried:
        from .resources import human
        size = f" (an allocation of {human(int(tried.group(1)))} failed)"
    else:
        size = ""
    return f"out of memory{size}; lower the vocabulary size, width, batch size or workers"


def main(argv=None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    warnings.showwarning = lambda message, *a, **k: click.echo(f"spamlang: warning: {message}", err=True)
    try:
        cli.main(args=argv, prog_name="spamlang", standalone_mode=False, obj={"argv": argv})
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: bad flag, missing or malformed value
        _fail(exc.format_message().replace("\n", " "), code=exc.exit_code)
    except click.Abort:
        _fail("interrupted", code=130)
    except SpamLangError as exc:
        _fail(str(exc))
    except OSError as exc:  # an unwritable or missing path, a full disk
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    except MemoryError as exc:
        _fail(_memory_message(exc))
    except RuntimeError as exc:
        if not _OUT_OF_MEMORY.search(str(exc)):
            raise
        _fail(_memory_message(exc))


if __name__ == "__main__":
    main()
