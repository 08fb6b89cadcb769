"""Snapshots of runs in progress: one file, written atomically at an evaluation, that holds everything the training
loop needs to go on from there as if it had never stopped (parameters, optimizer state, the step, the evaluations so
far, the seen-mask, the heads' sampling generators, the thread count and the wall times), so that a long run killed at
any moment (``kill -9`` included) resumes from its last snapshot and ends with the same history, bit for bit on the
CPU. The training stream needs no position of its own: a step's batch is a function of the seed and the step.

A snapshot names what it is of (:func:`identity`: run ids, execution settings, task and package versions); one that
does not match, or cannot be read, is ignored with a warning and the run starts over.
"""
from __future__ import annotations

import dataclasses
import io
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from spamlang.config import EXECUTION_FIELDS, RunConfig
from spamlang.record import EvalPoint
from spamlang.system import atomic

FORMAT = "spamlang.snapshot/1"
#: seconds between two snapshots of a run unless set (and before its first): a shorter run never writes one
SNAPSHOT_EVERY = 300.0
#: the folder of the snapshots of a suite's runs, in its runs folder
FOLDER = ".partial"


def path_for(runs_dir: str | Path, run_id: str) -> Path:
    """Where a suite keeps the snapshot of run ``run_id`` (of an ensemble: of its first member)."""
    return Path(runs_dir) / FOLDER / f"{run_id}.pt"


def identity(configs: list[RunConfig]) -> list[dict[str, Any]]:
    """What a snapshot of the runs ``configs`` must match: each run's id and execution settings, its task's version
    and the package's version."""
    from spamlang import __version__
    from spamlang.task import TASKS
    return [{"run_id": c.run_id, **{f: getattr(c, f) for f in EXECUTION_FIELDS},
             "task_version": TASKS.get(c.task).version, "spamlang": __version__} for c in configs]


def save(path: str | Path, kind: str, configs: list[RunConfig], state: dict[str, Any]) -> None:
    """Write the snapshot ``state`` of the runs ``configs`` to ``path`` atomically (tensors and plain data only);
    ``kind`` says whose state it is (``run``: ``spamlang.train``'s, ``ensemble``: ``train_ensemble``'s)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "kind": kind, "identity": identity(configs), "state": state}, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load(path: str | Path, kind: str, configs: list[RunConfig]) -> dict[str, Any] | None:
    """The state of the ``kind`` snapshot of ``configs`` at ``path`` (tensors on the CPU); None when there is none, or
    (with a warning) when it cannot be read or is of something else."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if (data.get("format"), data.get("kind"), data.get("identity")) != (FORMAT, kind, identity(configs)):
            raise ValueError("it is a snapshot of other runs, settings or versions")
        return data["state"]
    except Exception as exc:
        ignored(path, exc)
        return None


def ignored(path: str | Path, exc: BaseException) -> None:
    """Warn that the snapshot at ``path`` is not used (``exc`` says why) and the run starts over."""
    warnings.warn(f"snapshot {path} ignored ({type(exc).__name__}: {exc}); the run starts over", RuntimeWarning,
                  stacklevel=3)


def points(history: list[EvalPoint]) -> list[dict[str, Any]]:
    """Evaluation points as plain dicts (a snapshot holds no pickled classes)."""
    return [dataclasses.asdict(p) for p in history]


def restore_points(dicts: list[dict[str, Any]]) -> list[EvalPoint]:
    return [EvalPoint(**d) for d in dicts]


def generator_states(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The states of the torch generators the model's modules hold (a sampled head's), by module and attribute."""
    return {f"{name}:{attr}": value.get_state() for name, module in model.named_modules()
            for attr, value in vars(module).items() if isinstance(value, torch.Generator)}


def set_generator_states(model: torch.nn.Module, states: dict[str, torch.Tensor]) -> None:
    """Put :func:`generator_states` back into ``model``'s generators; KeyError if they are not the same ones."""
    modules = dict(model.named_modules())
    if set(states) != set(generator_states(model)):
        raise KeyError("the model's generators are not the snapshot's")
    for key, value in states.items():
        name, attr = key.rsplit(":", 1)
        getattr(modules[name], attr).set_state(value)


class Schedule:
    """When a run writes its snapshot to ``path`` (None: never): at an evaluation at least ``every`` seconds after
    the last one (or after the run started or resumed in this process). A snapshot that cannot be written (a full
    disk) is warned of once and the run goes on without."""

    def __init__(self, path: str | Path | None, every: float, kind: str = "run"):
        self.path, self.every, self.kind = path, every, kind
        self.last, self.seconds = time.perf_counter(), 0.0  # wall time spent writing snapshots

    def due(self) -> bool:
        return self.path is not None and time.perf_counter() - self.last >= self.every

    def write(self, configs: list[RunConfig], state: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            save(self.path, self.kind, configs, state)
        except OSError as exc:
            warnings.warn(f"snapshot {self.path} not written ({exc}); the run goes on without snapshots",
                          RuntimeWarning, stacklevel=2)
            self.path = None
        self.last = time.perf_counter()
        self.seconds += self.last - t0
