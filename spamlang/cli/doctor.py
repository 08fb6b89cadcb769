"""``spamlang doctor``: what this machine offers SpamLang, for a user on a new machine or a bug report.

Each check is a :class:`Check` (name, ok, detail): library versions and the optional extras, the thread policy,
devices and what they support (bf16 autocast, ``torch.compile``), free memory and disk, whether the tasks, heads and
built-in suites load, and a short measured training throughput. ``ok`` is False only for a problem that stops
SpamLang from working here (a missing required library, a suite that fails to load); a missing extra or device is
reported with ``missing`` set (printed ``--``), not failed.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from spamlang import __version__
from spamlang.cli.app import cli
from spamlang.cli.options import FiniteRange, _fail, _print_json
from spamlang.errors import SpamLangError
from spamlang.training.tracking import TRACKERS

REQUIRED = ("torch", "numpy", "pandas", "click", "tqdm", "jsonschema", "matplotlib")
#: the optional extras (pip install 'spamlang[NAME]') and the packages each needs
EXTRAS = {"ray": ("ray",), "text": ("tokenizers", "gensim", "pyarrow"),
          "hf": ("transformers", "tokenizers", "safetensors", "pyarrow"),
          **{extra: (module,) for module, extra in TRACKERS.values()}}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: an optional part (an extra, a device) that this machine lacks: reported, not a failure
    missing: bool = False

    @property
    def mark(self) -> str:
        return "BAD" if not self.ok else "-- " if self.missing else "ok "


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def libraries() -> list[Check]:
    """Python, spamlang, the required libraries (missing: not ok) and each optional extra (missing: reported)."""
    checks = [Check("python", True, f"{platform.python_version()} ({sys.executable})"),
              Check("spamlang", True, __version__)]
    for package in REQUIRED:
        version = _version(package)
        checks.append(Check(package, version is not None, version or "missing: pip install -e ."))
    for extra, packages in EXTRAS.items():
        missing = [p for p in packages if _version(p) is None]
        detail = (f"installed ({', '.join(f'{p} {_version(p)}' for p in packages)})" if not missing else
                  f"missing {', '.join(missing)}: pip install 'spamlang[{extra}]'")
        checks.append(Check(f"extra [{extra}]", True, detail, missing=bool(missing)))
    return checks


def threads() -> list[Check]:
    """The thread policy's inputs and its choice for a small and a large run (see :mod:`spamlang.system.threads`)."""
    import torch

    from spamlang.system.threads import ENV, SERIAL_FLOPS, available_cores, choose, from_env
    try:
        requested = from_env()
    except SpamLangError as exc:
        return [Check("threads", False, str(exc))]
    policy = (f"{ENV}={requested} for every run" if requested is not None else
              f"1 for runs under {SERIAL_FLOPS:.0e} FLOPs per step, else up to {choose(SERIAL_FLOPS * 10)} "
              f"(the cores idle now, of {available_cores()} usable)")
    return [Check("threads", True, f"{available_cores()} usable cores; torch default {torch.get_num_threads()} "
                                   f"threads; policy: {policy}")]


