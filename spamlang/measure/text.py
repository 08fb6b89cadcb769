"""Text for a measurement: files read and tokenized with the model's tokenizer, then cut into token windows.

Formats, by suffix: plain text (``.txt``, ``.text``, ``.md``: one document per file), JSON lines (``.jsonl``: one
document per line, its ``text`` field), parquet (``.parquet``: its ``text`` column; needs pyarrow) and pre-tokenized
NumPy arrays (``.npy``: a 1-D token stream, or 2-D rows that are windows already). Documents are joined with the
tokenizer's end-of-text token. The stream is cut into non-overlapping windows of ``seq_len`` tokens and the windows a
measurement needs are drawn at random (``seed``) from the first ``POOL`` times as many tokens as it needs.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from spamlang.errors import SpamLangError

FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".parquet": "parquet", ".npy": "tokens"}
#: windows are drawn from the first POOL x the needed tokens (the files are not tokenized further)
POOL = 4
#: plain text is tokenized in pieces of about this many characters, cut after a newline
PIECE_CHARS = 1 << 20


def describe(path: str | Path) -> dict:
    """{path, format, bytes, sha256} of one input file (SpamLangError if missing or of an unknown format)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SpamLangError(f"{path}: unknown text format '{path.suffix}' (use one of {', '.join(FORMATS)})")
    if not path.is_file():
        raise SpamLangError(f"text file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"path": str(path), "format": fmt, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpamLangError(f"{source}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def documents(path: Path, fmt: str) -> Iterator[str]:
    """The non-empty documents of one text file; SpamLangError if it is not UTF-8, malformed or has none."""
    found = False
    if fmt == "text":
        text = _decode(path.read_bytes(), str(path))
        found = bool(text.strip())
        if found:
            yield text
    elif fmt == "jsonl":
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                line = _decode(line, f"{path}:{number}")
                if not line.strip():
                    continue
                try:
                    text = json.loads(line).get("text")
                except (json.JSONDecodeError, AttributeError):
                    raise SpamLangError(f"{path}:{number}: not a JSON object") from None
                if not isinstance(text, str):
                    raise SpamLangError(f"{path}:{number}: no 'text' string field")
                if text.strip():
                    found = True
                    yield text
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SpamLangError("reading parquet needs pyarrow: pip install 'spamlang[hf]'") from None
        try:
            table = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise SpamLangError(f"{path}: not a parquet file ({exc})") from None
        if "text" not in table.schema_arrow.names:
            raise SpamLangError(f"{path}: no 'text' column (columns: {', '.join(table.schema_arrow.names)})")
        for batch in table.iter_batches(columns=["text"]):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    found = True
                    yield text
    if not found:
        raise SpamLangError(f"{path}: empty (no text)")


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of about PIECE_CHARS characters, each ending after a newline where there is one."""
    start = 0
    while start < len(text):
        stop = min(len(text), start + PIECE_CHARS)
        if stop < len(text):
            cut = text.rfind("\n", start, stop)
            stop = cut + 1 if cut > start else stop
        yield text[start:stop]
        start = stop


def tokenize(files: list[dict], tokenizer, limit: int) -> np.ndarray:
    """One int64 token stream (1-D) of the files' documents, each followed by the end-of-text token, read until it
    holds at least ``limit`` tokens or the files end."""
    eos = tokenizer.eos_token_id
    parts, count = [], 0
    for info in files:
        for text in documents(Path(info["path"]), info["format"]):
            ids = [i for piece in tokenizer(list(_pieces(text)), add_special_tokens=False)["input_ids"] for i in piece]
            parts.append(np.asarray(ids + ([eos] if eos is not None else []), dtype=np.int64))
            count += len(parts[-1])
            if count >= limit:
                return np.concatenate(parts)
    return np.concatenate(parts)


def load_tokens(files: list[dict], vocab_size: int) -> np.ndarray:
    """Pre-tokenized ``.npy`` files as one int64 array: 1-D streams concatenated, or 2-D rows stacked."""
    arrays = []
    for info in files:
        try:
            array = np.load(info["path"], mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SpamLangError(f"{info['path']}: not a NumPy array file ({exc})") from None
        if array.dtype.kind not in "iu" or array.ndim not in (1, 2) or array.size == 0:
            raise SpamLangError(f"{info['path']}: expected a non-empty 1-D or 2-D integer array of token ids, got "
                                f"{array.ndim}-D {array.dtype} of size {array.size}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= vocab_size:
            raise SpamLangError(f"{info['path']}: token ids span [{low}, {high}], outside the model's vocabulary "
                                f"[0, {vocab_size})")
        arrays.append(np.asarray(array, dtype=np.int64))
    if len({a.ndim for a in arrays}) > 1 or len({a.shape[1:] for a in arrays}) > 1:
        raise SpamLangError("pre-tokenized files must all be 1-D streams or all 2-D rows of one length")
    return np.concatenate(arrays)


def windows(tokens: np.ndarray, seq_len: int, n_tokens: int, seed: int) -> np.ndarray:
    """The (W, T) windows holding ``n_tokens`` predicted tokens (T - 1 per window), drawn at random (``seed``)
    from the non-overlapping windows of a 1-D stream, or from the rows (cut to ``seq_len``) of a 2-D array."""
    if tokens.ndim == 2:
        seq_len = min(seq_len, tokens.shape[1])
        candidates = tokens[:, :seq_len]  # (R, T)
    else:
        candidates = tokens[:len(tokens) // seq_len * seq_len].reshape(-1, seq_len)  # (L // T, T)
    if seq_len < 2:
        raise SpamLangError(f"windows of {seq_len} token(s) predict nothing: need at least 2 tokens per window")
    need = math.ceil(n_tokens / (seq_len - 1))
    if len(candidates) < need:
        raise SpamLangError(f"{n_tokens:,} tokens requested, but the text holds only "
                            f"{len(candidates) * (seq_len - 1):,} predicted tokens in {len(candidates):,} windows of "
                            f"{seq_len} (lower --tokens or --seq-len, or give more text)")
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:need]
    return np.ascontiguousarray(candidates[chosen])
