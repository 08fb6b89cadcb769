"""The run record: the one interface between training and everything after it (scorer, leaderboards).

A record is a JSON object with a versioned ``schema``; :func:`write` stores it atomically as ``<run_id>.json`` and
:func:`read` refuses files that are not records of a schema this version understands.
"""
from __future__ import annotations

import functools
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import __version__, atomic
from .errors import SpamLangError

SCHEMA = "spamlang.run/1"
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


def write(record: dict, folder: str | Path) -> Path:
    """Store ``record`` as ``folder/<run_id>.json``, atomically."""
    path = Path(folder) / f"{record['run_id']}.json"
    atomic.write_text(path, json.dumps(record, indent=1, allow_nan=True) + "\n")
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
    return record


def read(path: str | Path) -> dict:
    """Load and check one record file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpamLangError(f"{path}: not readable as JSON ({exc})") from None
    return check(data, str(path))
