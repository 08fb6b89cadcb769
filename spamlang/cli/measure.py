"""``spamlang measure``: the gradient bottleneck of a local Hugging Face checkpoint."""
from __future__ import annotations

import sys

import click

from spamlang.cli.app import cli
from spamlang.cli.options import FiniteRange, _print_json


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
              show_default=True,
              help="Exact Gram spectrum, Frequent Directions sketch, or exact when min(N, V) <= 8192.")
@click.option("--sketch-size", type=click.IntRange(2), default=None,
              help="Directions kept by the sketch (default: max(1024, 2·rank + 128)).")
@click.option("--step-norm", default=0.1, show_default=True, type=FiniteRange(0, min_open=True),
              help="RMS logit change per token of the equal-norm update.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Windows per forward batch.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N] or mps.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "float64"]), default="float32",
              show_default=True, help="The model's weights (the head's analysis runs in float32, or float64).")
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
              help="Tokenizer folder (default: the checkpoint's, or its parent's for a trajectory).")
@click.option("--max-memory", type=FiniteRange(0, min_open=True), default=None,
              help="GiB the measurement may use (default: the memory available); checked before loading.")
@click.option("--out", type=click.Path(file_okay=False), default="measurements", show_default=True,
              help="Folder for the records <measure_id>.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON list and nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def measure(models, texts, tokens, seq_len, seed, spectrum_method, sketch_size, step_norm, batch_size, device, dtype,
            tokenizer, max_memory, out, as_json, quiet):
    """Gradient bottleneck of local causal LMs: each MODEL is a Hugging Face checkpoint folder, or a folder of
    checkpoints (a trajectory, measured in step order). Writes one record per checkpoint to OUT."""
    from pathlib import Path

    from spamlang.measure.run import Settings
    from spamlang.measure.run import measure as run
    from spamlang.system.atomic import check_output_folder
    check_output_folder(Path(out))
    from spamlang.publishing.models import summary_table
    settings = Settings(tokens=tokens, seq_len=seq_len, seed=seed, batch_size=batch_size, spectrum=spectrum_method,
                        sketch_size=sketch_size, step_norm=step_norm, device=device, dtype=dtype,
                        max_memory=max_memory, tokenizer=tokenizer)
    results = run(list(models), list(texts), out, settings, progress=not quiet and not as_json and sys.stderr.isatty())
    if as_json:
        return _print_json([rec for rec, _ in results])
    click.echo(summary_table([rec for rec, _ in results]), nl=False)
    click.echo(f"wrote {len(results)} record(s) to {out}: {', '.join(p.name for _, p in results)}", err=True)
