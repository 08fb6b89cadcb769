"""The configuration of one training run: a frozen, validated dataclass with a stable content hash (the run id).

Every setting is declared once, with :func:`spamlang.params.param` (default, meaning, allowed range); the command
line's ``train`` options are generated from these declarations. :meth:`RunConfig.resolve` checks a configuration
against its task, backbone and head and returns a :class:`ResolvedConfig`: the type says that it has been resolved.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from spamlang import params as P
from spamlang.errors import ConfigError
from spamlang.params import REQUIRED, mapping, param

#: fields that say how a run executes, not what it computes; they are left out of the run id.
EXECUTION_FIELDS = ("device", "compile", "precision")
SCHEDULES = ("cosine", "constant", "wsd")
#: settings added after the record schema run/2 was published; each enters the run id only when set away from its
#: default, so the run ids of earlier records stay what they were
LATER_FIELDS = ("decay", "stop_after")
DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("adamw", "sgd")
#: autocast precision of the forward pass and loss (see spamlang.training.devices.autocast)
PRECISIONS = ("auto", "fp32", "bf16")
#: SGD momentum unless set; the only value allowed with AdamW, which has no momentum setting
SGD_MOMENTUM = 0.9
#: the settings a suite may sweep (their value chosen on val per configuration): how a configuration is trained,
#: never what it is (task, sizes, head), how it is measured (eval_*, diag_tokens) or executed, nor its seed
SWEEPABLE = ("lr", "weight_decay", "warmup", "schedule", "grad_clip", "optimizer", "momentum", "batch_size")
#: training steps unless set (or set by examples_per_symbol)
DEFAULT_STEPS = 300
#: the absurd-work threshold: a run whose training would take more FLOPs than this (about a month of a fast GPU at
#: 4e14 FLOP/s, millennia of a laptop CPU) is refused; it caps the steps of each model at this over its FLOPs per step
MAX_RUN_FLOPS = 1e21
#: and whatever the model, at most a billion steps (days of the smallest model's fixed per-step cost)
MAX_STEPS = 10**9


def check_device(name: str) -> None:
    """Raise ConfigError unless ``name`` names a kind of device (whether this machine has it is checked on use)."""
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (index and not (kind != "auto" and index.isdigit())):
        raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {name!r}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result. Build with ``RunConfig(...)`` or :meth:`from_dict`."""

    task: str = param(REQUIRED, "Task name (see 'spamlang tasks').")
    vocab_size: int = param(REQUIRED, "Vocabulary size V.", low=2)
    d_model: int = param(32, "Hidden width D.", low=1)
    task_params: Mapping[str, Any] = mapping("The task's parameters (see 'spamlang tasks').")
    backbone: str = param("transformer", "Backbone name (transformer, gru, ...).")
    layers: int = param(2, "Backbone layers.", low=1)
    n_heads: int = param(4, "Attention heads (transformer).", low=1)
    embed_dim: int | None = param(None, "Input embedding width (default: D).", low=1)
    head: str = param("linear", "Head name (see 'spamlang heads').")
    head_rank: int | None = param(None, "Rank r for heads that take one (lowrank, gradproj).", low=1)
    head_params: Mapping[str, Any] = mapping("The head's parameters (see 'spamlang heads').")
    seq_len: int = param(16, "Tokens per sequence.", low=2)
    batch_size: int = param(64, "Sequences per step.", low=1)
    steps: int = param(DEFAULT_STEPS, "Training steps (and at most 1e21 training FLOPs per run).", low=1,
                       high=MAX_STEPS)
    examples_per_symbol: float | None = param(
        None, "Budget in training examples per symbol; sets the steps at resolution (steps = ceil(m V / (batch x "
        "symbols per sequence))).", low=0, low_open=True)
    optimizer: str = param("adamw", "Optimizer.", choices=OPTIMIZERS)
    momentum: float = param(SGD_MOMENTUM, "SGD momentum (optimizer sgd only).", low=0, high=1, high_open=True)
    lr: float = param(3e-3, "Peak learning rate.", low=0, low_open=True)
    weight_decay: float = param(0.0, "Weight decay (decoupled for AdamW, L2 for SGD).", low=0)
    warmup: int = param(20, "Linear warm-up steps.", low=0)
    schedule: str = param("cosine", "Learning-rate schedule after warm-up: cosine decay to 10% at the last step, "
                          "constant, or wsd (stable, then a linear decay to 10% over the last `decay` of the steps).",
                          choices=SCHEDULES)
    decay: float = param(0.2, "Share of the steps, at the end, over which the wsd schedule decays (schedule wsd "
                         "only).", low=0, high=1, low_open=True)
    grad_clip: float = param(1.0, "Gradient-norm clip (0: none).", low=0)
    eval_every: int = param(50, "Steps between evaluations.", low=1)
    stop_after: int = param(0, "Stop once the run has been learned (with evidence) at this many evaluations in a row "
                            "(0: train to the last step); the record says why it stopped.", low=0)
    eval_sequences: int = param(2048, "Sequences in each held-out stream (val, test).", low=1)
    diag_tokens: int = param(256, "Predictable positions used for the gradient diagnostics.", low=1)
    seed: int = param(0, "Training seed (init and data).", low=0, high=2**32, high_open=True)
    eval_seed: int = param(0, "Seed of the held-out streams, combined with the seed (each seed has its own).",
                           low=0, high=2**32, high_open=True)
    device: str = param("auto", "auto, cpu, cuda[:N] or mps.")
    compile: bool = param(False, "torch.compile the backbone (CUDA, or CPU with a C compiler).")
    precision: str = param("auto", "Autocast precision of the forward pass: auto (bf16 on CUDA, fp32 elsewhere), fp32, "
                           "or bf16 on any device (the loss accumulates in fp32 either way).", choices=PRECISIONS)

    def __post_init__(self):
        object.__setattr__(self, "task_params", dict(self.task_params))
        object.__setattr__(self, "head_params", dict(self.head_params))
        if isinstance(self.head, str) and ":" in self.head:  # "lowrank:2": a head and its rank
            name, _, rank = self.head.partition(":")
            if not name or not rank.isdigit():
                raise ConfigError(f"run config: head {self.head!r} must be NAME or NAME:RANK")
            if self.head_rank is not None and self.head_rank != int(rank):
                raise ConfigError(f"run config: head {self.head!r} gives rank {int(rank)} but head_rank is "
                                  f"{self.head_rank}; give the rank once")
            object.__setattr__(self, "head", name)
            object.__setattr__(self, "head_rank", int(rank))
        P.validate_fields(self, "run config")
        check_device(self.device)
        if self.optimizer != "sgd" and self.momentum != SGD_MOMENTUM:
            raise ConfigError(f"momentum applies to optimizer 'sgd' only (optimizer is {self.optimizer!r})")
        if self.schedule != "wsd" and self.decay != 0.2:
            raise ConfigError(f"decay applies to schedule 'wsd' only (schedule is {self.schedule!r})")

    @property
    def width(self) -> int:
        """The input embedding width (``embed_dim``, or ``d_model`` when unset)."""
        return self.embed_dim or self.d_model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown run setting '{unknown[0]}' (settings: {', '.join(sorted(known))})")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is REQUIRED and f.default_factory is REQUIRED
                   and f.name not in values]
        if missing:
            raise ConfigError(f"run setting '{missing[0]}' is required")
        return cls(**values)

    @classmethod
    def from_user(cls, values: Mapping[str, Any]) -> "ResolvedConfig":
        """The one path of settings a person wrote (``spamlang train``'s flags, a suite's runs, ``--dry-run``):
        :meth:`from_dict`, refusing ``steps`` given beside ``examples_per_symbol`` (whatever its value), then
        :meth:`resolve`."""
        if values.get("examples_per_symbol") is not None and "steps" in values:
            raise ConfigError(f"give steps or examples_per_symbol, not both (steps={values['steps']!r}, "
                              f"examples_per_symbol={values['examples_per_symbol']!r})")
        return cls.from_dict(values).resolve()

    @property
    def run_id(self) -> str:
        """A stable hash of everything that determines the result (execution fields excluded)."""
        return config_hash(self.to_dict())

    def resolve(self) -> "ResolvedConfig":
        """This configuration checked against its task, backbone and head (ConfigError for an impossible
        combination), with every task and head parameter typed and filled in with its default. A budget is given
        once: ``steps`` set beside ``examples_per_symbol`` to another value than the one it gives is refused."""
        resolved = ResolvedConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if self.examples_per_symbol is not None and self.steps not in (DEFAULT_STEPS, resolved.steps):
            raise ConfigError(f"give steps or examples_per_symbol, not both (steps={self.steps}, examples_per_symbol="
                              f"{self.examples_per_symbol:g} gives {resolved.steps} steps)")
        return resolved


