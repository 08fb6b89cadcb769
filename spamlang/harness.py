"""The training harness: train one model on one task and return its run record.

Data is sampled on the fly, on the training device, from the task's seeded stream; evaluation uses two held-out
streams per seed, ``val`` (for choosing hyper-parameters) and ``test`` (for reporting), on predictable positions only.
The test stream is also scored by the task's Bayes predictor and by trivial baselines (uniform, unigram), position by
position, so gaps are measured on the same sample with their standard errors.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import io
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from . import atomic
from .config import RunConfig, examples_seen
from .diagnostics import gradient_diagnostics, spectrum_share
from .errors import ConfigError
from .model import LanguageModel
from .record import EvalPoint, Final, RunRecord, Timing, environment, learned_from
from .task import make_task
from .rng import Rng
from .threads import choose, step_flops, using

#: the unigram baseline's sample of the train stream: 64 target tokens per symbol, at least 2**16, at most 2**24
UNIGRAM_TOKENS_PER_SYMBOL, UNIGRAM_MIN_TOKENS, UNIGRAM_MAX_TOKENS = 64, 2**16, 2**24
#: the metrics of an evaluation that the record's ``final`` repeats from the last one
FINAL_METRICS = ("grad_destroyed", "grad_kept_cos", "grad_baseline", "grad_top_share", "logit_scale", "update_cosine",
                 "test_loss_se", "val_loss_se", "test_bayes_loss", "test_bayes_gap_se", "test_uniform_loss",
                 "test_unigram_loss", "test_unigram_gap_se")


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


def make_optimizer(config: RunConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95; decoupled weight decay) or SGD with momentum (L2 weight decay), as ``config`` says."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    return torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay, **fused)


def tie_aware_hits(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """bool (M,): whether the target's log-probability is strictly above every other token's in log_probs (M, V).
    A tied maximum counts as a miss (a constant predictor scores 0, not 1)."""
    top = log_probs.topk(2, dim=1)  # (M, 2), descending
    return (top.indices[:, 0] == targets) & (top.values[:, 0] > top.values[:, 1])


def mean_and_se(per_position: torch.Tensor) -> tuple[float, float | None]:
    """Mean over (N, P) per-position values and its standard error, with sequences as the independent units (positions
    of one sequence are correlated); the error is None for a single sequence."""
    per_sequence = per_position.double().mean(dim=1)  # (N,)
    n = len(per_sequence)
    se = float(per_sequence.std() / math.sqrt(n)) if n > 1 else None
    return float(per_sequence.mean()), se


def unigram_log_probs(task, config: RunConfig, mask: torch.Tensor) -> torch.Tensor:
    """float64 (V,): log token frequencies at predictable positions of the first sequences of the train stream, with
    add-½ smoothing; the sample holds 64 tokens per symbol (between 2**16 and 2**24 tokens)."""
    v, per_sequence = config.vocab_size, int(mask.sum())
    wanted = min(UNIGRAM_MAX_TOKENS, max(UNIGRAM_MIN_TOKENS, UNIGRAM_TOKENS_PER_SYMBOL * v))
    sequences, chunk = -(-wanted // per_sequence), max(1, 2**20 // config.seq_len)
    counts = torch.zeros(v, dtype=torch.float64)
    stream = Rng(config.seed, "train")
    for start in range(0, sequences, chunk):
        tokens = task.sample(min(chunk, sequences - start), config.seq_len, v, stream, "cpu", offset=start)
        counts += torch.bincount(tokens[:, 1:][:, mask.cpu()].reshape(-1), minlength=v)
    return ((counts + 0.5) / (counts.sum() + v / 2)).log()


class _DiagnosticLogits(nn.Module):
    """tokens (B, T) -> the head's logits (``Head.logits``) at the first ``n`` predictable positions: the model as a
    function of its parameters, for ``torch.func``."""

    def __init__(self, model: LanguageModel, mask: torch.Tensor, n: int):
        super().__init__()
        self.model, self.mask, self.n = model, mask, n

    def forward(self, tokens):
        h = self.model.hidden(tokens[:, :-1])[:, self.mask]  # (B, P, D)
        return self.model.head.logits(h.reshape(-1, h.shape[-1])[:self.n])


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
        self.optimizer = make_optimizer(config, self.model.parameters(), self.device)
        self.mask = self.task.predictable_mask(config.seq_len)[1:].to(self.device)  # (T-1,) over targets
        self.symbols_per_sequence = self.task.symbols_per_sequence(config.seq_len)
        self.train_stream = Rng(config.seed, "train")
        self.eval_batches = {name: self.task.sample(config.eval_sequences, config.seq_len, config.vocab_size,
                                                    Rng(config.seed, config.eval_seed, name), self.device)
                             for name in ("val", "test")}
        self.baselines = self.test_baselines()
        self.seen = torch.zeros(config.vocab_size, dtype=torch.bool, device=self.device)

    def autocast(self):
        """bf16 autocast when the config's precision is bf16, or auto on CUDA; otherwise nothing (fp32)."""
        precision = self.config.precision
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def split(self, tokens: torch.Tensor, hidden=None):
        """Hidden states and targets of the predictable positions: (M, D), (M,). ``hidden`` defaults to the model's."""
        with self.autocast():
            h = (hidden or self.forward)(tokens[:, :-1])  # (B, T-1, D)
        return h[:, self.mask].reshape(-1, h.shape[-1]), tokens[:, 1:][:, self.mask].reshape(-1)

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

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        tokens = self.task.sample(c.batch_size, c.seq_len, c.vocab_size, self.train_stream, self.device,
                                  offset=step * c.batch_size)  # (B, T)
        self.seen[tokens.reshape(-1)] = True
        return self.optimize(self.model, self.optimizer, *self.split(tokens), learning_rate(c, step))

    def test_baselines(self) -> dict[str, torch.Tensor | None]:
        """Per-position losses (N, P), float64 on the CPU, of the Bayes predictor (the task's ``log_prob``; None if the
        task has none) and of the unigram predictor on the test stream's predictable positions."""
        c, mask = self.config, self.mask.cpu()
        tokens = self.eval_batches["test"].cpu()  # (N, T)
        try:
            bayes = -self.task.log_prob(tokens, c.vocab_size)[:, 1:][:, mask]
        except NotImplementedError:
            bayes = None
        unigram = -unigram_log_probs(self.task, c, mask)[tokens[:, 1:][:, mask]]
        return {"bayes": bayes, "unigram": unigram}

    @torch.no_grad()
    def evaluate(self, name: str) -> dict:
        """Loss (with its standard error) and tie-aware accuracy on a held-out stream, accuracy also split by whether
        the target was seen in training; ``losses`` holds the per-position losses (N, P), float64 on the CPU."""
        tokens = self.eval_batches[name]
        losses, hits, seen = [], [], []
        rows = max(1, (1 << 22) // (self.config.vocab_size * self.config.seq_len))  # bounds the logits held at once
        for start in range(0, len(tokens), rows):
            h, y = self.split(tokens[start:start + rows])
            with self.autocast():
                log_probs = self.model.head.log_probs(h).float()  # (M, V)
            losses.append(-log_probs.gather(1, y[:, None]).squeeze(1))
            hits.append(tie_aware_hits(log_probs, y))
            seen.append(self.seen[y])
        losses = torch.cat(losses).double().cpu().reshape(len(tokens), -1)  # (N, P)
        hit, seen = torch.cat(hits).cpu(), torch.cat(seen).cpu()
        n_seen, n_unseen = int(seen.sum()), int((~seen).sum())
        loss, se = mean_and_se(losses)
        return {"loss": loss, "loss_se": se, "accuracy": hit.double().mean().item(), "losses": losses,
                "accuracy_seen": (hit & seen).sum().item() / n_seen if n_seen else None,
                "accuracy_unseen": (hit & ~seen).sum().item() / n_unseen if n_unseen else None}

    def baseline_metrics(self, losses: torch.Tensor) -> dict[str, float | None]:
        """The Bayes, uniform and unigram losses on the test positions, and the standard errors of the paired
        differences model − baseline, from the model's per-position test losses (N, P)."""
        bayes, unigram = self.baselines["bayes"], self.baselines["unigram"]
        out = {"test_bayes_loss": None, "test_bayes_gap_se": None}
        if bayes is not None:
            out = {"test_bayes_loss": mean_and_se(bayes)[0], "test_bayes_gap_se": mean_and_se(losses - bayes)[1]}
        return {**out, "test_uniform_loss": math.log(self.config.vocab_size),
                "test_unigram_loss": mean_and_se(unigram)[0], "test_unigram_gap_se": mean_and_se(losses - unigram)[1]}

    @property
    def diag_rows(self) -> int:
        """Sequences that hold ``diag_tokens`` predictable positions."""
        return -(-self.config.diag_tokens // int(self.mask.sum()))

    def diagnostic_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (float32) and targets of the first ``diag_tokens`` predictable positions of ``tokens``."""
        with torch.no_grad():
            h, y = self.split(tokens[:self.diag_rows])
        return h[:self.config.diag_tokens].float(), y[:self.config.diag_tokens]

    def logit_gradient(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's (G, Q) on the first ``diag_tokens`` predictable positions of ``tokens``."""
        return self.model.head.logit_gradient(*self.diagnostic_states(tokens))

    def diagnostics(self, next_step: int) -> dict:
        """On the first ``diag_tokens`` val positions: the gradient diagnostics (destroyed ratio, kept cosine, baseline),
        ``grad_top_share`` (share of ‖G‖² in its top 2·rank singular values), ``logit_scale`` (median per-context
        half-range of the logits) and ``update_cosine`` (see :meth:`update_cosine`)."""
        tokens = self.eval_batches["val"][:self.diag_rows]
        h, y = self.diagnostic_states(tokens)
        g, q = self.model.head.logit_gradient(h, y)
        with torch.no_grad():
            log_probs = self.model.head.log_probs(h)  # (M, V): the logits up to a per-context shift
        half_range = (log_probs.amax(dim=1) - log_probs.amin(dim=1)).double() / 2  # (M,)
        return {**gradient_diagnostics(g, q), "grad_top_share": spectrum_share(g, 2 * self.model.head.rank),
                "logit_scale": float(half_range.quantile(0.5)), "update_cosine": self.update_cosine(tokens, g, next_step)}

    def update_cosine(self, tokens: torch.Tensor, g: torch.Tensor, step: int) -> float | None:
        """cos(ΔZ, −G): ΔZ is the first-order change of the head's logits (``Head.logits``) on the diagnostic positions
        of ``tokens`` under the step the optimizer would take at ``step`` on those positions' loss (ΔZ = J Δθ, with J
        the Jacobian of the logits in all parameters, so ΔH Wᵀ + H ΔWᵀ for a linear head), G (M, V) the logit
        gradient there. The step is taken on a copy of the model and optimizer state: training is not touched. None
        when the head has no ``logits``, an operation has no forward-mode derivative, or ΔZ is 0."""
        c = self.config
        model = copy.deepcopy(self.model)
        optimizer = make_optimizer(c, model.parameters(), self.device)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))  # deep: loading may alias tensors
        h, y = self.split(tokens, model.hidden)  # every position of the diag_rows sequences: keep diag_tokens, as G
        self.optimize(model, optimizer, h[:c.diag_tokens], y[:c.diag_tokens], learning_rate(c, step))
        # one name per parameter and no weight tying: a module shared by backbone and head (tied) is swapped once
        params = dict(self.model.named_parameters())
        delta = {f"model.{k}": (p.detach() - params[k].detach()) for k, p in model.named_parameters()}
        primals = {f"model.{k}": p.detach() for k, p in params.items()}
        logits = _DiagnosticLogits(self.model, self.mask, c.diag_tokens)

        def f(p):
            return torch.func.functional_call(logits, p, (tokens,), tie_weights=False)

        # forward-mode AD through attention and cuDNN RNNs needs their composite (math) kernels
        with sdpa_kernel(SDPBackend.MATH), torch.backends.cudnn.flags(enabled=False):
            try:
                _, dz = torch.func.jvp(f, (primals,), (delta,))
            except NotImplementedError:
                return None
        dz, g = dz.detach().double().reshape(g.shape), g.double()
        norms = dz.norm() * g.norm()
        return float(-(dz * g).sum() / norms) if norms > 0 else None

    def eval_point(self, step: int, tokens: int, train_loss: float | None, lr: float) -> EvalPoint:
        self.model.eval()
        val, test = self.evaluate("val"), self.evaluate("test")
        self.model.train()
        c = self.config
        return EvalPoint(step=step, tokens=tokens, lr=lr, train_loss=train_loss,
                         examples_per_symbol=examples_seen(step, c.vocab_size, c.batch_size, self.symbols_per_sequence),
                         val_loss=val["loss"], val_loss_se=val["loss_se"], val_accuracy=val["accuracy"],
                         test_loss=test["loss"], test_loss_se=test["loss_se"], test_accuracy=test["accuracy"],
                         test_accuracy_seen=test["accuracy_seen"], test_accuracy_unseen=test["accuracy_unseen"],
                         coverage=self.seen.float().mean().item(), **self.baseline_metrics(test["losses"]),
                         **self.diagnostics(step))


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save the model's tensors atomically (loadable with ``torch.load(..., weights_only=True)``)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(config: RunConfig, progress: bool | None = None, checkpoint: str | Path | None = None,
          threads: int | None = None, on_eval: Callable[[EvalPoint], None] | None = None,
          on_step: Callable[[int, int], None] | None = None) -> RunRecord:
    """Train one model as ``config`` says and return its run record.

    With ``checkpoint``, the trained weights are saved there (``torch.save`` of tensors only). Torch runs on
    ``threads`` intra-op threads (default: the thread policy's choice for this run, see :mod:`spamlang.threads`),
    recorded as ``env.threads``; the caller's thread count is restored after. ``on_eval`` is called with each
    evaluation point as it is made (step 0 included), ``on_step`` with (steps done, steps) after each training step.
    """
    count = choose(step_flops(config)) if threads is None else threads
    started = datetime.datetime.now(datetime.timezone.utc)
    with using(count):
        trainer = Trainer(config)
        with precision(trainer.device):
            return _train(trainer, started, progress, checkpoint, count, on_eval or _ignore, on_step or _ignore)


