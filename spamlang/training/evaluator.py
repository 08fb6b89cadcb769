"""Held-out evaluation of one run: the ``val`` stream (for choosing hyper-parameters) and the ``test`` stream (for
reporting), both per seed, on predictable positions only. The test stream is also scored by the task's Bayes predictor
and by trivial baselines (uniform, unigram), position by position, so gaps are measured on the same sample with their
standard errors.
"""
from __future__ import annotations

import math

import torch

from spamlang.config import RunConfig
from spamlang.rng import Rng
from spamlang.training.trainer import Trainer

#: the unigram baseline's sample of the train stream: 64 target tokens per symbol, at least 2**16, at most 2**24
UNIGRAM_TOKENS_PER_SYMBOL, UNIGRAM_MIN_TOKENS, UNIGRAM_MAX_TOKENS = 64, 2**16, 2**24


def tie_aware_hits(log_probs: torch.Tensor, targets: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """bool (M,): whether the target's log-probability is strictly above every other token's in log_probs (M, V).
    A tied maximum counts as a miss (a constant predictor scores 0, not 1). With ``inplace`` the targets' entries of
    ``log_probs`` are overwritten (-inf) instead of copied: one pass over the (M, V) block instead of a top-2 sort."""
    target = log_probs.gather(1, targets[:, None]).squeeze(1)  # (M,)
    others = (log_probs if inplace else log_probs.clone()).scatter_(1, targets[:, None], float("-inf"))
    return target > others.amax(dim=1)


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


class Evaluator:
    """The held-out streams of a run (``val`` and ``test``, seeded by its seed and eval seed) and the baselines'
    per-position losses on the test stream; evaluates the trainer's model on them."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        c = trainer.config
        self.eval_batches = {name: trainer.task.sample(c.eval_sequences, c.seq_len, c.vocab_size,
                                                       Rng(c.seed, c.eval_seed, name), trainer.device)
                             for name in ("val", "test")}
        self.baselines = self.test_baselines()

    def test_baselines(self) -> dict[str, torch.Tensor | None]:
        """Per-position losses (N, P), float64 on the CPU, of the Bayes predictor (the task's ``log_prob``; None if the
        task has none) and of the unigram predictor on the test stream's predictable positions."""
        c, mask = self.trainer.config, self.trainer.mask.cpu()
        tokens = self.eval_batches["test"].cpu()  # (N, T)
        try:
            bayes = -self.trainer.task.log_prob(tokens, c.vocab_size)[:, 1:][:, mask]
        except NotImplementedError:
            bayes = None
        unigram = -unigram_log_probs(self.trainer.task, c, mask)[tokens[:, 1:][:, mask]]
        return {"bayes": bayes, "unigram": unigram}

    @torch.no_grad()
    def evaluate(self, name: str) -> dict:
        """Loss (with its standard error) and tie-aware accuracy on a held-out stream, accuracy also split by whether
        the target was seen in training; ``losses`` holds the per-position losses (N, P), float64 on the CPU."""
        trainer, tokens = self.trainer, self.eval_batches[name]
        losses, hits, seen = [], [], []
        rows = max(1, (1 << 22) // (trainer.config.vocab_size * trainer.config.seq_len))  # bounds the logits held
        for start in range(0, len(tokens), rows):
            h, y = trainer.split(tokens[start:start + rows])
            with trainer.autocast():
                log_probs = trainer.model.head.log_probs(h).float()  # (M, V)
            losses.append(-log_probs.gather(1, y[:, None]).squeeze(1))
            hits.append(tie_aware_hits(log_probs, y, inplace=True))  # log_probs is not read after this
            seen.append(trainer.seen[y])
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
        return {**out, "test_uniform_loss": math.log(self.trainer.config.vocab_size),
                "test_unigram_loss": mean_and_se(unigram)[0], "test_unigram_gap_se": mean_and_se(losses - unigram)[1]}
