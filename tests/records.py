"""Run records for tests, built through the record types (never as hand-written dicts)."""
from __future__ import annotations

import dataclasses
import math

from spamlang.config import RunConfig
from spamlang.record import EvalPoint, Final, RunRecord, SuiteInfo, Timing
from spamlang.record.learned import learned_from
from spamlang.record.provenance import environment
from spamlang.task import make_task


def make_record(*, losses=(4.0, 1.0, 0.01), accuracies=None, val_losses=None, status="ok", coverage=1.0,
                accuracy_seen=None, destroyed=(0.9, 0.8), kept_cos=None, baseline=0.7, bayes_loss=None,
                deterministic=None, rank=None, task_version=None, suite=None, measured=None,
                created="2026-01-01T00:00:00+00:00", **config) -> RunRecord:
    """A record of the run ``config`` (RunConfig settings) whose test loss follows ``losses`` and test accuracy
    ``accuracies`` (default 1 - loss / 4, within [0, 1]), evaluated every 100 steps from step 0. The gradient
    diagnostics are ``destroyed`` at step 0 and ``destroyed[1]`` after, with a kept cosine of ``kept_cos`` (default
    sqrt(1 - destroyed²)). Bayes loss, determinism and task version default to the task's; ``suite`` is a dict of
    SuiteInfo fields (version and source optional); ``measured`` a dict of the optional metrics (``test_loss_se``,
    ``test_bayes_loss``, ``logit_scale``, ...) of the final, and of the last evaluation where it has them. The final's
    ``steps_to_learn`` follows from the history, as the harness's does; the run's steps (its cap) default to its last
    evaluation's."""
    if "steps" not in config and "examples_per_symbol" not in config:
        config["steps"] = 100 * (len(losses) - 1)
    c = RunConfig(**config)
    suite = SuiteInfo(**{"version": 1, "source": "test", **suite, "sweep": tuple(suite["sweep"])}) if suite else None
    if status == "failed":
        failed = RunRecord.failed(c, "RuntimeError: out of memory")
        return dataclasses.replace(failed, created=created, suite=suite)
    task = make_task(c.task, c.task_params)
    accuracies = accuracies or [min(1.0, max(0.0, 1.0 - loss / 4)) for loss in losses]  # a share, as read checks
    history = tuple(
        EvalPoint(step=100 * i, tokens=100 * i * c.batch_size * c.seq_len, lr=c.lr, train_loss=loss, val_loss=val,
                  val_accuracy=acc, test_loss=loss, test_accuracy=acc,
                  test_accuracy_seen=acc if accuracy_seen is None else accuracy_seen, test_accuracy_unseen=0.0,
                  coverage=coverage, grad_destroyed=destroyed[min(i, 1)],
                  grad_kept_cos=kept_cos if kept_cos is not None else math.sqrt(1 - destroyed[min(i, 1)] ** 2),
                  grad_baseline=baseline)
        for i, (loss, val, acc) in enumerate(zip(losses, val_losses or losses, accuracies)))
    point_fields = {f.name for f in dataclasses.fields(EvalPoint)}
    history = (*history[:-1], dataclasses.replace(history[-1], **{k: v for k, v in (measured or {}).items()
                                                                   if k in point_fields}))
    last = history[-1]
    bayes = task.bayes_loss(c.vocab_size, c.seq_len) if bayes_loss is None else bayes_loss
    final = Final(loss=last.test_loss, accuracy=last.test_accuracy, val_loss=last.val_loss,
                  val_accuracy=last.val_accuracy, accuracy_seen=last.test_accuracy_seen, accuracy_unseen=0.0,
                  coverage=coverage, steps_to_learn=learned_from(history, bayes) if status == "ok" else None,
                  tokens_per_second=1e5, grad_destroyed=last.grad_destroyed,
                  grad_kept_cos=last.grad_kept_cos, grad_baseline=baseline, **(measured or {}))
    return RunRecord(run_id=c.run_id, config=c, task_version=task_version or task.version,
                     bayes_loss=bayes,
                     deterministic=task.deterministic if deterministic is None else deterministic,
                     rank=rank if rank is not None else c.head_rank or c.d_model, status=status, history=history,
                     final=final, timing=Timing(steps=100 * (len(losses) - 1), train_seconds=1.0, eval_seconds=0.1,
                                                total_seconds=1.2),
                     env=environment("cpu"), created=created, suite=suite)
