"""Resource checks before work: a run's estimated memory and a corpus's disk size against what the machine has.

The estimates are deliberately simple upper-end figures of what dominates, so that a run which cannot fit is refused
in one line before it starts, instead of failing in the allocator minutes later. Available memory is read from the
kernel (``MemAvailable``, a cgroup limit, ``ulimit -v``) or from CUDA; no third-party library is needed for that.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .config import RunConfig
from .errors import SpamLangError

FLOAT = 4  # bytes of a float32
#: a run is refused when its estimate exceeds this share of the memory available
HEADROOM = 0.9


def human(n: float) -> str:
    """Bytes as a short decimal figure: ``512.0 GB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def parameter_count(config: RunConfig) -> int:
    """Exact parameter count of the run's model, built on the ``meta`` device (no memory is allocated)."""
    import torch

    from .model import LanguageModel
    with torch.device("meta"):
        model = LanguageModel(config)
    return sum(p.numel() for p in model.parameters())


def run_memory(config: RunConfig, device_type: str = "cpu") -> dict[str, int]:
    """Estimated bytes of one training run, by part: ``parameters`` (weights, gradients and two AdamW moments, float32,
    twice: the ``update_cosine`` diagnostic steps a copy of the model and its optimizer),
    ``activations`` (what the backbone keeps for backward, attention scores included), ``logits`` (the largest block
    of logits alive at once: a training chunk of the fused loss, an evaluation chunk, or the diagnostics' logit
    gradient with the SVD of the head matrix) and ``total``."""
    from .loss import ACCELERATOR_CHUNK_ELEMENTS, CHUNK_ELEMENTS, MIN_CHUNK_ROWS
    V, D, T, B = config.vocab_size, config.d_model, config.seq_len, config.batch_size
    params = parameter_count(config)
    per_token_layer = 16 * max(D, config.width) + config.n_heads * T  # residual, MLP (4D), norms; attention scores
    activations = B * T * config.layers * per_token_layer * FLOAT
    chunk = max(CHUNK_ELEMENTS.get(device_type, ACCELERATOR_CHUNK_ELEMENTS), MIN_CHUNK_ROWS * V)
    train_logits = 3 * chunk * FLOAT  # logits, probabilities, gradient
    eval_logits = 3 * max(1 << 22, T * V) * FLOAT
    diagnostics = 3 * config.diag_tokens * V * 8 + 3 * V * max(D, config.width) * 8  # float64 G, G Q Qᵀ; SVD of W
    parts = {"parameters": 2 * 4 * params * FLOAT, "activations": activations,
             "logits": max(train_logits, eval_logits, diagnostics)}
    return {**parts, "total": sum(parts.values())}


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


def check_run(config: RunConfig, device_type: str = "cpu", index: int | None = None, copies: int = 1) -> None:
    """Refuse (SpamLangError, with the numbers) a run whose estimated memory, times ``copies`` running side by side,
    exceeds what the device has available."""
    need = run_memory(config, device_type)
    free = available_memory(device_type, index)
    if free is None or copies * need["total"] <= HEADROOM * free:
        return
    parts = ", ".join(f"{k} {human(v)}" for k, v in need.items() if k != "total")
    side = f" x {copies} runs side by side" if copies > 1 else ""
    raise SpamLangError(f"a run of V={config.vocab_size}, D={config.d_model}, head {config.head} needs about "
                        f"{human(need['total'])}{side} ({parts}) but {device_type} has {human(free)} available; "
                        f"lower the vocabulary size, width, batch size or workers")


def check_disk(out: str | os.PathLike, size: int, what: str) -> None:
    """Refuse (SpamLangError, with the numbers) to write ``size`` bytes at ``out`` when its disk has less free."""
    folder = Path(out).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if size > free:
        raise SpamLangError(f"{what} needs {human(size)} of disk but {folder} has {human(free)} free")
