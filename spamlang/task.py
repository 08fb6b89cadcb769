"""The task API: a named, parameterised generator of token sequences with an exact Bayes-optimal loss.

A task is a frozen dataclass whose fields are its parameters (declared with :func:`spamlang.params.param`),
registered with :func:`register_task`. See ``tasks/spam.py`` for the smallest complete example.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from spamlang import params as P
from spamlang.errors import ConfigError
from spamlang.registry import Registry
from spamlang.rng import Rng

MAX_VOCAB = 2**31 - 1


@dataclass(frozen=True)
class Targets:
    """Next-token distributions of a task's contexts: ``probs`` (C, V) with weights (C,) summing to 1.

    ``exhaustive`` is True when the rows are every distinct target (weighted by frequency), False when they are a
    random sample of contexts (then a floor fitted to them must be checked on fresh contexts).
    """

    probs: torch.Tensor
    weights: torch.Tensor
    exhaustive: bool


@dataclass(frozen=True)
class Task:
    """Base class of tasks. Subclasses set ``name`` and ``version`` and implement ``sample``."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    #: True when every predictable position's next token is a function of the context (Bayes loss 0).
    deterministic: ClassVar[bool] = False

    def __post_init__(self):
        P.validate_fields(self, f"task '{self.name}'")

    # -- description ----------------------------------------------------------------------------------------------
    @classmethod
    def describe_params(cls) -> list[dict]:
        return P.describe(cls)

    @property
    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- the contract ---------------------------------------------------------------------------------------------
    def check(self, vocab_size: int, seq_len: int) -> None:
        """Raise ConfigError if this task cannot run at this vocabulary size and sequence length."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 2 <= vocab_size <= MAX_VOCAB:
            raise ConfigError(f"vocab_size must be an integer in [2, 2**31 - 1], got {vocab_size!r}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
            raise ConfigError(f"seq_len must be an integer >= 2, got {seq_len!r}")

    def sample(self, num_sequences: int, seq_len: int, vocab_size: int, generator: Rng, device="cpu",
               offset: int = 0) -> torch.Tensor:
        """int64 tokens (num_sequences, seq_len); row i depends only on (generator, offset + i)."""
        raise NotImplementedError

    def predictable_mask(self, seq_len: int) -> torch.Tensor:
        """bool (seq_len,): positions whose token is scored as a next-token target. Default: all but the first."""
        mask = torch.ones(seq_len, dtype=torch.bool)
        mask[0] = False
        return mask

    def symbols_per_sequence(self, seq_len: int) -> int:
        """Symbol examples one sequence teaches, the unit of a budget in examples per symbol (steps = m · V / (batch ·
        this)). Default: the number of predictable positions; a task whose sequences repeat fewer symbols says so."""
        return int(self.predictable_mask(seq_len).sum())

    def copies_input(self) -> bool:
        """Whether the most likely next token at every predictable position is the current input token (x[t+1] =
        x[t]). A head that shares the input embedding (``Head.shares_embedding``) then starts with the copy solution:
        its logit for the current token is about ‖e_x‖², the largest of the row, so the task cannot show whether that
        head learns (docs/science.md, "Tying and copy tasks"). Default: False."""
        return False

    def bayes_loss(self, vocab_size: int, seq_len: int) -> float:
        """Exact Bayes-optimal cross-entropy, nats per predictable position."""
        if self.deterministic:
            return 0.0
        raise NotImplementedError

    def log_prob(self, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """float64 (N, T): the Bayes predictor's log-probability of each token given its prefix (0 off the mask).

        Its mean over predictable positions is a Monte-Carlo estimate of ``-bayes_loss``; ``spamlang tasks validate``
        checks the two against each other.
        """
        raise NotImplementedError

    def target_distributions(self, vocab_size: int, seq_len: int, num_contexts: int, generator: Rng) -> Targets | None:
        """The task's next-token distributions (for the expressivity floor), or None if it cannot give them."""
        return None

    def provenance(self, vocab_size: int) -> dict | None:
        """What the tokens come from beyond the parameters (a text task: corpus sha256, tokenizer), for the run
        record; None for a generated task."""
        return None

    # -- helpers for subclasses ----------------------------------------------------------------------------------
    @staticmethod
    def _row_streams(generator: Rng, num_sequences: int, width: int, device, offset: int, label: str) -> torch.Tensor:
        """Uniform [0,1) draws (num_sequences, width) where row i is fixed by (generator, label, offset + i)."""
        flat = generator.child(label, width).uniform((num_sequences * width,), device, offset=offset * width)
        return flat.reshape(num_sequences, width)


TASKS: Registry[Task] = Registry("task", Task, "spamlang.tasks", "spamlang.tasks", path_env="SPAMLANG_TASKS_PATH")


def register_task(cls: type) -> type:
    """Class decorator that adds a task to the registry (rejects duplicates and non-Task classes)."""
    if not dataclasses.is_dataclass(cls) or cls.__dict__.get("__dataclass_params__") is None \
            or not cls.__dataclass_params__.frozen:
        raise TypeError(f"task {cls.__qualname__} must be a frozen dataclass (@dataclass(frozen=True))")
    return TASKS.register(cls)


def make_task(name: str, values: Mapping[str, Any] | None = None, *, from_strings: bool = False) -> Task:
    """Build a task by name from parameter values (strings from the CLI are parsed when ``from_strings``)."""
    cls = TASKS.get(name)
    return P.build(cls, f"task '{name}'", values or {}, from_strings=from_strings)
