"""The training loop: train one model on one task as a RunConfig says and return its run record (``spamlang.train``).

The trainer (:mod:`.trainer`) takes the steps; at step 0 and every ``eval_every`` steps the evaluator
(:mod:`.evaluator`) scores the held-out streams and the gradient probes (:mod:`.probes`) measure the head; each
evaluation becomes an :class:`~spamlang.record.EvalPoint`, the last one the record's :class:`~spamlang.record.Final`.
"""
from __future__ import annotations

import datetime
import io
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from spamlang.config import RunConfig, examples_seen
from spamlang.heads.base import head_label
from spamlang.record import FROM_LAST_EVALUATION, EvalPoint, Final, RunRecord, Timing
from spamlang.record.learned import LEARNED_MARGIN, bayes_gap, learned_from, learned_state
from spamlang.record.provenance import environment
from spamlang.system import atomic
from spamlang.system.threads import choose, step_flops, using
from spamlang.training import snapshot as snapshots
from spamlang.training.devices import device_name, precision, synchronize
from spamlang.training.evaluator import Evaluator
from spamlang.training.probes import GradientProbe
from spamlang.training.trainer import Trainer, learning_rate


def eval_point(trainer: Trainer, evaluator: Evaluator, probe: GradientProbe, step: int, tokens: int,
               train_loss: float | None, lr: float) -> EvalPoint:
    """The evaluation after ``step`` training steps (``tokens`` tokens; ``train_loss`` of the last batch, at ``lr``):
    held-out losses and accuracies, the baselines on the same test positions, and the gradient diagnostics on val."""
    trainer.model.eval()
    val, test = evaluator.evaluate("val"), evaluator.evaluate("test")
    trainer.model.train()
    c = trainer.config
    return EvalPoint(step=step, tokens=tokens, lr=lr, train_loss=train_loss,
                     examples_per_symbol=examples_seen(step, c.vocab_size, c.batch_size, trainer.symbols_per_sequence),
                     val_loss=val["loss"], val_loss_se=val["loss_se"], val_accuracy=val["accuracy"],
                     test_loss=test["loss"], test_loss_se=test["loss_se"], test_accuracy=test["accuracy"],
                     test_accuracy_seen=test["accuracy_seen"], test_accuracy_unseen=test["accuracy_unseen"],
                     coverage=trainer.seen.float().mean().item(), **evaluator.baseline_metrics(test["losses"]),
                     **probe.diagnostics(evaluator.eval_batches["val"], step))


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save the model's tensors atomically (loadable with ``torch.load(..., weights_only=True)``)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def train(config: RunConfig, progress: bool | None = None, checkpoint: str | Path | None = None,
          threads: int | None = None, on_eval: Callable[[EvalPoint], None] | None = None,
          on_step: Callable[[int, int], None] | None = None, snapshot: str | Path | None = None,
          snapshot_every: float = snapshots.SNAPSHOT_EVERY) -> RunRecord:
    """Train one model as ``config`` says and return its run record.

    With ``checkpoint``, the trained weights are saved there (``torch.save`` of tensors only). Torch runs on
    ``threads`` intra-op threads (default: the thread policy's choice for this run, see :mod:`spamlang.system.threads`),
    recorded as ``env.threads``; the caller's thread count is restored after. ``on_eval`` is called with each
    evaluation point as it is made (step 0 included), ``on_step`` with (steps done, steps) after each training step.

    With ``snapshot`` (a file), the run writes its state there (:mod:`.snapshot`) at an evaluation, at most every
    ``snapshot_every`` seconds (0: at every evaluation), and a run that finds a snapshot of itself there resumes from
    it, on the thread count it started on, to the history it would have had uninterrupted (``on_eval`` is called with
    the restored points first); the timing adds up the stretches of training before and after each resume. The file
    is left for the caller to delete once the record is kept.
    """
    state = snapshots.load(snapshot, "run", [config]) if snapshot is not None else None
    count = state.get("threads", 1) if state else choose(step_flops(config)) if threads is None else threads
    started = datetime.datetime.now(datetime.timezone.utc)
    with using(count):
        trainer = Trainer(config)
        if state is not None:
            try:
                restore(trainer, state)
            except Exception as exc:  # written by another version of the code, say: start over
                snapshots.ignored(snapshot, exc)
                trainer, state = Trainer(config), None
        with precision(trainer.device):
            return _train(trainer, Evaluator(trainer), GradientProbe(trainer), started, progress, checkpoint, count,
                          on_eval or _ignore, on_step or _ignore, snapshots.Schedule(snapshot, snapshot_every), state)


def _ignore(*args) -> None:
    pass


def restore(trainer: Trainer, state: dict) -> None:
    """Put a snapshot's model, optimizer, head generators and seen-mask into ``trainer``; KeyError if the snapshot
    lacks what the loop reads of it."""
    missing = {"step", "history", "learned_in_a_row", "train_seconds", "eval_seconds", "total_seconds"} - set(state)
    if missing:
        raise KeyError(f"it has no {', '.join(sorted(missing))}")
    datetime.datetime.fromisoformat(state["started"])
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    snapshots.set_generator_states(trainer.model, state["generators"])
    trainer.seen.copy_(state["seen"])