def devices() -> list[Check]:
    """CPU, CUDA GPUs (name, memory free, bf16), MPS; bf16 autocast and torch.compile's requirements."""
    import torch

    from spamlang.system.capacity import available_memory, human
    free = available_memory("cpu")
    checks = [Check("cpu", True, f"{platform.processor() or platform.machine()}, "
                                 f"{human(free) if free is not None else 'unknown'} memory available")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free_bytes, total = torch.cuda.mem_get_info(i)
            checks.append(Check(f"cuda:{i}", True, f"{torch.cuda.get_device_name(i)}, {human(free_bytes)} of "
                                                   f"{human(total)} free, bf16 {torch.cuda.is_bf16_supported()}"))
    else:
        checks.append(Check("cuda", True, f"not available (torch {torch.__version__}, CUDA build "
                                          f"{torch.version.cuda or 'none'})", missing=True))
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    checks.append(Check("mps", True, "available" if has_mps else "not available", missing=not has_mps))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    checks.append(Check("bf16 autocast (cpu)", True, "works" if product.dtype == torch.bfloat16 else
                        f"matmul gave {product.dtype}"))
    compiler = next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
    checks.append(Check("torch.compile", True, f"available; C compiler for the CPU backend: {compiler or 'none'}"
                        if hasattr(torch, "compile") else "not in this torch"))
    return checks


def storage(folder: str | Path = ".") -> list[Check]:
    """Free disk where results are written."""
    from spamlang.system.capacity import human
    usage = shutil.disk_usage(folder)
    return [Check("disk", True, f"{human(usage.free)} free of {human(usage.total)} at {Path(folder).resolve()}")]


def registries() -> list[Check]:
    """The registered tasks and heads, and whether each built-in suite loads (not ok: one that does not)."""
    from spamlang.heads.base import HEADS
    from spamlang.sweeps.suite import builtin_names, load
    from spamlang.task import TASKS
    checks = [Check("tasks", True, ", ".join(TASKS.names())), Check("heads", True, ", ".join(HEADS.names()))]
    for name in builtin_names():
        try:
            checks.append(Check(f"suite {name}", True, f"loads: {len(load(name).runs)} runs"))
        except SpamLangError as exc:
            checks.append(Check(f"suite {name}", False, str(exc)))
    return checks


def throughput(seconds: float = 2.0, device: str = "cpu") -> Check:
    """Training steps of a small model (spam, V = 2048, D = 64, 2 layers, 64 x 16 tokens) for about ``seconds``:
    tokens and FLOPs per second (the FLOPs model of :func:`spamlang.system.threads.step_flops`)."""
    from spamlang.config import RunConfig
    from spamlang.system.threads import choose, step_flops, using
    from spamlang.training.trainer import Trainer
    config = RunConfig(task="spam", vocab_size=2048, d_model=64, layers=2, seq_len=16, batch_size=64,
                       eval_sequences=8, device=device).resolve()
    with using(choose(step_flops(config))) as count:
        trainer = Trainer(config)
        trainer.train_step(0)  # warm-up
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            trainer.train_step(steps + 1).item()
            steps += 1
        elapsed = time.perf_counter() - started
    tokens = steps * config.batch_size * config.seq_len / elapsed
    return Check("throughput", True, f"{tokens:,.0f} training tokens/s, {steps * step_flops(config) / elapsed:.2e} "
                                     f"FLOP/s ({steps} steps in {elapsed:.1f} s on {count} thread(s), {device})")


def run_checks(seconds: float = 2.0) -> list[Check]:
    """Every check; the throughput one runs for about ``seconds`` (0: skipped)."""
    checks = [*libraries(), *threads(), *devices(), *storage(os.getcwd()), *registries()]
    return checks + ([throughput(seconds)] if seconds > 0 else [])


@cli.command()
@click.option("--seconds", default=2.0, show_default=True, type=FiniteRange(0, 60),
              help="How long the throughput check trains a small model on the CPU (0: skip it).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, ok, detail}.")
def doctor(seconds, as_json):
    """Check this machine for SpamLang: versions and optional extras, the thread policy, devices, bf16 autocast and
    torch.compile, free memory and disk, the tasks, heads and built-in suites, and a short training throughput. Each
    line is marked ok, -- (an optional extra or device this machine lacks) or BAD. Exit status 1 when something
    SpamLang needs is broken (a missing extra or GPU is reported, not an error)."""
    from spamlang.cli.doctor import run_checks
    checks = run_checks(seconds)
    if as_json:
        _print_json(checks)
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{c.mark}  {c.name:<{width}}  {c.detail}")
    bad = [c.name for c in checks if not c.ok]
    if bad:
        _fail(f"{len(bad)} check(s) failed: {', '.join(bad)}", code=1)
