"""The corpus generator: a task's tokens written to ``tokens.npy`` in chunks, with ``meta.json`` beside them."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, atomic, resources
from .errors import ConfigError, SpamLangError
from .rng import Rng
from .task import Task

META_KEYS = ("task", "task_version", "params", "vocab_size", "seq_len", "num_sequences", "seed", "dtype", "sha256",
             "bayes_loss", "spamlang_version")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds vocab_size - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ConfigError(f"vocab_size {vocab_size} does not fit in 32 bits")


def is_corpus(folder: Path) -> bool:
    """Whether ``folder`` holds a SpamLang corpus and nothing else: tokens.npy and a meta.json with the meta keys."""
    if {p.name for p in folder.iterdir()} - {"tokens.npy", "meta.json"}:
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and all(k in meta for k in META_KEYS)


def generate(task: Task, vocab_size: int, seq_len: int, num_sequences: int, seed: int, out: str | Path, *,
             force: bool = False, chunk_tokens: int = 1 << 22, progress: bool = True) -> dict:
    """Write ``num_sequences`` sequences of ``task`` to ``out/tokens.npy`` and ``out/meta.json``; return the meta."""
    task.check(vocab_size, seq_len)
    if isinstance(num_sequences, bool) or not isinstance(num_sequences, int) or num_sequences < 1:
        raise ConfigError(f"num_sequences must be an integer >= 1, got {num_sequences!r}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {seed}")
    dtype = token_dtype(vocab_size)
    rows_per_chunk = max(1, chunk_tokens // seq_len)
    rng, digest = Rng(seed, "corpus"), hashlib.sha256()
    resources.check_disk(out, num_sequences * seq_len * dtype.itemsize, "the corpus")
    with atomic.output_folder(out, force, is_corpus, "corpus (meta.json, tokens.npy)") as tmp:
        tokens = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=dtype,
                                           shape=(num_sequences, seq_len))
        with tqdm(total=num_sequences, unit="seq", disable=not progress, desc=f"generate {task.name}") as bar:
            for start in range(0, num_sequences, rows_per_chunk):
                n = min(rows_per_chunk, num_sequences - start)
                chunk = task.sample(n, seq_len, vocab_size, rng, offset=start)
                if chunk.shape != (n, seq_len) or chunk.dtype != torch.int64:
                    raise SpamLangError(f"task '{task.name}' returned {tuple(chunk.shape)} {chunk.dtype}, "
                                        f"expected ({n}, {seq_len}) int64")
                block = chunk.numpy().astype(dtype)
                tokens[start:start + n] = block
                digest.update(np.ascontiguousarray(block).tobytes())
                bar.update(n)
        tokens.flush()
        del tokens
        meta = {"task": task.name, "task_version": task.version, "params": task.params, "vocab_size": vocab_size,
                "seq_len": seq_len, "num_sequences": num_sequences, "seed": seed, "dtype": dtype.name,
                "sha256": digest.hexdigest(), "bayes_loss": task.bayes_loss(vocab_size, seq_len),
                "spamlang_version": __version__}
        atomic.write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def load(folder: str | Path) -> tuple[np.ndarray, dict]:
    """Read a corpus folder, checking that tokens.npy matches meta.json (shape, dtype, sha256)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        tokens = np.load(folder / "tokens.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise SpamLangError(f"not a SpamLang corpus: {folder} ({exc})") from None
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise SpamLangError(f"{folder / 'meta.json'}: missing keys {', '.join(missing)}")
    if tokens.shape != (meta["num_sequences"], meta["seq_len"]) or tokens.dtype.name != meta["dtype"]:
        raise SpamLangError(f"{folder}: tokens.npy is {tokens.shape} {tokens.dtype}, meta.json says otherwise")
    if hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest() != meta["sha256"]:
        raise SpamLangError(f"{folder}: tokens.npy does not match the sha256 in meta.json")
    return tokens, meta
