"""The configuration of one training run: a frozen, validated dataclass with a stable content hash (the run id)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError

#: fields that say how a run executes, not what it computes; they are left out of the run id.
EXECUTION_FIELDS = ("device", "compile")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result. Build with ``RunConfig(...)`` or :meth:`from_dict`."""

    task: str
    vocab_size: int
    d_model: int = 32
    task_params: Mapping[str, Any] = field(default_factory=dict)
    backbone: str = "transformer"
    layers: int = 2
    n_heads: int = 4
    embed_dim: int | None = None
    head: str = "linear"
    head_rank: int | None = None
    head_params: Mapping[str, Any] = field(default_factory=dict)
    seq_len: int = 16
    batch_size: int = 64
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 20
    schedule: str = "cosine"
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_sequences: int = 256
    diag_tokens: int = 256
    seed: int = 0
    eval_seed: int = 0
    device: str = "auto"
    compile: bool = False

    def __post_init__(self):
        object.__setattr__(self, "task_params", dict(self.task_params))
        object.__setattr__(self, "head_params", dict(self.head_params))
        for name, low in (("vocab_size", 2), ("d_model", 1), ("layers", 1), ("n_heads", 1), ("seq_len", 2),
                          ("batch_size", 1), ("steps", 1), ("warmup", 0), ("eval_every", 1), ("eval_sequences", 1),
                          ("diag_tokens", 1), ("seed", 0), ("eval_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("seed", "eval_seed"):
            if getattr(self, name) >= 2**32:
                raise ConfigError(f"{name} must be < 2**32, got {getattr(self, name)}")
        for name, value in (("embed_dim", self.embed_dim), ("head_rank", self.head_rank)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ConfigError("lr must be > 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")

    @property
    def width(self) -> int:
        """The input embedding width (``embed_dim``, or ``d_model`` when unset)."""
        return self.embed_dim or self.d_model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown run setting '{unknown[0]}' (settings: {', '.join(sorted(known))})")
        missing = [k for k in ("task", "vocab_size") if k not in values]
        if missing:
            raise ConfigError(f"run setting '{missing[0]}' is required")
        return cls(**values)

    @property
    def run_id(self) -> str:
        """A stable hash of everything that determines the result (execution fields excluded)."""
        content = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
