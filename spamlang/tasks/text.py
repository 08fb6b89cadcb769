"""Natural text: fixed-length windows of a tokenized corpus, each split drawn from its own documents."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from spamlang.data.textcorpus import SPLITS, check_available, locate
from spamlang.data.tokenizer import TOKENS_VERSION, TokenArrays, check_tokenizer, load
from spamlang.errors import SpamLangError
from spamlang.params import param
from spamlang.task import Task, register_task


@functools.lru_cache(maxsize=8)
def _tokens(corpus: str, tokenizer: str, vocab_size: int, split_seed: int, holdout: float) -> TokenArrays:
    return load(locate(corpus), tokenizer, vocab_size, split_seed, holdout)


def stream_split(generator) -> str:
    """The split a random stream draws from: the last of train/val/test in its path (``Rng(seed, "val")``), else
    train. The harness names its streams so, which keeps training windows on training documents."""
    return next((label for label in reversed(generator.path) if label in SPLITS), "train")


@register_task
@dataclass(frozen=True)
class Text(Task):
    """Windows of T consecutive tokens from a tokenized text corpus, at a random position of the stream's split.

    Example (V = 1024, T = 8, gensim-wiki, a val window as its BPE pieces): ``' A' 'T' 'P' ' M' 'ast' 'ers' ' to'
    'urn'``. The next token is predicted at every position after the first.
    Documents are split into train/val/test by a hash of their text and ``split_seed``; training windows come from
    train documents, the ``val`` and ``test`` streams from theirs. No Bayes loss is known (reported as NaN).
    """

    name = "text"
    version = TOKENS_VERSION

    corpus: str = param("gensim-wiki", "a built-in corpus (gensim-wiki, gensim-lee) or a prepared corpus folder")
    tokenizer: str = param("bpe", "'bpe' (byte-level BPE trained at V on the train split) or a tokenizer folder")
    split_seed: int = param(0, "seed of the document split", low=0, high=2**32 - 1)
    holdout: float = param(0.05, "share of documents in each of val and test", low=0, high=0.5, low_open=True,
                           high_open=True)

    def check(self, vocab_size, seq_len):
        super().check(vocab_size, seq_len)
        check_tokenizer(self.tokenizer, vocab_size)
        check_available(self.corpus)

    def arrays(self, vocab_size: int) -> TokenArrays:
        return _tokens(self.corpus, self.tokenizer, vocab_size, self.split_seed, self.holdout)

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        split = stream_split(generator)
        tokens = self.arrays(vocab_size).splits[split]
        starts_count = len(tokens) - seq_len + 1
        if starts_count < 1:
            raise SpamLangError(f"the {split} split of corpus '{self.corpus}' has {len(tokens)} tokens, fewer than "
                                f"seq_len {seq_len}")
        starts = generator.child("window").integers(starts_count, (num_sequences,), offset=offset).numpy()
        windows = tokens[starts[:, None] + np.arange(seq_len)]  # (N, T)
        return torch.from_numpy(windows.astype(np.int64)).to(device)

    def bayes_loss(self, vocab_size, seq_len):
        return math.nan  # unknown for natural text

    def provenance(self, vocab_size):
        meta = self.arrays(vocab_size).meta
        return {"corpus": self.corpus, **{k: meta[k] for k in ("corpus_sha256", "tokenizer", "split_seed", "holdout", "documents",
                                     "tokens")}}
