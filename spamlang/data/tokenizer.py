"""Tokenized text corpora: a tokenizer at a chosen vocabulary size V and the corpus's splits as token arrays.

The tokenizer is either a byte-level BPE trained with the ``tokenizers`` library on the train split at exactly V
tokens (``<|endoftext|>`` included), or a local Hugging Face tokenizer folder (its ``tokenizer.json``) whose size
must be V. Each split is the concatenation of its documents' tokens, each document followed by the end-of-text token
(when the tokenizer has one). Tokenizer and arrays are cached together under the cache folder by corpus sha256,
tokenizer, V and split, written atomically; the arrays are read memory-mapped, so a corpus need not fit in memory.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from spamlang import __version__
from spamlang.data.textcorpus import SPLITS, cache_root, documents, read_meta, split_of
from spamlang.errors import ConfigError, SpamLangError
from spamlang.system import atomic

EOS = "<|endoftext|>"
#: end-of-text tokens looked for in a Hugging Face tokenizer, in this order
EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
#: a byte-level BPE starts from the 256 byte tokens and the end-of-text token
MIN_BPE_VOCAB = 257
#: bump when the way tokens are produced changes (the cache and the text task's version follow it)
TOKENS_VERSION = 1
BATCH = 256


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise SpamLangError("text tasks need the tokenizers library: pip install 'spamlang[text]'") from None
    return tokenizers


def check_tokenizer(tokenizer: str, vocab_size: int) -> None:
    """Cheap checks before any work: the tokenizers library installed, V large enough for a byte-level BPE, or the
    tokenizer folder present."""
    import importlib.util
    if importlib.util.find_spec("tokenizers") is None:
        raise SpamLangError("text tasks need the tokenizers library, which is not installed: pip install "
                            "'spamlang[text]'")
    if tokenizer == "bpe":
        if vocab_size < MIN_BPE_VOCAB:
            raise ConfigError(f"a byte-level BPE needs vocab_size >= {MIN_BPE_VOCAB} (256 bytes and {EOS}), "
                              f"got {vocab_size}")
    elif not (Path(tokenizer).expanduser() / "tokenizer.json").is_file():
        raise SpamLangError(f"tokenizer folder not found: {tokenizer} (expected 'bpe' or a folder with "
                            f"tokenizer.json)")


@dataclass(frozen=True)
class TokenArrays:
    """The token arrays of one corpus's splits under one tokenizer, and their provenance (``meta``)."""

    splits: dict[str, np.ndarray]
    meta: dict
    folder: Path


def _split_documents(folder: Path, meta: dict, split: str, seed: int, holdout: float) -> Iterator[str]:
    return (d for d in documents(folder, meta["sha256"]) if split_of(d, seed, holdout) == split)


def _train_bpe(folder: Path, meta: dict, vocab_size: int, seed: int, holdout: float, progress: bool):
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=progress,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_split_documents(folder, meta, "train", seed, holdout), trainer)
    if tokenizer.get_vocab_size() < vocab_size:
        raise SpamLangError(f"the train split of corpus {folder} supports at most {tokenizer.get_vocab_size()} BPE "
                            f"tokens, fewer than vocab_size {vocab_size} (use a smaller V or a larger corpus)")
    return tokenizer


def _load_hf(path: str, vocab_size: int):
    tk = _tokenizers()
    try:
        tokenizer = tk.Tokenizer.from_file(str(Path(path).expanduser() / "tokenizer.json"))
    except Exception as exc:  # the library raises its own exception type for a malformed file
        raise SpamLangError(f"{path}/tokenizer.json: not a readable tokenizer ({exc})") from None
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != vocab_size:
        raise ConfigError(f"tokenizer {path} has {size} tokens; set vocab_size to {size}, got {vocab_size}")
    return tokenizer


