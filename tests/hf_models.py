"""Tiny random Hugging Face checkpoints and a BPE tokenizer trained on the spot, saved like a user's folders."""
from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = ("the a of to and in is was for on with as by at from that it he she they we you this which or be are "
         "cat dog house river tree stone light water fire wind cloud bird fish road city king queen book song "
         "runs sees takes makes finds gives tells walks flies sings reads writes").split()
VOCAB = 320


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """Sentences of random words (a fixed seed): the documents of the test texts."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))) + "." for _ in range(lines)]


def tokenizer(folder: Path):
    """A byte-level BPE tokenizer of VOCAB ids trained on :func:`corpus`, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def config(arch: str, tied: bool, d: int = 24):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig
    common = {"vocab_size": VOCAB, "tie_word_embeddings": tied, "bos_token_id": 0, "eos_token_id": 0}
    if arch == "gpt2":
        return GPT2Config(n_embd=d, n_layer=2, n_head=2, n_positions=64, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, max_position_embeddings=64, **common)
    if arch == "neox":
        return GPTNeoXConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=64, **common)
    raise ValueError(arch)


def checkpoint(folder: Path, arch: str, tied: bool, seed: int = 0, with_tokenizer: bool = True,
               init_std: float | None = None) -> Path:
    """A random ``arch`` causal LM saved with save_pretrained (and the tokenizer unless told not to)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = config(arch, tied)
    if init_std is not None:
        cfg.initializer_range = init_std
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    if with_tokenizer:
        tokenizer(folder)
    return folder
