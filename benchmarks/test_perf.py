"""Performance benchmarks: SpamLang's training step and fused loss against a plain PyTorch loop.

Run:  pytest benchmarks/ --benchmark-only     (plain ``pytest`` collects only tests/)

What it measures, in a head-dominated setting (V = 32,768, D = 64, 2-layer transformer, batch 64 x 16 tokens):
- ``test_train_step``: one full training step (forward, backward, AdamW step) of (a) a plain loop, nn.Linear head +
  F.cross_entropy + AdamW defaults, and (b) SpamLang's harness itself (``Trainer.train_step``: data sampled on the
  device, ``linear`` head with the chunked fused loss, gradient clipping, schedule, fused AdamW).
  extra_info holds tokens/s and, once both have run, the ratio SpamLang / plain (target >= 2).
- ``test_peak_memory``: one loss + backward at V = 262,144, D = 64, 1,024 tokens, plain (x @ Wᵀ then
  F.cross_entropy) vs ``linear_cross_entropy``: peak memory above the inputs (CPU: each in a fresh subprocess, from
  its resident-set high-water mark; CUDA: max_memory_allocated). extra_info holds the ratio fused / plain (target
  <= 1/8). On Linux a child's ru_maxrss starts at its parent's RSS (kept across fork and exec), so the child resets
  its high-water mark (/proc/self/clear_refs) and reads VmHWM; elsewhere it falls back to ru_maxrss.
CUDA variants are skipped without a GPU.
"""
from __future__ import annotations

import gc
import resource
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spamlang.backbones.base import BACKBONES
from spamlang.config import RunConfig
from spamlang.loss import linear_cross_entropy
from spamlang.training.trainer import Trainer

V, D, LAYERS, N_HEADS, T, BATCH = 32_768, 64, 2, 4, 16, 64
MEMORY_V, MEMORY_TOKENS = 262_144, 1024
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
_results: dict[tuple, float] = {}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _record_ratio(benchmark, key: tuple, value: float, numerator: tuple, denominator: tuple, label: str) -> None:
    """Store this run's value; once both variants have run, put their ratio in extra_info and print it."""
    _results[key] = value
    if numerator in _results and denominator in _results:
        ratio = _results[numerator] / _results[denominator]
        benchmark.extra_info[label] = ratio
        print(f"\n{label} = {ratio:.3f}")


def train_step(loop: str, device: str):
    """A closure running one training step of the plain loop (a fixed batch) or of SpamLang's harness itself
    (``Trainer.train_step``: sampling on the device, masking, the fused loss, clipping, the schedule, fused AdamW)."""
    torch.manual_seed(0)
    if loop == "spamlang":
        # seq_len T + 1: the harness predicts tokens 1..T of each row, the same B x T positions as the plain loop
        trainer = Trainer(RunConfig(task="spam", vocab_size=V, d_model=D, layers=LAYERS, n_heads=N_HEADS,
                                    seq_len=T + 1, batch_size=BATCH, eval_sequences=8, device=device))
        steps = iter(range(10**9))
        return lambda: (trainer.train_step(next(steps)), _sync(device))
    transformer = BACKBONES.get("transformer")
    backbone = transformer(transformer.Config(vocab_size=V, d_model=D, embed_dim=D, layers=LAYERS, seq_len=T,
                                              n_heads=N_HEADS))
    head = nn.Linear(D, V, bias=False)
    model = nn.ModuleList([backbone, head]).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.randint(0, V, (2, BATCH, T), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")  # as the harness on CUDA

    def step():
        with autocast:
            loss = F.cross_entropy(head(backbone(x)).flatten(0, 1), y.flatten())  # (B T, V) logits -> scalar
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _sync(device)
    return step


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loop", ["plain", "spamlang"])
def test_train_step(benchmark, loop, device):
    step = train_step(loop, device)
    benchmark.pedantic(step, rounds=15, warmup_rounds=3)
    tokens_per_s = BATCH * T / benchmark.stats.stats.median
    benchmark.extra_info["tokens_per_s"] = tokens_per_s
    print(f"\n{loop} on {device}: {tokens_per_s:,.0f} tokens/s")
    _record_ratio(benchmark, (loop, device), tokens_per_s, ("spamlang", device), ("plain", device),
                  "speedup_tokens_per_s")


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """This process's resident-set high-water mark in bytes."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def loss_and_backward(variant: str, device: str) -> int:
    """Peak bytes above the inputs of one loss + backward at V = MEMORY_V (run in a fresh process on CPU)."""
    gen = torch.Generator(device).manual_seed(0)
    warm_x = torch.randn(8, D, device=device, requires_grad=True)  # first-call buffers are not the loss's
    F.cross_entropy(warm_x @ warm_x.T, torch.zeros(8, dtype=torch.long, device=device)).backward()
    x = torch.randn(MEMORY_TOKENS, D, device=device, generator=gen, requires_grad=True)
    # in place: a freed temporary would lift the high-water mark above the baseline and hide the loss's peak
    w = torch.empty(MEMORY_V, D, device=device).normal_(std=0.02, generator=gen).requires_grad_()
    y = torch.randint(0, MEMORY_V, (MEMORY_TOKENS,), device=device, generator=gen)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        baseline = peak_rss()
    loss = F.cross_entropy(x @ w.T, y) if variant == "plain" else linear_cross_entropy(x, w, y)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    return peak_rss() - baseline


def peak_memory(variant: str, device: str) -> int:
    if device == "cuda":
        return loss_and_backward(variant, device)
    out = subprocess.run([sys.executable, __file__, variant], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["plain", "fused"])
def test_peak_memory(benchmark, variant, device):
    peak = benchmark.pedantic(peak_memory, args=(variant, device), rounds=1)
    benchmark.extra_info["peak_bytes"] = peak
    print(f"\n{variant} loss + backward on {device}: peak {peak / 2**20:,.0f} MiB above the inputs")
    _record_ratio(benchmark, (variant, device), peak, ("fused", device), ("plain", device), "memory_ratio")


if __name__ == "__main__":  # the CPU memory probe: python test_perf.py {plain,fused}
    print(loss_and_backward(sys.argv[1], "cpu"))
