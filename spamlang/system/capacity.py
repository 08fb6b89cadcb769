"""What this machine can hold: the memory a process can still allocate and the free disk, read from the kernel
(``MemAvailable``, a cgroup limit, ``ulimit -v``) or from CUDA; no third-party library is needed for that."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from spamlang.errors import SpamLangError


def human(n: float) -> str:
    """Bytes as a short decimal figure: ``512.0 GB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) * 1024 if found else None


def _cgroup_available() -> int | None:
    """Room left under a cgroup (v2, then v1) memory limit, if one is set."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = int(Path("/sys/fs/cgroup", usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(0, int(limit) - usage)
    return None


def _address_space_available() -> int | None:
    """Room left under ``ulimit -v`` (RLIMIT_AS), if one is set."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        size = re.search(r"^VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return max(0, limit - int(size.group(1)) * 1024) if size else None


def available_memory(device_type: str = "cpu", index: int | None = None) -> int | None:
    """Bytes this process can still allocate on the device (None when the platform does not say)."""
    if device_type == "cuda":
        import torch
        return torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())[0]
    if device_type != "cpu":
        return None
    known = [n for n in (_meminfo_available(), _cgroup_available(), _address_space_available()) if n is not None]
    if not known and hasattr(os, "sysconf"):
        try:
            known = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError):
            pass
    return min(known) if known else None


def check_disk(out: str | os.PathLike, size: int, what: str) -> None:
    """Refuse (SpamLangError, with the numbers) to write ``size`` bytes at ``out`` when its disk has less free."""
    folder = Path(out).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if size > free:
        raise SpamLangError(f"{what} needs {human(size)} of disk but {folder} has {human(free)} free")
