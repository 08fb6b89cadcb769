"""Choosing swept values on the ``val`` stream, and growing a learning-rate grid until it holds its optimum.

Shared by the runner (which extends the grid) and the scorer (which picks the value and flags one at an edge), so both
choose the same way. A *setting* is one value of the swept fields; its *outcomes* are one ``(status, final val loss)``
pair per seed.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Hashable, Mapping, Sequence

#: each round of the adaptive grid tries the learning rate this many times above (or below) the edge chosen
LR_FACTOR = 3.0
#: extension rounds ``spamlang run`` makes at most, per configuration
LR_ROUNDS = 3

Outcome = tuple[str, "float | None"]


def setting_key(outcomes: Sequence[Outcome]) -> tuple[float, int, float]:
    """The order of settings, best first: mean final val loss over seeds (a seed that is not ``ok`` counts as inf),
    then fewer seeds not ok, then the mean over the ok ones."""
    val = [v if status == "ok" and v is not None and math.isfinite(v) else math.inf for status, v in outcomes]
    finite = [v for v in val if math.isfinite(v)]
    return (statistics.fmean(val) if val else math.inf, len(val) - len(finite),
            statistics.fmean(finite) if finite else math.inf)


def choose(settings: Mapping[Hashable, Sequence[Outcome]]) -> Hashable:
    """The setting with the best :func:`setting_key`; of equals, the first in ``settings``' order."""
    return min(settings, key=lambda s: setting_key(settings[s]))


def edge(chosen: Any, tried: Sequence[Any]) -> str | None:
    """Where a chosen numeric value sits in the values tried: ``"only"`` (nothing else was tried), ``"low"`` (the
    smallest), ``"high"`` (the largest) or None (inside the range, or not a number)."""
    numbers = [t for t in tried if isinstance(t, (int, float)) and not isinstance(t, bool)]
    if not isinstance(chosen, (int, float)) or isinstance(chosen, bool) or len(numbers) != len(tried):
        return None
    if len(set(numbers)) == 1:
        return "only"
    return "low" if chosen == min(numbers) else "high" if chosen == max(numbers) else None


def outward(lr: float, factor: float) -> float:
    """``lr`` x ``factor``, rounded to 3 significant digits so that grid values stay readable (0.01 x 3 = 0.03)."""
    return float(f"{lr * factor:.3g}")


def next_lrs(settings: Mapping[float, Sequence[Outcome]], factor: float = LR_FACTOR) -> list[float]:
    """The learning rates one more round should try: none when the chosen one is inside the range tried; below the
    smallest when that is chosen; above the largest when that is chosen and none of its seeds diverged (a diverged
    edge is the end of the range). A setting whose seeds all failed tells nothing, so it is never extended."""
    chosen = choose({lr: settings[lr] for lr in sorted(settings)})  # equals: the smallest lr
    outcomes = settings[chosen]
    if all(status == "failed" for status, _ in outcomes):
        return []
    where, new = edge(chosen, list(settings)), []
    if where in ("low", "only"):
        new.append(outward(chosen, 1 / factor))
    if where in ("high", "only") and not any(status == "diverged" for status, _ in outcomes):
        new.append(outward(chosen, factor))
    return new
