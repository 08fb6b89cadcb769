"""Atomic writes: a file or folder appears complete under its final name, or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import SpamLangError

#: permissions of what is published: readable by all, writable by the owner
FILE_MODE, FOLDER_MODE = 0o644, 0o755


def write_text(path: str | os.PathLike, text: str, mode: int = FILE_MODE) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, with permissions ``mode``."""
    write_bytes(path, text.encode(), mode)


def write_bytes(path: str | os.PathLike, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename; the file gets
    permissions ``mode`` (mkstemp makes it private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, force: bool):
    """Yield a temporary sibling folder to fill; on success it replaces ``out``, on any failure it is removed.

    An existing non-empty ``out`` is an error unless ``force``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SpamLangError(f"output folder {out} exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, FOLDER_MODE)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def cache_folder(out: str | os.PathLike):
    """Yield a temporary sibling folder to fill; on success it becomes ``out`` unless another process published
    ``out`` first (then ours is dropped: a cache entry is the same whoever builds it). On failure nothing remains."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, FOLDER_MODE)
    try:
        yield tmp
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