def config_hash(values: Mapping[str, Any]) -> str:
    """The run id of a configuration's settings (a RunConfig's, or the ``config`` a record stores): a hash of all but
    the execution fields and the LATER_FIELDS left at their defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in LATER_FIELDS}
    content = {k: v for k, v in values.items()
               if k not in EXECUTION_FIELDS and not (k in defaults and v == defaults[k])}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def budget_steps(examples_per_symbol: float, vocab_size: int, batch_size: int, symbols_per_sequence: int) -> int:
    """Steps that show each of V symbols ``m`` times on average: ceil(m · V / (batch · symbols per sequence))."""
    if isinstance(symbols_per_sequence, bool) or not isinstance(symbols_per_sequence, int) or symbols_per_sequence < 1:
        raise ConfigError(f"the task's symbols_per_sequence must be a positive integer, got {symbols_per_sequence!r}")
    exact = examples_per_symbol * vocab_size / (batch_size * symbols_per_sequence)
    return max(1, math.ceil(round(exact, 9)))  # rounded first: 20.000000000000004 is 20 steps


def max_steps(config: RunConfig) -> int:
    """The most steps a run of ``config``'s model may take: :data:`MAX_RUN_FLOPS` over its FLOPs per step, at most
    :data:`MAX_STEPS`."""
    from spamlang.system.threads import step_flops
    return max(1, min(MAX_STEPS, int(MAX_RUN_FLOPS // step_flops(config))))


def check_work(config: RunConfig) -> None:
    """Raise ConfigError for a run above the absurd-work threshold (:data:`MAX_RUN_FLOPS` training FLOPs)."""
    cap = max_steps(config)
    if config.steps > cap:
        given = (f"examples_per_symbol={config.examples_per_symbol:g} gives steps={config.steps:.3g}"
                 if config.examples_per_symbol is not None else f"steps={config.steps:.3g}")
        raise ConfigError(f"run config: {given}, outside the allowed range [1, {cap:.3g}] for this model (at most "
                          f"{MAX_RUN_FLOPS:.0e} training FLOPs and {MAX_STEPS:.0e} steps per run)")


def examples_seen(steps: int, vocab_size: int, batch_size: int, symbols_per_sequence: int) -> float:
    """Training examples per symbol seen in ``steps`` steps: steps · batch · symbols per sequence / V."""
    return steps * batch_size * symbols_per_sequence / vocab_size


@dataclass(frozen=True)
class ResolvedConfig(RunConfig):
    """A :class:`RunConfig` whose task and head parameters are typed (strings from the command line parsed) and
    complete (defaults filled in), so equal runs hash equal, and whose task, backbone and head accept it; a budget
    given as ``examples_per_symbol`` has set ``steps`` (see :func:`budget_steps`).

    Resolution happens on construction, so every instance (``dataclasses.replace`` included) is resolved.
    """

    def __post_init__(self):
        from spamlang.backbones.base import BACKBONES  # the registries import torch: only a resolution needs them
        from spamlang.heads.base import HEADS, head_params
        from spamlang.task import make_task
        super().__post_init__()
        task = make_task(self.task, self.task_params, from_strings=True)
        task.check(self.vocab_size, self.seq_len)
        backbone = BACKBONES.get(self.backbone)
        backbone.check(backbone.config_of(self))
        head = HEADS.get(self.head)
        head.check(self.vocab_size, self.d_model, self.head_rank, self.width)
        extra = head_params(head, self.head_params, from_strings=True)
        head.check_params(extra, self.vocab_size, self.d_model)
        object.__setattr__(self, "task_params", task.params)
        object.__setattr__(self, "head_params", dataclasses.asdict(extra) if extra is not None else {})
        if self.examples_per_symbol is not None:
            object.__setattr__(self, "steps", budget_steps(self.examples_per_symbol, self.vocab_size, self.batch_size,
                                                           task.symbols_per_sequence(self.seq_len)))
        check_work(self)

    def resolve(self) -> "ResolvedConfig":
        return self
