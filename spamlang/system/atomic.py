"""Atomic writes: a file or folder appears complete under its final name, or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from spamlang.errors import SpamLangError

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


def check_output_folder(out: str | os.PathLike) -> None:
    """Refuse (SpamLangError) an output folder that is a file, the root of the file system or a folder above the
    working folder (as ``generate`` refuses them); the working folder itself and folders below or beside it are fine."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpamLangError(f"output {out} is a file, not a folder; give a folder path")
    here, target = Path.cwd().resolve(), out.resolve()
    if target == Path(target.anchor) or target in here.parents:
        raise SpamLangError(f"refusing to write into {out}: it is the root of the file system or a folder above the "
                            f"working folder; give a folder of its own")


def check_replaceable(out: Path, force: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse (SpamLangError) to write ``what`` at ``out`` unless that replaces nothing the tool did not write.

    ``out`` may be missing or an empty folder; with ``force`` it may also be a folder for which ``is_ours`` is True (a
    previous output of the same kind, and nothing else). A regular file, the working folder and any folder above it
    are never replaced.
    """
    if out.exists() and not out.is_dir():
        raise SpamLangError(f"output {out} is a file, not a folder; give a new folder path")
    here, target = Path.cwd().resolve(), out.resolve()
    if target == here or target in here.parents:
        raise SpamLangError(f"refusing to write into {out}: it is the working folder or one above it; "
                            f"give a new folder path")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise SpamLangError(f"output folder {out} exists and is not empty (--force replaces a previous {what})")
    if not is_ours(out):
        raise SpamLangError(f"--force replaces only a folder that holds nothing but a previous {what}; {out} holds "
                            f"other files, so it was left as it is")


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, force: bool, is_ours: Callable[[Path], bool] = lambda path: False,
                  what: str = "output"):
    """Yield a temporary sibling folder to fill; on success it takes the place of ``out``, on any failure it is
    removed and ``out`` is left as it was.

    ``out`` must pass :func:`check_replaceable`. An existing ``out`` is renamed aside, the new folder renamed into its
    place, and only then is the old one deleted.
    """
    out = Path(out)
    check_replaceable(out, force, is_ours, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, FOLDER_MODE)
    try:
        yield tmp
        check_replaceable(out, force, is_ours, what)  # nothing else appeared there meanwhile
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", suffix=".tmp", dir=out.parent))
            os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old / out.name, out)
                old.rmdir()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
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
