"""Where a run computes: choosing the device, its name in records, TF32 on CUDA, bf16 autocast, and waiting for it."""
from __future__ import annotations

import contextlib

import torch

from spamlang.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
                 "mps": bool(mps and mps.is_available())}
    if not available.get(device.type, False):
        raise ConfigError(f"device '{name}' was requested but is not available on this machine")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu" if device.type == "cpu" else device.type


@contextlib.contextmanager
def precision(device: torch.device):
    """On CUDA, let float32 matmuls and convolutions use TF32 inside the block (restored after it)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(mode: str, device: torch.device):
    """bf16 autocast when ``mode`` (a run's ``precision``) is bf16, or auto on CUDA; otherwise nothing (fp32)."""
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings measure work done, not work queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
