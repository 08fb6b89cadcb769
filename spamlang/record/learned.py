"""The learned rule: when a gap to the Bayes loss counts, and from which evaluation a run has learned.

One rule for the harness, which writes ``steps_to_learn`` into every record, and the scorer, which reads records back.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

#: a gap counts only when it exceeds this many of its standard errors (and the tolerance)
NOISE_SE = 2.0
#: nats: a gap to the Bayes loss at most this large counts as learned (shared by the harness's ``steps_to_learn``
#: and the scorer's tolerance)
LEARNED_MARGIN = 0.05


def bayes_gap(point: Any, bayes_loss: float | None, loss: str = "test_loss",
              same_tokens: bool = True) -> tuple[float, float]:
    """(loss - Bayes, its standard error) of one evaluation (an EvalPoint or Final; ``loss``: the name of its test
    loss): against the Bayes predictor on the very test tokens with the paired error where the record has it (and
    ``same_tokens``), else against the task's population ``bayes_loss`` with the test loss's own error (records
    written before these were measured have neither: NaN)."""
    value = getattr(point, loss)
    if same_tokens and _finite(point.test_bayes_loss):
        bayes, se = point.test_bayes_loss, point.test_bayes_gap_se
    else:
        bayes, se = bayes_loss, point.test_loss_se
    if not (_finite(value) and _finite(bayes)):
        return math.nan, math.nan
    return value - bayes, se if _finite(se) else math.nan


def learned_from(history: Sequence[Any], bayes_loss: float | None, margin: float = LEARNED_MARGIN) -> int | None:
    """The first evaluation step from which the test loss's gap to the Bayes loss stops counting (within ``margin``
    or within its noise, :func:`counts`) and stays so to the end of ``history``; None when it counts at
    the end. One rule for the harness's ``steps_to_learn`` and the scorer's."""
    step = None
    for point in reversed(history):
        gap, se = bayes_gap(point, bayes_loss)
        if not _finite(gap) or counts(gap, se, margin):
            break
        step = point.step
    return step


def counts(gap: float, se: float, tolerance: float) -> bool:
    """Whether a positive gap is real: above ``tolerance`` and above NOISE_SE standard errors (``se`` NaN: the
    tolerance alone decides)."""
    return _finite(gap) and gap > tolerance and not (_finite(se) and gap <= NOISE_SE * se)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
