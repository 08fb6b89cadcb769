"""The training harness: train one model on one task and return its run record.

Data is sampled on the fly, on the training device, from the task's seeded stream; evaluation uses two held-out
streams, ``val`` (for choosing hyper-parameters) and ``test`` (for reporting), on predictable positions only.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import atomic
from .config import RunConfig
from .diagnostics import gradient_diagnostics
from .errors import ConfigError
from .model import LanguageModel
from .record import EvalPoint, Final, RunRecord, Timing, environment, is_learned
from .task import make_task
from .rng import Rng
from .threads import choose, step_flops, using


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
                 "mps": bool(mps and mps.is_available())}
    if not available.get(device.type, False):
        raise ConfigError(f"device '{name}' was requested but is not available on this machine")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu" if device.type == "cpu" else device.type


def learning_rate(config: RunConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% (or constant)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def precision(device: torch.device):
    """On CUDA, let float32 matmuls and convolutions use TF32 inside the block (restored after it)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Trainer:
    """Holds the model, optimizer and data streams of one run."""

    def __init__(self, config: RunConfig):
        self.config = config = config.resolve()
        self.task = make_task(config.task, config.task_params)
        self.device = resolve_device(config.device)
        with torch.random.fork_rng(devices=[]):  # the initialisation is seeded without touching the caller's RNG
            torch.manual_seed(config.seed)
            self.model = LanguageModel(config).to(self.device)
        self.forward = torch.compile(self.model.hidden) if config.compile else self.model.hidden
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                           weight_decay=config.weight_decay, **fused)
        self.mask = self.task.predictable_mask(config.seq_len)[1:].to(self.device)  # (T-1,) over targets
        self.train_stream = Rng(config.seed, "train")
        self.eval_batches = {name: self.task.sample(config.eval_sequences, config.seq_len, config.vocab_size,
                                                    Rng(config.eval_seed, name), self.device) for name in ("val", "test")}
        self.seen = torch.zeros(config.vocab_size, dtype=torch.bool, device=self.device)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def split(self, tokens: torch.Tensor):
        """Hidden states and targets of the predictable positions: (M, D), (M,)."""
        with self.autocast():
            h = self.forward(tokens[:, :-1])  # (B, T-1, D)
        return h[:, self.mask].reshape(-1, h.shape[-1]), tokens[:, 1:][:, self.mask].reshape(-1)

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        tokens = self.task.sample(c.batch_size, c.seq_len, c.vocab_size, self.train_stream, self.device,
                                  offset=step * c.batch_size)  # (B, T)
        self.seen[tokens.reshape(-1)] = True
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(c, step)
        h, y = self.split(tokens)
        with self.autocast():
            loss = self.model.head.loss(h, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, name: str) -> dict:
        """Loss and accuracy on a held-out stream, with accuracy split by whether the target was seen in training."""
        tokens = self.eval_batches[name]
        total, correct, correct_seen, n_seen, count = 0.0, 0, 0, 0, 0
        rows = max(1, (1 << 22) // (self.config.vocab_size * self.config.seq_len))  # bounds the logits held at once
        for start in range(0, len(tokens), rows):
            h, y = self.split(tokens[start:start + rows])
            with self.autocast():
                log_probs = self.model.head.log_probs(h).float()  # (M, V)
            total += -log_probs.gather(1, y[:, None]).sum().item()
            hit = log_probs.argmax(dim=1) == y
            seen = self.seen[y]
            correct += hit.sum().item()
            correct_seen += (hit & seen).sum().item()
            n_seen += seen.sum().item()
            count += len(y)
        n_unseen = count - n_seen
        return {"loss": total / count, "accuracy": correct / count,
                "accuracy_seen": correct_seen / n_seen if n_seen else None,
                "accuracy_unseen": (correct - correct_seen) / n_unseen if n_unseen else None}

    @property
    def diag_rows(self) -> int:
        """Sequences that hold ``diag_tokens`` predictable positions."""
        return -(-self.config.diag_tokens // int(self.mask.sum()))

    def logit_gradient(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's (G, Q) on the first ``diag_tokens`` predictable positions of ``tokens``."""
        with torch.no_grad():
            h, y = self.split(tokens[:self.diag_rows])
        return self.model.head.logit_gradient(h[:self.config.diag_tokens].float(), y[:self.config.diag_tokens])

    def diagnostics(self) -> dict:
        """The gradient diagnostics (docs/science.md) on the first ``diag_tokens`` val positions."""
        return gradient_diagnostics(*self.logit_gradient(self.eval_batches["val"]))

    def eval_point(self, step: int, tokens: int, train_loss: float | None, lr: float) -> EvalPoint:
        self.model.eval()
        val, test = self.evaluate("val"), self.evaluate("test")
        self.model.train()
        return EvalPoint(step=step, tokens=tokens, lr=lr, train_loss=train_loss,
                         val_loss=val["loss"], val_accuracy=val["accuracy"],
                         test_loss=test["loss"], test_accuracy=test["accuracy"],
                         test_accuracy_seen=test["accuracy_seen"], test_accuracy_unseen=test["accuracy_unseen"],
                         coverage=self.seen.float().mean().item(), **self.diagnostics())


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save the model's tensors atomically (loadable with ``torch.load(..., weights_only=True)``)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(config: RunConfig, progress: bool | None = None, checkpoint: str | Path | None = None,
          threads: int | None = None) -> RunRecord:
    """Train one model as ``config`` says and return its run record.

    With ``checkpoint``, the trained weights are saved there (``torch.save`` of tensors only). Torch runs on
    ``threads`` intra-op threads (default: the thread policy's choice for this run, see :mod:`spamlang.threads`),
    recorded as ``env.threads``; the caller's thread count is restored after.
    """
    count = choose(step_flops(config)) if threads is None else threads
    started = datetime.datetime.now(datetime.timezone.utc)
    with using(count):
        trainer = Trainer(config)
        with precision(trainer.device):
            return _train(trainer, started, progress, checkpoint, count)


def _train(trainer: Trainer, started: datetime.datetime, progress: bool | None,
           checkpoint: str | Path | None, threads: int) -> RunRecord:
    task, c = trainer.task, trainer.config
    bayes = task.bayes_loss(c.vocab_size, c.seq_len)
    tokens_per_step = c.batch_size * c.seq_len
    check_every = 1 if trainer.device.type == "cpu" else 16  # each check of the loss waits for the device
    history = [trainer.eval_point(0, 0, None, learning_rate(c, 0))]
    status, steps_done, eval_seconds, loss = "ok", 0, 0.0, float("nan")
    bar = tqdm(total=c.steps, disable=not (sys.stderr.isatty() if progress is None else progress), unit="step",
               desc=f"{c.task} V={c.vocab_size} {c.head}{c.head_rank or ''}", leave=False)
    loop_start = time.perf_counter()
    for step in range(c.steps):
        loss = trainer.train_step(step)
        steps_done += 1
        bar.update(1)
        evaluate = steps_done % c.eval_every == 0 or steps_done == c.steps
        if (evaluate or steps_done % check_every == 0) and not math.isfinite(loss.item()):
            status = "diverged"
            break
        if evaluate:
            _sync(trainer.device)
            t0 = time.perf_counter()
            point = trainer.eval_point(steps_done, steps_done * tokens_per_step, loss.item(), learning_rate(c, step))
            eval_seconds += time.perf_counter() - t0
            history.append(point)
            if not all(math.isfinite(loss) for loss in (point.val_loss, point.test_loss)):
                status = "diverged"
                break
            train_seconds = time.perf_counter() - loop_start - eval_seconds
            bar.set_postfix(loss=f"{point.test_loss:.3f}", acc=f"{point.test_accuracy:.3f}",
                            tok_s=f"{steps_done * tokens_per_step / max(train_seconds, 1e-9):,.0f}")
    _sync(trainer.device)
    train_seconds = time.perf_counter() - loop_start - eval_seconds
    bar.close()
    if checkpoint is not None:
        save_weights(trainer.model, checkpoint)
    last = history[-1]
    learned_at = next((p.step for p in history
                       if is_learned(p.test_accuracy, p.test_loss, bayes, task.deterministic)), None)
    final = Final(loss=last.test_loss, accuracy=last.test_accuracy, val_loss=last.val_loss,
                  val_accuracy=last.val_accuracy, accuracy_seen=last.test_accuracy_seen,
                  accuracy_unseen=last.test_accuracy_unseen, coverage=trainer.seen.float().mean().item(),
                  steps_to_learn=learned_at if status == "ok" else None,
                  tokens_per_second=steps_done * tokens_per_step / train_seconds, grad_destroyed=last.grad_destroyed,
                  grad_kept_cos=last.grad_kept_cos, grad_baseline=last.grad_baseline)
    return RunRecord(run_id=c.run_id, config=c, task_version=task.version, bayes_loss=bayes,
                     deterministic=task.deterministic, rank=trainer.model.head.rank,
                     data=task.provenance(c.vocab_size), status=status,
                     history=tuple(history), final=final,
                     timing=Timing(steps=steps_done, train_seconds=train_seconds, eval_seconds=eval_seconds,
                                   total_seconds=(datetime.datetime.now(datetime.timezone.utc) - started)
                                   .total_seconds()),
                     env=environment(device_name(trainer.device), threads), created=started.isoformat(timespec="seconds"))