def _ignore(*args) -> None:
    pass


def _train(trainer: Trainer, started: datetime.datetime, progress: bool | None, checkpoint: str | Path | None,
           threads: int, on_eval: Callable[[EvalPoint], None], on_step: Callable[[int, int], None]) -> RunRecord:
    task, c = trainer.task, trainer.config
    bayes = task.bayes_loss(c.vocab_size, c.seq_len)
    tokens_per_step = c.batch_size * c.seq_len
    check_every = 1 if trainer.device.type == "cpu" else 16  # each check of the loss waits for the device
    history = [trainer.eval_point(0, 0, None, learning_rate(c, 0))]
    on_eval(history[0])
    status, steps_done, eval_seconds, loss = "ok", 0, 0.0, float("nan")
    bar = tqdm(total=c.steps, disable=not (sys.stderr.isatty() if progress is None else progress), unit="step",
               desc=f"{c.task} V={c.vocab_size} {c.head}{c.head_rank or ''}", leave=False)
    loop_start = time.perf_counter()
    for step in range(c.steps):
        loss = trainer.train_step(step)
        steps_done += 1
        bar.update(1)
        on_step(steps_done, c.steps)
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
            on_eval(point)
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
    final = Final(loss=last.test_loss, accuracy=last.test_accuracy, val_loss=last.val_loss,
                  val_accuracy=last.val_accuracy, accuracy_seen=last.test_accuracy_seen,
                  accuracy_unseen=last.test_accuracy_unseen, coverage=trainer.seen.float().mean().item(),
                  steps_to_learn=learned_from(history, bayes) if status == "ok" else None,
                  steps=steps_done, tokens=steps_done * tokens_per_step,
                  examples_per_symbol=examples_seen(steps_done, c.vocab_size, c.batch_size,
                                                    trainer.symbols_per_sequence),
                  tokens_per_second=steps_done * tokens_per_step / train_seconds,
                  **{k: getattr(last, k) for k in FINAL_METRICS})
    return RunRecord(run_id=c.run_id, config=c, task_version=task.version, bayes_loss=bayes,
                     deterministic=task.deterministic, rank=trainer.model.head.rank,
                     data=task.provenance(c.vocab_size), status=status,
                     history=tuple(history), final=final,
                     timing=Timing(steps=steps_done, train_seconds=train_seconds, eval_seconds=eval_seconds,
                                   total_seconds=(datetime.datetime.now(datetime.timezone.utc) - started)
                                   .total_seconds()),
                     env=environment(device_name(trainer.device), threads), created=started.isoformat(timespec="seconds"))
