"""``spamlang generate`` and ``prepare-text``: token corpora on disk."""
from __future__ import annotations

import sys

import click

from spamlang.cli.app import cli
from spamlang.cli.options import FiniteRange, _task_from, param_option, plugin_options


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

    from spamlang.data.corpus import generate as run
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
@click.option("--holdout", default=0.05, show_default=True, type=FiniteRange(0, 0.5, min_open=True, max_open=True),
              help="Share of documents in each of val and test.")
@click.option("--force", is_flag=True, help="Replace a folder that holds a previous prepared corpus and nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def prepare_text(sources, out, txt_documents, vocab_sizes, split_seed, holdout, force, quiet):
    """Read text SOURCES (files or folders of .txt/.md, .jsonl with a 'text' field, .parquet with a 'text' column;
    or one built-in corpus name) into a corpus folder for the 'text' task (task parameter corpus=OUT)."""
    from pathlib import Path

    from spamlang.data.textcorpus import prepare
    from spamlang.data.tokenizer import check_tokenizer, load
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
