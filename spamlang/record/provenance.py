"""Where a run ran: device, library versions, the commit of the source and the time."""
from __future__ import annotations

import datetime
import functools
import platform
import subprocess
from pathlib import Path

from spamlang import __version__
from spamlang.record import Env


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree this package runs from, with '-dirty' if the package's own files have changes
    (results, docs and tests beside it do not count); None if not in git."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device_name: str, threads: int | None = None, ensemble: bool = False) -> Env:
    """Where a run ran: device, library versions, commit, platform, the intra-op threads torch used and whether it
    trained in an ensemble."""
    import torch
    return Env(device=device_name, torch=torch.__version__, python=platform.python_version(), spamlang=__version__,
               git_commit=git_commit(), platform=platform.platform(), threads=threads, ensemble=ensemble)


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
