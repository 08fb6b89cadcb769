"""The flat layout's module paths (``spamlang.harness``, ``spamlang.frames``, ...), kept for one release: importing
one imports its new home under the old name, with a DeprecationWarning that names the new path."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> its home in the layout by role (0.2)
MOVED = {
    "spamlang.atomic": "spamlang.system.atomic", "spamlang.threads": "spamlang.system.threads",
    "spamlang.corpus": "spamlang.data.corpus", "spamlang.textcorpus": "spamlang.data.textcorpus",
    "spamlang.tokenizer": "spamlang.data.tokenizer", "spamlang.validate": "spamlang.data.validate",
    "spamlang.model": "spamlang.training.model", "spamlang.harness": "spamlang.training.loop",
    "spamlang.probe": "spamlang.training.probe", "spamlang.resources": "spamlang.training.resources",
    "spamlang.tracking": "spamlang.training.tracking", "spamlang.suite": "spamlang.sweeps.suite",
    "spamlang.runner": "spamlang.sweeps.runner", "spamlang.plan": "spamlang.sweeps.plan",
    "spamlang.selection": "spamlang.scoring.configurations", "spamlang.frames": "spamlang.scoring.frames",
    "spamlang.floors": "spamlang.scoring.floors", "spamlang.scorer": "spamlang.scoring.scorer",
    "spamlang.verdicts": "spamlang.scoring.verdicts", "spamlang.budget": "spamlang.scoring.budget",
    "spamlang.fit": "spamlang.scoring.fit", "spamlang.speedup": "spamlang.scoring.speedup",
    "spamlang.stats": "spamlang.scoring.stats", "spamlang.tying": "spamlang.scoring.tying",
    "spamlang.leaderboard": "spamlang.publishing.board", "spamlang.tables": "spamlang.publishing.tables",
    "spamlang.plots": "spamlang.publishing.plots", "spamlang.fitreport": "spamlang.publishing.fitreport",
    "spamlang.page": "spamlang.publishing.html", "spamlang.measure.board": "spamlang.publishing.models",
    "spamlang.doctor": "spamlang.cli.doctor",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the module at its new path."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # the module at the new path is already executed


def install() -> None:
    """Make the old module paths importable (once per process)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
