"""The corpus generator: a task's tokens written in chunks to one tokens file, with ``meta.json`` beside it.

Formats (``meta.json`` names the ``format``, ``file``, ``dtype`` and ``shape`` [N, T]):

- ``npy``: ``tokens.npy``, an N x T array of the smallest unsigned type that holds V - 1 (``np.load``).
- ``bin``: ``tokens.bin``, nanoGPT's layout: the N sequences one after another as a flat, headerless array of uint16
  (uint32 when V > 65536), read with ``np.memmap(path, dtype=meta["dtype"], mode="r")``; sequence i is
  ``[i * T, (i + 1) * T)``.
- ``parquet``: ``tokens.parquet``, one row per sequence with one column ``input_ids``, a fixed-size list of T unsigned
  integers (smallest type), for pandas, pyarrow and Hugging Face ``datasets``; needs pyarrow (the ``[text]`` extra).

``sha256`` is the hash of the N x T tokens as the smallest unsigned type, row-major, whatever the format: the same
task, V, T, N and seed give the same hash in every format.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spamlang import __version__
from spamlang.errors import ConfigError, SpamLangError
from spamlang.rng import Rng
from spamlang.system import atomic, capacity
from spamlang.task import Task

META_KEYS = ("task", "task_version", "params", "vocab_size", "seq_len", "num_sequences", "seed", "dtype", "sha256",
             "bayes_loss", "spamlang_version")
FORMATS = ("npy", "bin", "parquet")
#: the tokens file of each format
TOKEN_FILES = {"npy": "tokens.npy", "bin": "tokens.bin", "parquet": "tokens.parquet"}
#: the column of a parquet corpus
PARQUET_COLUMN = "input_ids"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds vocab_size - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ConfigError(f"vocab_size {vocab_size} does not fit in 32 bits")


def is_corpus(folder: Path) -> bool:
    """Whether ``folder`` holds a SpamLang corpus and nothing else: a tokens file and a meta.json with the meta
    keys."""
    if {p.name for p in folder.iterdir()} - {"meta.json", *TOKEN_FILES.values()}:
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and all(k in meta for k in META_KEYS)


def file_dtype(vocab_size: int, fmt: str) -> np.dtype:
    """The dtype a corpus of ``fmt`` stores its tokens in: nanoGPT's uint16 (uint32 above 65536 symbols) for ``bin``,
    else the smallest (:func:`token_dtype`)."""
    smallest = token_dtype(vocab_size)
    return np.dtype(np.uint16) if fmt == "bin" and smallest.itemsize < 2 else smallest


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SpamLangError("the parquet format needs pyarrow: pip install pyarrow (or the [text] extra)") from None
    return pyarrow


class _ArrayWriter:
    """Rows into an N x T memory-mapped array (a .npy file, or a flat .bin file viewed as N x T)."""

    def __init__(self, path: Path, fmt: str, dtype: np.dtype, shape: tuple[int, int]):
        if fmt == "npy":
            self.file = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        else:
            self.file = np.memmap(path, dtype=dtype, mode="w+", shape=(shape[0] * shape[1],))
        self.rows = self.file.reshape(shape)  # (N, T) view of the file

    def write(self, start: int, block: np.ndarray) -> None:
        self.rows[start:start + len(block)] = block

    def close(self) -> None:
        self.file.flush()
        del self.rows, self.file


class _ParquetWriter:
    """Rows into a parquet file, one row group per block: column ``input_ids``, a list of T tokens per row."""

    def __init__(self, path: Path, dtype: np.dtype, seq_len: int):
        self.pa = _pyarrow()
        self.seq_len = seq_len
        column = self.pa.list_(self.pa.from_numpy_dtype(dtype), seq_len)
        self.file = self.pa.parquet.ParquetWriter(path, self.pa.schema([(PARQUET_COLUMN, column)]))

    def write(self, start: int, block: np.ndarray) -> None:
        rows = self.pa.FixedSizeListArray.from_arrays(self.pa.array(block.reshape(-1)), self.seq_len)
        self.file.write_table(self.pa.table({PARQUET_COLUMN: rows}))

    def close(self) -> None:
        self.file.close()


def generate(task: Task, vocab_size: int, seq_len: int, num_sequences: int, seed: int, out: str | Path, *,
             fmt: str = "npy", force: bool = False, chunk_tokens: int = 1 << 22, progress: bool = True) -> dict:
    """Write ``num_sequences`` sequences of ``task`` to ``out`` (the tokens file of format ``fmt``, see the module
    docstring, and ``meta.json``); return the meta."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    task.check(vocab_size, seq_len)
    if isinstance(num_sequences, bool) or not isinstance(num_sequences, int) or num_sequences < 1:
        raise ConfigError(f"num_sequences must be an integer >= 1, got {num_sequences!r}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {seed}")
    if fmt == "parquet":
        _pyarrow()  # refuse before writing anything
    dtype, hashed = file_dtype(vocab_size, fmt), token_dtype(vocab_size)
    rows_per_chunk = max(1, chunk_tokens // seq_len)
    rng, digest = Rng(seed, "corpus"), hashlib.sha256()
    capacity.check_disk(out, num_sequences * seq_len * dtype.itemsize, "the corpus")
    with atomic.output_folder(out, force, is_corpus, "corpus (meta.json and a tokens file)") as tmp:
        path, shape = tmp / TOKEN_FILES[fmt], (num_sequences, seq_len)
        tokens = _ParquetWriter(path, dtype, seq_len) if fmt == "parquet" else _ArrayWriter(path, fmt, dtype, shape)
        with tqdm(total=num_sequences, unit="seq", disable=not progress, desc=f"generate {task.name}") as bar:
            for start in range(0, num_sequences, rows_per_chunk):
                n = min(rows_per_chunk, num_sequences - start)
                chunk = task.sample(n, seq_len, vocab_size, rng, offset=start)
                if chunk.shape != (n, seq_len) or chunk.dtype != torch.int64:
                    raise SpamLangError(f"task '{task.name}' returned {tuple(chunk.shape)} {chunk.dtype}, "
                                        f"expected ({n}, {seq_len}) int64")
                block = chunk.numpy()
                tokens.write(start, block.astype(dtype))
                digest.update(np.ascontiguousarray(block.astype(hashed)).tobytes())
                bar.update(n)
        tokens.close()
        meta = {"task": task.name, "task_version": task.version, "params": task.params, "vocab_size": vocab_size,
                "seq_len": seq_len, "num_sequences": num_sequences, "seed": seed, "format": fmt,
                "file": TOKEN_FILES[fmt], "dtype": dtype.name, "shape": list(shape), "sha256": digest.hexdigest(),
                "bayes_loss": task.bayes_loss(vocab_size, seq_len), "spamlang_version": __version__}
        atomic.write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def load(folder: str | Path) -> tuple[np.ndarray, dict]:
    """Read a corpus folder of any format as an N x T array (memory-mapped for npy and bin), checking that its tokens
    file matches meta.json (shape, dtype, sha256). A corpus whose meta.json names no format is npy."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise SpamLangError(f"not a SpamLang corpus: {folder} ({exc})") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise SpamLangError(f"{folder / 'meta.json'}: missing keys {', '.join(missing)}")
    fmt = meta.get("format", "npy")
    if fmt not in FORMATS:
        raise SpamLangError(f"{folder / 'meta.json'}: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    name, shape = TOKEN_FILES[fmt], (meta["num_sequences"], meta["seq_len"])
    try:
        tokens = _read(folder / name, fmt, meta["dtype"], shape)
    except (OSError, ValueError, TypeError) as exc:
        raise SpamLangError(f"not a SpamLang corpus: {folder} ({name}: {exc})") from None
    if tokens.shape != shape or tokens.dtype.name != meta["dtype"]:
        raise SpamLangError(f"{folder}: {name} is {tokens.shape} {tokens.dtype}, meta.json says otherwise")
    hashed = np.ascontiguousarray(tokens.astype(token_dtype(meta["vocab_size"]), copy=False))
    if hashlib.sha256(hashed.tobytes()).hexdigest() != meta["sha256"]:
        raise SpamLangError(f"{folder}: {name} does not match the sha256 in meta.json")
    return tokens, meta


def _read(path: Path, fmt: str, dtype: str, shape: tuple[int, int]) -> np.ndarray:
    """The tokens of one file as an array (ValueError, TypeError or OSError if it cannot be read as ``shape``)."""
    if fmt == "npy":
        return np.load(path, mmap_mode="r")
    if fmt == "bin":
        flat = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        if flat.size != shape[0] * shape[1]:
            raise ValueError(f"{flat.size} tokens, not {shape[0]} x {shape[1]}")
        return flat.reshape(shape)
    pa = _pyarrow()
    try:
        column = pa.parquet.read_table(path, columns=[PARQUET_COLUMN]).column(0).combine_chunks()
    except (pa.ArrowException, KeyError) as exc:
        raise ValueError(str(exc)) from None
    if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != shape[1]:
        raise ValueError(f"column {PARQUET_COLUMN} is {column.type}, not a list of {shape[1]} tokens")
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, shape[1])
