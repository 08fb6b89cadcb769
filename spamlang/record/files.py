"""Run records on disk: one JSON file per run, written atomically and validated on read."""
from __future__ import annotations

from pathlib import Path

from spamlang.errors import SpamLangError
from spamlang.record import RunRecord
from spamlang.system import atomic


def write(record: RunRecord, folder: str | Path) -> Path:
    """Store ``record`` as ``folder/<run_id>.json``, atomically."""
    path = Path(folder) / f"{record.run_id}.json"
    atomic.write_text(path, record.to_json() + "\n")
    return path


def read(path: str | Path) -> RunRecord:
    """Load and validate one record file (SpamLangError naming the file otherwise)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpamLangError(f"{path}: not readable as JSON ({exc})") from None
    return RunRecord.from_json(text, str(path))


def read_replaceable(path: str | Path) -> RunRecord | None:
    """The record at ``path`` (None if there is no file), which a new run of the same id may replace; a file there
    that is not a record this version reads is never replaced: SpamLangError names it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read(path)
    except SpamLangError as exc:
        raise SpamLangError(f"{exc}; it is kept as it is and its run not redone (move it away to redo the run)") \
            from None
