"""Benchmark of `spamlang measure`'s per-token part against a plain materialise-everything PyTorch version.

Run:  pytest benchmarks/test_measure_perf.py --benchmark-only

At V = 50,257, D = 768 (GPT-2 small's head), N = 1,024 tokens, both compute every token's destroyed ratio
‖g - g Q Qᵀ‖/‖g‖ and kept cosine in float32 from the hidden states H (N, D), the head W (V, D), its orthonormal
basis Q (V, D) and the targets:
- plain: logits H Wᵀ (N, V), softmax, G, G Q Qᵀ (N, V) and the row norms, everything materialised at once;
- probe: ``spamlang.measure.pertoken.per_token``, streamed over token chunks with ‖g - gQQᵀ‖² = ‖g‖² - ‖gQ‖².
``test_per_token_time`` puts the speed ratio plain / probe (target >= 1) in extra_info, ``test_per_token_memory``
the peak-memory ratio probe / plain (target <= 1/8; CPU: each in a fresh process, from its resident-set
high-water mark, as in test_perf.py; CUDA: max_memory_allocated). Machines are shared and noisy: report ratios only.
"""
from __future__ import annotations

import gc
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_perf import peak_rss, reset_peak_rss

from spamlang.measure.pertoken import per_token

V, D, N = 50_257, 768, 1024
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
_results: dict[tuple, float] = {}


def plain(h, y, w, q):
    """Every (N, V) matrix materialised: logits, G, its kept part and the residual."""
    g = F.softmax(h @ w.T, dim=1)  # (N, V)
    g[torch.arange(len(y), device=g.device), y] -= 1
    kept = (g @ q) @ q.T  # (N, V)
    norm = g.norm(dim=1)
    return (g - kept).norm(dim=1) / norm, kept.norm(dim=1) / norm


def inputs(device: str):
    gen = torch.Generator(device).manual_seed(0)
    h = torch.empty(N, D, device=device).normal_(generator=gen)
    q = torch.linalg.qr(torch.empty(V, D, device=device).normal_(generator=gen))[0]  # (V, D) orthonormal
    w = q @ torch.empty(D, D, device=device).normal_(generator=gen)  # (V, D), col(W) = col(Q)
    y = torch.randint(0, V, (N,), device=device, generator=gen)
    return h, y, w, q


def run(variant: str, args) -> None:
    if variant == "plain":
        plain(*args)
    else:
        per_token(*args[:3], args[3])
    if args[0].is_cuda:
        torch.cuda.synchronize()


def _ratio(benchmark, key, value, numerator, denominator, label):
    _results[key] = value
    if numerator in _results and denominator in _results:
        benchmark.extra_info[label] = _results[numerator] / _results[denominator]
        print(f"\n{label} = {benchmark.extra_info[label]:.3f}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["plain", "probe"])
def test_per_token_time(benchmark, variant, device):
    args = inputs(device)
    destroyed_plain = plain(*args)[0]
    destroyed_probe = per_token(*args)["destroyed"]
    torch.testing.assert_close(destroyed_probe.float(), destroyed_plain, atol=1e-4, rtol=0)
    benchmark.pedantic(run, args=(variant, args), rounds=3, warmup_rounds=1)
    tokens_per_s = N / benchmark.stats.stats.median
    benchmark.extra_info["tokens_per_s"] = tokens_per_s
    _ratio(benchmark, ("time", variant, device), tokens_per_s, ("time", "probe", device), ("time", "plain", device),
           "speedup")


def peak_bytes(variant: str, device: str) -> int:
    """Peak bytes above the inputs of one per-token pass (a fresh process on the CPU)."""
    args = inputs(device)
    run(variant, (args[0][:8], args[1][:8] % 64, args[2][:64], args[3][:64]))  # first-call buffers are not the pass's
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        baseline = peak_rss()
    run(variant, args)
    return (torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss()) - baseline


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["plain", "probe"])
def test_per_token_memory(benchmark, variant, device):
    def measure():
        if device == "cuda":
            return peak_bytes(variant, device)
        out = subprocess.run([sys.executable, __file__, variant], check=True, capture_output=True, text=True)
        return int(out.stdout.split()[-1])
    peak = benchmark.pedantic(measure, rounds=1)
    benchmark.extra_info["peak_bytes"] = peak
    print(f"\n{variant} per-token pass on {device}: peak {peak / 2**20:,.0f} MiB above the inputs")
    _ratio(benchmark, ("memory", variant, device), peak, ("memory", "probe", device), ("memory", "plain", device),
           "memory_ratio")


if __name__ == "__main__":  # the CPU memory probe: python test_measure_perf.py {plain,probe}
    print(peak_bytes(sys.argv[1], "cpu"))
