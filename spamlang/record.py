"""The run record: the one interface between training and everything after it (scorer, leaderboards).

A record is a JSON object with a versioned ``schema``; :func:`write` stores it atomically as ``<run_id>.json`` and
:func:`read` refuses files that are not records of a schema this version understands.
"""
from __future__ import annotations

import functools
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import __version__, atomic
from .errors import SpamLangError

SCHEMA = "spamlang.run/1"
#: when a run counts as learned: test accuracy at least this on a deterministic task, else a loss within this many
#: nats of the Bayes loss (shared by the harness's ``steps_to_learn`` and the scorer)
LEARNED_ACCURACY, LEARNED_MARGIN = 0.99, 0.05


def is_learned(accuracy: float | None, loss: float | None, bayes_loss: float | None, deterministic: bool,
               learned_accuracy: float = LEARNED_ACCURACY, margin: float = LEARNED_MARGIN) -> bool:
    """Whether one evaluation meets the learned criterion (missing numbers never do)."""
    if deterministic:
        return accuracy is not None and accuracy >= learned_accuracy
    return loss is not None and bayes_loss is not None and loss <= bayes_loss + margin
STATUSES = ("ok", "diverged", "failed")
REQUIRED = ("schema", "run_id", "config", "task_version", "bayes_loss", "deterministic", "status", "history", "final",
            "env")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree this package runs from, with '-dirty' if it has changes; None if not in git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device_name: str) -> dict[str, Any]:
    import torch
    return {"device": device_name, "torch": torch.__version__, "python": platform.python_version(),
            "spamlang": __version__, "git_commit": git_commit(), "platform": platform.platform()}


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int = 1) -> str:
    """Strict JSON (non-finite numbers as null)."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False, default=str)


def write(record: dict, folder: str | Path) -> Path:
    """Store ``record`` as ``folder/<run_id>.json``, atomically."""
    path = Path(folder) / f"{record['run_id']}.json"
    atomic.write_text(path, to_json(record) + "\n")
    return path


def check(record: Any, source: str) -> dict:
    """Return ``record`` if it is a run record of this schema, else raise SpamLangError naming ``source``."""
    if not isinstance(record, dict) or "schema" not in record:
        raise SpamLangError(f"{source}: not a SpamLang run record (no 'schema' key)")
    if record["schema"] != SCHEMA:
        raise SpamLangError(f"{source}: record schema {record['schema']!r} is not supported (this version reads "
                            f"{SCHEMA!r})")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise SpamLangError(f"{source}: run record lacks {', '.join(missing)}")
    if record["status"] not in STATUSES:
        raise SpamLangError(f"{source}: unknown status {record['status']!r}")
    if not isinstance(record["config"], dict) or not isinstance(record["final"], dict) \
            or not isinstance(record["history"], list) or not all(isinstance(p, dict) for p in record["history"]):
        raise SpamLangError(f"{source}: malformed run record (config and final must be objects, history a list of "
                            f"objects)")
    return record


def read(path: str | Path) -> dict:
    """Load and check one record file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpamLangError(f"{path}: not readable as JSON ({exc})") from None
    return check(data, str(path))
