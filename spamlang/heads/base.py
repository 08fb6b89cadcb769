"""The head API: the last layer, from hidden states (N, D) to a next-token loss over V symbols.

A head is an ``nn.Module`` registered with :func:`register_head`. Besides its loss it exposes what the gradient
diagnostics need: the logit gradient G and an orthonormal basis Q of the logit subspace whose component of G reaches
the backbone (``logit_gradient``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from spamlang import params as P
from spamlang.errors import ConfigError
from spamlang.registry import Registry


class Head(nn.Module):
    """Base class of heads. Subclasses set ``name`` and implement ``loss``, ``log_probs`` and ``logit_gradient``
    (and ``logits``, for the ``update_cosine`` diagnostic)."""

    name: ClassVar[str] = ""
    #: whether the head takes ``rank`` (``--head-rank``); heads that do not must be given rank None.
    uses_rank: ClassVar[bool] = False
    #: a frozen dataclass of the head's extra parameters (declared with ``spamlang.param``), or None.
    Params: ClassVar[type | None] = None
    #: whether the output matrix is the backbone's input embedding (then a task whose target is the current input
    #: token, ``Task.copies_input``, starts solved)
    shares_embedding: ClassVar[bool] = False

    def __init__(self, vocab_size: int, d_model: int, rank: int | None, embedding: nn.Embedding, params=None):
        super().__init__()
        self.vocab_size, self.d_model, self.params = vocab_size, d_model, params

    @classmethod
    def check(cls, vocab_size: int, d_model: int, rank: int | None, embed_dim: int) -> None:
        """Raise ConfigError for an impossible combination. Subclasses extend and call super()."""
        if rank is not None and not cls.uses_rank:
            raise ConfigError(f"head '{cls.name}' takes no rank (got head_rank={rank}); leave --head-rank unset")
        if cls.uses_rank and rank is None:
            raise ConfigError(f"head '{cls.name}' needs a rank (--head-rank)")
        if rank is not None and not 1 <= rank <= min(d_model, vocab_size):
            raise ConfigError(f"head '{cls.name}': head_rank must be in [1, min(d_model, vocab_size)="
                              f"{min(d_model, vocab_size)}], got {rank}")

    @classmethod
    def forward_rank(cls, d_model: int, rank: int | None) -> int | None:
        """The largest rank of the logit matrices H Wᵀ this head can output for free hidden states H and weights:
        what decides its expressivity floor (see docs/science.md). None: not known, so the floor is estimated."""
        return None

    @classmethod
    def forward_rank_at(cls, vocab_size: int, d_model: int, rank: int | None, params) -> int | None:
        """The forward rank the expressivity floor uses: :meth:`forward_rank`, unless a head's depends on V or on its
        parameters (``params``: its checked ``Params``, or None). A head may declare a rank r that it reaches only in
        a limit, approaching every log-probability matrix of a linear head of rank r (a floor is an infimum)."""
        return cls.forward_rank(d_model, rank)

    @classmethod
    def check_params(cls, params, vocab_size: int, d_model: int) -> None:
        """Raise ConfigError for parameters (``params``: the checked ``Params``, or None) impossible at this V and D."""

    @classmethod
    def train_macs(cls, vocab_size: int, d_model: int, rank: int | None, params) -> float:
        """Multiply-adds of the training loss per predictable position, forward and backward, counting the matrix
        products only: three times the forward's (the backward multiplies by both factors), four where the loss
        recomputes its forward in the backward (checkpointed chunks). The default is a linear map's, 3 V D."""
        return 3.0 * vocab_size * d_model

    @classmethod
    def build(cls, vocab_size: int, d_model: int, rank: int | None, embedding: nn.Embedding,
              params: Mapping[str, Any] | None = None) -> "Head":
        """A checked, fresh head from its settings and its (untyped) parameters; ``embedding`` is the backbone's input
        embedding, which a head may share."""
        cls.check(vocab_size, d_model, rank, embedding.embedding_dim)
        params = head_params(cls, params)
        cls.check_params(params, vocab_size, d_model)
        return cls(vocab_size, d_model, rank, embedding, params)

    @property
    def rank(self) -> int:
        """Rank of the map through which the logit gradient reaches the backbone."""
        raise NotImplementedError

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``targets`` (N,) given hidden states ``h`` (N, D), never holding all N x V logits."""
        raise NotImplementedError

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities (N, V); callers keep N small (evaluation chunks)."""
        raise NotImplementedError

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The logits of the head's last linear map, differentiable in the head's parameters and ``h``: the tensor
        whose gradient ``logit_gradient`` returns, (M, V) (or (M K, V) for a mixture of K such maps)."""
        raise NotImplementedError

    def logit_gradient(self, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, Q): the gradient of the mean loss w.r.t. the logits of the head's last linear map, (M, V), and an
        orthonormal basis (V, rank) of the logit subspace whose component of G the backbone receives."""
        raise NotImplementedError


HEADS: Registry[Head] = Registry("head", Head, "spamlang.heads", "spamlang.heads", path_env="SPAMLANG_HEADS_PATH")


def register_head(cls: type) -> type:
    """Class decorator that adds a head to the registry."""
    return HEADS.register(cls)


def head_params(cls: type, values: Mapping[str, Any] | None, *, from_strings: bool = False):
    """Build and validate a head's extra parameters (None for heads without any)."""
    if cls.Params is None:
        if values:
            raise ConfigError(f"head '{cls.name}' takes no parameters, got {', '.join(values)}")
        return None
    obj = P.build(cls.Params, f"head '{cls.name}'", values or {}, from_strings=from_strings)
    P.validate_fields(obj, f"head '{cls.name}'")
    return obj


def describe_params(cls: type) -> list[dict]:
    return P.describe(cls.Params) if cls.Params is not None and dataclasses.is_dataclass(cls.Params) else []


#: the run settings that name a head design
HEAD_FIELDS = ("head", "head_rank", "head_params")


def head_label(head: str, rank: int | None = None, params: Mapping[str, Any] | None = None) -> str:
    """A head design as one label, as every table and log shows it: ``linear``, ``lowrank:8``,
    ``mos(components=4)`` (a missing rank may be None or NaN)."""
    label = head if rank is None or (isinstance(rank, float) and math.isnan(rank)) else f"{head}:{rank}"
    return f"{label}({', '.join(f'{k}={v}' for k, v in params.items())})" if params else label

