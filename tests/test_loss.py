"""The chunked fused loss equals F.cross_entropy of the full logits, in value and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spamlang.loss import default_chunk_size, linear_cross_entropy, logit_gradient

# float64 is ~1000x tighter than float32, not 1e-12: torch 2.13's first multi-threaded float64 exp in a process is
# occasionally off by ~1e-9 (a torch issue, seen with plain torch.exp)
TOLERANCE = {torch.float64: dict(rtol=1e-7, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def inputs(n, d, v, dtype, ignored=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype).requires_grad_()
    w = torch.randn(v, d, generator=gen, dtype=dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    if ignored:
        t[::5] = -100
    return x, w, t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("v,chunk", [(97, None), (97, 1), (97, 7), (1000, 64), (1000, 999), (1024, 128), (333, 500)])
def test_matches_cross_entropy(dtype, v, chunk):
    x, w, t = inputs(203, 24, v, dtype)
    ref = F.cross_entropy(x @ w.T, t)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x, w))
    out = linear_cross_entropy(x, w, t, chunk_size=chunk)
    gx, gw = torch.autograd.grad(out, (x, w))
    assert out.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
    torch.testing.assert_close(out, ref, **TOLERANCE[dtype])
    torch.testing.assert_close(gx, ref_gx, **TOLERANCE[dtype])
    torch.testing.assert_close(gw, ref_gw, **TOLERANCE[dtype])


def test_upstream_gradient_scales_and_partial_requires_grad():
    x, w, t = inputs(50, 8, 40, torch.float64)
    w.requires_grad_(False)
    (3.5 * linear_cross_entropy(x, w, t, chunk_size=16)).backward()
    ref_x = x.detach().clone().requires_grad_()
    (3.5 * F.cross_entropy(ref_x @ w.T, t)).backward()
    torch.testing.assert_close(x.grad, ref_x.grad, **TOLERANCE[torch.float64])
    assert w.grad is None


def test_no_grad_value_and_large_logits():
    x, w, t = inputs(64, 8, 300, torch.float64, ignored=False)
    x = x.detach() * 40  # logits in the thousands: the log-sum-exp must stay finite
    with torch.no_grad():
        out = linear_cross_entropy(x, w, t, chunk_size=10)
    assert not out.requires_grad
    torch.testing.assert_close(out, F.cross_entropy(x @ w.T, t), **TOLERANCE[torch.float64])


def test_half_precision_inputs_give_grads_in_their_dtype():
    x, w, t = inputs(40, 16, 100, torch.float32)
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    out = linear_cross_entropy(xb, w, t, chunk_size=16)
    out.backward()
    assert out.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    torch.testing.assert_close(out, F.cross_entropy(xb.float() @ w.T, t), rtol=1e-5, atol=1e-5)


def test_rejects_mismatched_shapes():
    x, w, t = inputs(10, 8, 20, torch.float32)
    with pytest.raises(ValueError):
        linear_cross_entropy(x, w[:, :4], t)
    with pytest.raises(ValueError):
        linear_cross_entropy(x, w, t[:5])


def test_logit_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(30, 50, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (30,), generator=gen)
    t[3] = -100
    (ref,) = torch.autograd.grad(F.cross_entropy(z, t), z)
    torch.testing.assert_close(logit_gradient(z.detach(), t), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast():
    x, w, t = inputs(300, 32, 5000, torch.float32)
    xb = x.detach().cuda().to(torch.bfloat16).requires_grad_()
    w, t = w.detach().cuda().requires_grad_(), t.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = linear_cross_entropy(xb, w, t)
    out.backward()
    ref_x, ref_w = xb.detach().float().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_x @ ref_w.T, t)
    ref.backward()
    assert out.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xb.grad.float(), ref_x.grad, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-4, atol=1e-6)


def test_second_backward_raises_instead_of_rescaling():
    """Backward scales the saved gradients in place; reusing the graph must fail loudly, not double-scale."""
    x, w, t = inputs(20, 4, 9, torch.float64)
    out = linear_cross_entropy(x, w, t)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        out.backward()


def test_default_chunks_hold_at_least_128_rows_under_the_byte_cap():
    """2**22 logits per chunk at small V (a whole small batch in one chunk), at least 128 rows at huge V (thinner
    chunks make the weight gradient's passes memory-bound), never more than 256 MiB of logits."""
    cpu = torch.device("cpu")
    assert default_chunk_size(256, cpu) == 2**14 and default_chunk_size(32_768, cpu) == 128
    assert default_chunk_size(131_072, cpu) == 128 and default_chunk_size(131_072, cpu, itemsize=8) == 128
    assert default_chunk_size(2**21, cpu) == 32 and default_chunk_size(2**21, cpu, itemsize=8) == 16
    assert default_chunk_size(2**31, cpu) == 1
    assert default_chunk_size(131_072, cpu, min_rows=1) == 32  # checkpointed heads keep their own floor