def _train(trainer: Trainer, evaluator: Evaluator, probe: GradientProbe, started: datetime.datetime,
           progress: bool | None, checkpoint: str | Path | None, threads: int, on_eval: Callable[[EvalPoint], None],
           on_step: Callable[[int, int], None], schedule: snapshots.Schedule, state: dict | None = None) -> RunRecord:
    c = trainer.config
    bayes = trainer.task.bayes_loss(c.vocab_size, c.seq_len)
    tokens_per_step = c.batch_size * c.seq_len
    check_every = 1 if trainer.device.type == "cpu" else 16  # each check of the loss waits for the device
    resumed, created = started, started
    if state is None:
        history = [eval_point(trainer, evaluator, probe, 0, 0, None, learning_rate(c, 0))]
        steps_done, learned_in_a_row, train_seconds, eval_seconds, earlier = 0, 0, 0.0, 0.0, 0.0
    else:  # what the run did before this resume: its evaluations, counts and wall times
        history = snapshots.restore_points(state["history"])
        steps_done, learned_in_a_row = state["step"], state["learned_in_a_row"]
        train_seconds, eval_seconds, earlier = state["train_seconds"], state["eval_seconds"], state["total_seconds"]
        created = datetime.datetime.fromisoformat(state["started"])
    for point in history:
        on_eval(point)
    status, loss = "ok", float("nan")
    bar = tqdm(total=c.steps, initial=steps_done, leave=False, unit="step",
               disable=not (sys.stderr.isatty() if progress is None else progress),
               desc=f"{c.task} V={c.vocab_size} {head_label(c.head, c.head_rank)}")
    schedule.last = time.perf_counter()
    loop_start = schedule.last - train_seconds - eval_seconds  # as if the earlier stretches' loops ran just before

    def snapshot_state() -> dict:
        return {"step": steps_done, "history": snapshots.points(history), "learned_in_a_row": learned_in_a_row,
                "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                "generators": snapshots.generator_states(trainer.model), "seen": trainer.seen,
                "threads": threads, "started": created.isoformat(),
                "train_seconds": time.perf_counter() - loop_start - eval_seconds - schedule.seconds,
                "eval_seconds": eval_seconds, "total_seconds": earlier + (now() - resumed).total_seconds()}

    for step in range(steps_done, c.steps):
        loss = trainer.train_step(step)
        steps_done += 1
        bar.update(1)
        on_step(steps_done, c.steps)
        evaluate = steps_done % c.eval_every == 0 or steps_done == c.steps
        if (evaluate or steps_done % check_every == 0) and not math.isfinite(loss.item()):
            status = "diverged"
            break
        if evaluate:
            synchronize(trainer.device)
            t0 = time.perf_counter()
            point = eval_point(trainer, evaluator, probe, steps_done, steps_done * tokens_per_step, loss.item(),
                               learning_rate(c, step))
            eval_seconds += time.perf_counter() - t0
            history.append(point)
            on_eval(point)
            if not all(math.isfinite(loss) for loss in (point.val_loss, point.test_loss)):
                status = "diverged"
                break
            learned = learned_state(*bayes_gap(point, bayes), LEARNED_MARGIN) == "learned"
            learned_in_a_row = learned_in_a_row + 1 if learned else 0
            if c.stop_after and learned_in_a_row >= c.stop_after:
                break
            if steps_done < c.steps and schedule.due():
                schedule.write([c], snapshot_state())
            train_seconds = time.perf_counter() - loop_start - eval_seconds - schedule.seconds
            bar.set_postfix(loss=f"{point.test_loss:.3f}", acc=f"{point.test_accuracy:.3f}",
                            tok_s=f"{steps_done * tokens_per_step / max(train_seconds, 1e-9):,.0f}")
    synchronize(trainer.device)
    train_seconds = time.perf_counter() - loop_start - eval_seconds - schedule.seconds
    bar.close()
    if checkpoint is not None:
        save_weights(trainer.model, checkpoint)
    timing = Timing(steps=steps_done, train_seconds=train_seconds, eval_seconds=eval_seconds,
                    total_seconds=earlier + (now() - resumed).total_seconds())
    return run_record(trainer, tuple(history), status, timing, created, threads)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def run_record(trainer: Trainer, history: tuple[EvalPoint, ...], status: str, timing: Timing,
               started: datetime.datetime, threads: int, ensemble: bool = False) -> RunRecord:
    """The record of ``trainer``'s run from its evaluations, status and wall times: ``final`` repeats the last
    evaluation, with the trainer's coverage and the throughput of ``timing``; ``ensemble``: trained as a member of
    one (``env.ensemble``)."""
    task, c = trainer.task, trainer.config
    bayes = task.bayes_loss(c.vocab_size, c.seq_len)
    steps_done, tokens_per_step = timing.steps, c.batch_size * c.seq_len
    last = history[-1]
    final = Final(loss=last.test_loss, accuracy=last.test_accuracy, val_loss=last.val_loss,
                  val_accuracy=last.val_accuracy, accuracy_seen=last.test_accuracy_seen,
                  accuracy_unseen=last.test_accuracy_unseen, coverage=trainer.seen.float().mean().item(),
                  steps_to_learn=learned_from(history, bayes) if status == "ok" else None,
                  steps=steps_done, tokens=steps_done * tokens_per_step,
                  examples_per_symbol=examples_seen(steps_done, c.vocab_size, c.batch_size,
                                                    trainer.symbols_per_sequence),
                  tokens_per_second=steps_done * tokens_per_step / timing.train_seconds,
                  stopped="diverged" if status == "diverged" else "cap" if steps_done == c.steps else "learned",
                  **{k: getattr(last, k) for k in FROM_LAST_EVALUATION})
    return RunRecord(run_id=c.run_id, config=c, task_version=task.version, bayes_loss=bayes,
                     deterministic=task.deterministic, rank=trainer.model.head.rank,
                     data=task.provenance(c.vocab_size), status=status, history=history, final=final, timing=timing,
                     env=environment(device_name(trainer.device), threads, ensemble),
                     created=started.isoformat(timespec="seconds"))
