"""Growing a learning-rate grid until it holds its optimum: each round tries the next value outward of a chosen
edge (see :func:`next_lrs`), with the choice of :func:`spamlang.scoring.configurations.choose`."""
from __future__ import annotations

from typing import Mapping, Sequence

from spamlang.scoring.configurations import Outcome, choose, edge

#: each round of the adaptive grid tries the learning rate this many times above (or below) the edge chosen
LR_FACTOR = 3.0
#: extension rounds ``spamlang run`` makes at most, per configuration
LR_ROUNDS = 3


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
