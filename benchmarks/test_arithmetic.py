"""How close a training step and the LM head come to the arithmetic limit: their time against ``torch.mm`` alone on
the same matrix products, interleaved round by round in the same test.

Run:  pytest benchmarks/test_arithmetic.py --benchmark-only      (plain ``pytest`` collects only tests/)

- ``test_small_step``: one training step (``Trainer.train_step``: sampling, forward, fused loss, backward, clipping,
  fused AdamW) of spam at V = 256, 1,024 and 4,096 (D = 32, 2-layer transformer, T = 16, batch 64, one thread, as every
  run of the CPU suites), and torch.mm / torch.bmm alone on every matrix product of that step with its shapes: the
  backbone's linear layers and attention's two products, forward and both backward products each, and the head's
  three (logits H Wᵀ, grad H = G W, grad W = Gᵀ H). extra_info: ``step_ms``, ``mm_ms``, ``step_over_mm`` (1 would
  be the arithmetic limit) and ``overhead_ms`` (the difference: dispatch, element-wise kernels, the optimizer).
- ``test_head``: the fused head (``linear_cross_entropy`` forward + backward, default chunks) at V = 32,768 and
  131,072, D = 64, on 2,048 positions (T = 2, batch 2,048: one predictable position a row), one thread, against
  torch.mm on its three products at full size. extra_info: ``head_gflops``, ``mm_gflops`` and ``head_over_mm`` =
  head GFLOP/s / mm GFLOP/s (target >= 0.8). The V = 131,072 arm takes 3 rounds of ~3 s.

Medians of the interleaved rounds; CPU time of the process (``time.process_time``, one thread), which a shared
machine's other work disturbs less than wall time. No assertion on times.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

from spamlang.config import RunConfig
from spamlang.loss import linear_cross_entropy
from spamlang.system.threads import using
from spamlang.training.trainer import Trainer

HEAD_D, HEAD_N = 64, 2048


def products(trainer: Trainer) -> list[tuple[int, int, int, int]]:
    """(batch, m, k, n) of every matrix product of one training step of ``trainer``'s model (transformer backbone,
    linear head): forward, and the two products of each backward."""
    c = trainer.config
    tokens = c.batch_size * (c.seq_len - 1)  # the backbone's inputs
    positions = c.batch_size * int(trainer.mask.sum())  # the head's
    out = []
    for module in trainer.model.backbone.modules():
        if isinstance(module, nn.Linear):
            i, o = module.in_features, module.out_features
            out += [(1, tokens, i, o), (1, tokens, o, i), (1, o, tokens, i)]
    t, heads = c.seq_len - 1, c.n_heads
    d = c.d_model // heads
    for _ in range(c.layers):  # scores Q Kᵀ and their product with V, forward and backward
        out += [(c.batch_size * heads, t, d, t), (c.batch_size * heads, t, t, d)] * 3
    v, dm = c.vocab_size, c.d_model
    return out + [(1, positions, dm, v), (1, positions, v, dm), (1, v, positions, dm)]


def mm_arm(shapes: list[tuple[int, int, int, int]]):
    """A closure running torch.mm / torch.bmm on preallocated operands of each shape, and the FLOPs it does."""
    gen = torch.Generator().manual_seed(0)
    ops = []
    for b, m, k, n in shapes:
        a, w = torch.randn(b, m, k, generator=gen), torch.randn(b, k, n, generator=gen)
        ops.append((a[0], w[0], torch.empty(m, n)) if b == 1 else (a, w, torch.empty(b, m, n)))

    def run():
        for a, w, o in ops:
            (torch.mm if a.dim() == 2 else torch.bmm)(a, w, out=o)
    return run, sum(2.0 * b * m * k * n for b, m, k, n in shapes)


def interleaved(benchmark, arms: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Run the arms one after another each round (``benchmark`` times a whole round); median CPU seconds per arm."""
    times = {name: [] for name in arms}

    def one_round():
        for name, fn in arms.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup)
    return {name: statistics.median(ts[warmup:]) for name, ts in times.items()}


@pytest.mark.parametrize("vocab", [256, 1024, 4096])
def test_small_step(benchmark, vocab):
    with using(1):
        trainer = Trainer(RunConfig(task="spam", vocab_size=vocab, steps=10**6, device="cpu"))
        steps = iter(range(10**6))
        mm, flops = mm_arm(products(trainer))
        seconds = interleaved(benchmark, {"step": lambda: trainer.train_step(next(steps)).item(), "mm": mm},
                              rounds=60, warmup=10)
    info = {"step_ms": seconds["step"] * 1e3, "mm_ms": seconds["mm"] * 1e3,
            "step_gflops": flops / seconds["step"] / 1e9,
            "step_over_mm": seconds["step"] / seconds["mm"], "overhead_ms": (seconds["step"] - seconds["mm"]) * 1e3}
    benchmark.extra_info.update(info)
    print(f"\nV={vocab}: " + ", ".join(f"{k} {v:.2f}" for k, v in info.items()))


@pytest.mark.parametrize("vocab", [32_768, 131_072])
def test_head(benchmark, vocab):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(HEAD_N, HEAD_D, generator=gen).requires_grad_()
    w = (torch.randn(vocab, HEAD_D, generator=gen) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (HEAD_N,), generator=gen)
    xd, wd = x.detach(), w.detach()

    def head():
        x.grad = w.grad = None
        linear_cross_entropy(x, w, y).backward()

    def mm():
        z = xd @ wd.T  # (N, V) logits
        z @ wd, z.T @ xd  # grad H, grad W

    with using(1):
        seconds = interleaved(benchmark, {"head": head, "mm": mm}, rounds=3 if vocab > 65_536 else 7)
    flops = 3 * 2.0 * HEAD_N * HEAD_D * vocab
    info = {"head_gflops": flops / seconds["head"] / 1e9, "mm_gflops": flops / seconds["mm"] / 1e9,
            "head_over_mm": seconds["mm"] / seconds["head"]}
    benchmark.extra_info.update(info)
    print(f"\nV={vocab}: " + ", ".join(f"{k} {v:.2f}" for k, v in info.items()))
