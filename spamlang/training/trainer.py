"""The trainer of one run: its model, optimizer and training stream, the learning-rate schedule and one step.

Data is sampled on the fly, on the training device, from the task's seeded ``train`` stream. Held-out evaluation
(:mod:`.evaluator`) and the gradient probes (:mod:`.probes`) read the trainer; the loop (:mod:`.loop`) drives all
three and writes the run record.
"""
from __future__ import annotations

import math

import torch

from spamlang.config import RunConfig
from spamlang.rng import Rng
from spamlang.task import make_task
from spamlang.training.devices import autocast, resolve_device
from spamlang.training.model import LanguageModel

#: training tokens drawn per call of ``Task.sample``: the next steps' batches come from one call (a task's row i
#: depends only on its stream and offset + i, so they are the same tokens as step-by-step draws), which spreads the
#: sampler's fixed cost of a few hundred small operations over many steps
PREFETCH_TOKENS = 2**16


def learning_rate(config: RunConfig, step: int) -> float:
    """Linear warm-up, then the schedule: cosine decay to 10% at the last step, constant, or wsd (constant until the
    last ``decay`` share of the steps, then linear to 10%). Under ``constant``, and under ``wsd`` before its decay,
    the lr at a step does not depend on the number of steps, so neither does the step at which a run learns."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "wsd":
        start = config.steps - config.decay * config.steps
        return config.lr * (1 - 0.9 * min(1.0, max(0.0, step + 1 - start) / (config.steps - start)))
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(config: RunConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95; decoupled weight decay) or SGD with momentum (L2 weight decay), as ``config`` says."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    return torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay, **fused)


def positions(mask: torch.Tensor) -> slice | torch.Tensor:
    """The positions a bool mask (P,) selects, as a slice when they are one contiguous run (every built-in task's):
    indexing by it is a view instead of a gather, and its gradient a copy instead of a scatter; the same values."""
    index = mask.nonzero().flatten().tolist()
    return slice(index[0], index[-1] + 1) if index and index == list(range(index[0], index[-1] + 1)) else mask


class Trainer:
    """The model, optimizer and training stream of one run, and its training step; the symbols seen so far."""

    def __init__(self, config: RunConfig):
        self.config = config = config.resolve()
        self.task = make_task(config.task, config.task_params)
        self.device = resolve_device(config.device)
        with torch.random.fork_rng(devices=[]):  # the initialisation is seeded without touching the caller's RNG
            torch.manual_seed(config.seed)
            self.model = LanguageModel(config).to(self.device)
        self.forward = torch.compile(self.model.hidden) if config.compile else self.model.hidden
        self.optimizer = make_optimizer(config, self.model.parameters(), self.device)
        self.mask = self.task.predictable_mask(config.seq_len)[1:].to(self.device)  # (T-1,) over targets
        self.positions = positions(self.mask)
        self.symbols_per_sequence = self.task.symbols_per_sequence(config.seq_len)
        self.train_stream = Rng(config.seed, "train")
        self.seen = torch.zeros(config.vocab_size, dtype=torch.bool, device=self.device)
        self.prefetch_steps = max(1, PREFETCH_TOKENS // (config.batch_size * config.seq_len))
        self._prefetched: tuple[int, torch.Tensor | None] = (0, None)  # (first step, its tokens and the next steps')

    def autocast(self):
        """The run's autocast context (see :func:`spamlang.training.devices.autocast`)."""
        return autocast(self.config.precision, self.device)

    def split(self, tokens: torch.Tensor, hidden=None):
        """Hidden states and targets of the predictable positions: (M, D), (M,). ``hidden`` defaults to the model's."""
        with self.autocast():
            h = (hidden or self.forward)(tokens[:, :-1])  # (B, T-1, D)
        return h[:, self.positions].reshape(-1, h.shape[-1]), tokens[:, 1:][:, self.positions].reshape(-1)

    def optimize(self, model: LanguageModel, optimizer: torch.optim.Optimizer, h: torch.Tensor, y: torch.Tensor,
                 lr: float) -> torch.Tensor:
        """One optimizer step of ``model`` on the loss of hidden states h (M, D) and targets y (M,)."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            loss = model.head.loss(h, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
        optimizer.step()
        return loss.detach()

    def batch(self, step: int) -> torch.Tensor:
        """The tokens of training step ``step`` (B, T): rows step·B to (step + 1)·B of the ``train`` stream. They are
        sampled with the next ``prefetch_steps - 1`` steps' in one call (no further than the run's last step) and kept
        until used: the same tokens as one call per step."""
        c = self.config
        first, block = self._prefetched
        if block is None or not 0 <= step - first < len(block) // c.batch_size:
            steps = max(1, min(self.prefetch_steps, c.steps - step))
            block = self.task.sample(steps * c.batch_size, c.seq_len, c.vocab_size, self.train_stream, self.device,
                                     offset=step * c.batch_size)  # (steps B, T)
            self._prefetched = first, block = step, block
        start = (step - first) * c.batch_size
        return block[start:start + c.batch_size]

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        tokens = self.batch(step)  # (B, T)
        self.seen[tokens.reshape(-1)] = True
        return self.optimize(self.model, self.optimizer, *self.split(tokens), learning_rate(c, step))