def _encode(tokenizer, texts: Iterator[str], eos: int | None, dtype: np.dtype, out: Path, bar) -> tuple[int, int]:
    """Append the tokens of ``texts`` (each followed by ``eos``) to ``out``; return (documents, tokens)."""
    n_docs = n_tokens = 0
    with open(out, "wb") as f:
        batch: list[str] = []
        for text in itertools.chain(texts, [None]):
            if text is not None:
                batch.append(text)
            if batch and (text is None or len(batch) == BATCH):
                ids = [e.ids + ([eos] if eos is not None else []) for e in tokenizer.encode_batch(batch)]
                block = np.fromiter((i for doc in ids for i in doc), dtype=dtype)
                f.write(block.tobytes())
                n_docs, n_tokens = n_docs + len(batch), n_tokens + len(block)
                bar.update(len(batch))
                batch = []
    return n_docs, n_tokens


def _build(tmp: Path, folder: Path, corpus_meta: dict, tokenizer_spec: str, vocab_size: int, seed: int,
           holdout: float, progress: bool) -> None:
    tk = _tokenizers()
    if tokenizer_spec == "bpe":
        tokenizer = _train_bpe(folder, corpus_meta, vocab_size, seed, holdout, progress)
    else:
        tokenizer = _load_hf(tokenizer_spec, vocab_size)
    eos = next((tokenizer.token_to_id(t) for t in EOS_CANDIDATES if tokenizer.token_to_id(t) is not None), None)
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    counts = {}
    with tqdm(total=corpus_meta["documents"], unit="doc", disable=not progress,
              desc=f"tokenize V={vocab_size}") as bar:
        for split in SPLITS:
            counts[split] = _encode(tokenizer, _split_documents(folder, corpus_meta, split, seed, holdout), eos,
                                    dtype, tmp / f"{split}.bin", bar)
    for split, (n_docs, n_tokens) in counts.items():
        if n_docs == 0:
            raise SpamLangError(f"the {split} split of corpus {folder} got none of its {corpus_meta['documents']} "
                                f"documents (holdout {holdout}, split seed {seed}); add documents or raise holdout")
    text = tokenizer.to_str()
    atomic.write_text(tmp / "tokenizer.json", text)
    meta = {"tokens_version": TOKENS_VERSION, "corpus": str(folder), "corpus_sha256": corpus_meta["sha256"],
            "tokenizer": {"kind": "bpe" if tokenizer_spec == "bpe" else "huggingface", "source": tokenizer_spec,
                          "sha256": hashlib.sha256(text.encode()).hexdigest(), "vocab_size": vocab_size,
                          "eos_id": eos, "library": f"tokenizers {tk.__version__}"},
            "split_seed": seed, "holdout": holdout, "dtype": dtype.name,
            "documents": {s: c[0] for s, c in counts.items()}, "tokens": {s: c[1] for s, c in counts.items()},
            "spamlang_version": __version__}
    atomic.write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")


def cache_key(corpus_sha256: str, tokenizer: str, vocab_size: int, seed: int, holdout: float) -> str:
    """The cache folder name of one (corpus, tokenizer, V, split) combination."""
    if tokenizer == "bpe":
        kind = "bpe"
    else:
        kind = "hf-" + hashlib.sha256((Path(tokenizer).expanduser() / "tokenizer.json").read_bytes()).hexdigest()[:12]
    return f"{corpus_sha256[:16]}-{kind}-V{vocab_size}-s{seed}-h{holdout:g}-t{TOKENS_VERSION}"


def load(corpus_folder: Path, tokenizer: str, vocab_size: int, seed: int, holdout: float,
         progress: bool = False) -> TokenArrays:
    """The token arrays of a prepared corpus at V, from the cache, building them first if needed."""
    check_tokenizer(tokenizer, vocab_size)
    corpus_meta = read_meta(corpus_folder)
    folder = cache_root() / "tokens" / cache_key(corpus_meta["sha256"], tokenizer, vocab_size, seed, holdout)
    if not (folder / "meta.json").is_file():
        with atomic.cache_folder(folder) as tmp:
            _build(tmp, corpus_folder, corpus_meta, tokenizer, vocab_size, seed, holdout, progress)
    meta = json.loads((folder / "meta.json").read_text())
    splits = {s: np.memmap(folder / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in SPLITS}
    return TokenArrays(splits, meta, folder)
