"""The learned rule: when a gap to the Bayes loss counts, and from which evaluation a run has learned.

One rule for the harness, which writes ``steps_to_learn`` into every record, and the scorer, which reads records back.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

#: a gap counts only when it exceeds this many of its standard errors (and the tolerance)
NOISE_SE = 2.0
#: nats: a gap to the Bayes loss below this, with evidence, is learned (shared by the harness's ``steps_to_learn``
#: and the scorer's tolerance)
LEARNED_MARGIN = 0.05
#: the one-sided 95% normal quantile: the bounds gap ± EVIDENCE_Z · se decide "learned" and "not learned"
EVIDENCE_Z = 1.6448536269514722


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
    """The first evaluation step from which the run is learned with evidence (:func:`learned_state` of the test
    loss's gap to the Bayes loss at ``margin``) at every evaluation to the end of ``history``; None when it is not at
    the end. One rule for the harness's ``steps_to_learn`` and the scorer's."""
    step = None
    for point in reversed(history):
        if learned_state(*bayes_gap(point, bayes_loss), margin) != "learned":
            break
        step = point.step
    return step


def learned_state(gap: float, se: float | None, tolerance: float, z: float = EVIDENCE_Z) -> str:
    """Whether a run's gap to the Bayes loss says "learned", "not learned" or "undetermined" at ``tolerance``.

    Learned only when the gap's one-sided upper bound gap + z·se is below the tolerance; not learned when its lower
    bound gap - z·se is above it; otherwise undetermined (0.064 ± 0.038 at tolerance 0.05: undetermined, not
    learned). z = 1.645 makes each bound one-sided 95%, so each call errs with probability at most 5% in the
    direction it asserts. A gap without a standard error (se None or NaN: records of a harness that did not measure
    one; se = 0: a gap computed exactly) is decided on the gap alone; a non-finite gap is undetermined.
    """
    if se is not None and se < 0:
        raise ValueError(f"a standard error cannot be negative: {se}")
    if not _finite(gap):
        return "undetermined"
    margin = z * se if _finite(se) else 0.0
    if gap + margin < tolerance:
        return "learned"
    if gap - margin > tolerance:
        return "not learned"
    return "undetermined"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def counts(gap: float, se: float, tolerance: float) -> bool:
    """Whether a positive gap is real: above ``tolerance`` and above NOISE_SE standard errors (``se`` NaN: the
    tolerance alone decides). The verdicts ask it of every gap but the one that decides learning."""
    return _finite(gap) and gap > tolerance and not (_finite(se) and gap <= NOISE_SE * se)
