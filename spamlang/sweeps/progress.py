"""What a running suite shows: the bar's postfix (counts and the step of each run in flight) and one log line per
finished run."""
from __future__ import annotations

import math
import time

from spamlang import record
from spamlang.heads.base import head_label


class Postfix:
    """Shows the counts of finished runs and the step counts of the runs in flight in the bar's postfix, e.g.
    ``3 ok, 0 diverged, 0 failed | run 4: step 120/400, runs 5-7: step 80/400``, redrawn at most every ``interval``
    seconds; ``spans`` maps the first run of an ensemble to its last."""

    def __init__(self, bar, counts: dict, interval: float = 0.5, spans: dict[int, int] | None = None):
        self.bar, self.counts, self.interval, self.drawn = bar, counts, interval, -math.inf
        self.spans = spans or {}
        self.live: dict[int, tuple[int, int]] = {}

    def __call__(self, live: dict[int, tuple[int, int]], force: bool = False) -> None:
        self.live = live
        if self.bar.disable or not (force or time.monotonic() - self.drawn >= self.interval):
            return
        self.bar.set_postfix_str(postfix(self.counts, live, self.spans), refresh=True)
        self.drawn = time.monotonic()


def postfix(counts: dict, live: dict[int, tuple[int, int]], spans: dict[int, int] | None = None) -> str:
    """The bar's postfix: counts of finished runs, then ``run k: step s/S`` for each run in flight by number, ``runs
    k-l: step s/S`` for an ensemble (``spans``: its first run -> its last)."""
    text = f"{counts['ok']} ok, {counts['diverged']} diverged, {counts['failed']} failed"
    spans = spans or {}
    steps = ", ".join(f"runs {k}-{spans[k]}: step {step}/{steps}" if spans.get(k, k) > k else
                      f"run {k}: step {step}/{steps}" for k, (step, steps) in sorted(live.items()))
    return f"{text} | {steps}" if steps else text


def progress_line(rec: record.RunRecord, counts: dict, elapsed: float) -> str:
    """One line about a finished run: position in the suite, what ran, its outcome, the counts and elapsed time."""
    c = rec.config
    loss = rec.final.loss if rec.final is not None else None
    outcome = rec.status + (f", test loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else "")
    done = sum(counts[k] for k in ("skipped", "ok", "diverged", "failed"))
    minutes, seconds = divmod(int(elapsed), 60)
    return (f"[{done}/{counts['total']}] {c.task} V={c.vocab_size} {head_label(c.head, c.head_rank)} lr={c.lr:g} "
            f"seed={c.seed}: {outcome} | {counts['ok']} ok, {counts['diverged']} diverged, {counts['failed']} failed | "
            f"{minutes}m{seconds:02d}s")
