"""Heads: registry, ranks, losses, the gradient-only control and the logit gradient G of each head."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spamlang.errors import ConfigError
from spamlang.heads.base import HEADS, head_params

V, D, R = 50, 8, 3
ALL = ["linear", "lowrank", "tied", "gradproj", "mos"]


def make(name, vocab=V, d=D, rank=R, seed=0, **params):
    torch.manual_seed(seed)
    cls = HEADS.get(name)
    head = cls(vocab, d, rank if cls.uses_rank else None, nn.Embedding(vocab, d), head_params(cls, params))
    return head.double()


def batch(n=40, d=D, vocab=V, seed=1):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, vocab, (n,), generator=gen)
    t[::7] = -100
    return h, t


def numerical_rank(m, rtol=1e-9):
    s = torch.linalg.svdvals(m)
    return int((s > rtol * s[0]).sum())


def last_logits(head, h):
    """The logits Z of each head's last linear map, recomputed by hand, and the mean loss as a function of them."""
    if head.name == "mos":
        log_prior = F.log_softmax(h @ head.prior.weight.T, dim=-1)  # (N, K)
        z = (torch.tanh(h @ head.contexts.weight.T).unflatten(-1, (head.k, D)) @ head.weight.T).detach()  # (N, K, V)

        def loss(z, t):
            valid = t != -100
            lp = F.log_softmax(z, -1).gather(-1, t.clamp(min=0)[:, None, None].expand(-1, head.k, 1)).squeeze(-1)
            return -(torch.logsumexp(log_prior + lp, -1) * valid).sum() / valid.sum()
        return z, loss
    w = head.A @ head.B if head.name == "lowrank" else head.weight
    return (h @ w.T).detach(), F.cross_entropy


def test_registry_lists_the_heads():
    assert set(ALL) <= set(HEADS.names())
    assert all(HEADS.description(n) for n in ALL)


@pytest.mark.parametrize("name", ALL)
def test_loss_is_cross_entropy_of_log_probs(name):
    head = make(name)
    h, t = batch()
    torch.testing.assert_close(head.loss(h, t), F.nll_loss(head.log_probs(h), t))
    assert head.log_probs(h).shape == (len(h), V)


@pytest.mark.parametrize("name", ALL)
def test_logit_gradient_matches_autograd(name):
    head = make(name)
    h, t = batch()
    g, q = head.logit_gradient(h, t)
    z, loss = last_logits(head, h)
    z.requires_grad_()
    (ref,) = torch.autograd.grad(loss(z, t), z)
    torch.testing.assert_close(g, ref.reshape(-1, V))
    assert q.shape == (V, head.rank)
    torch.testing.assert_close(q.T @ q, torch.eye(head.rank, dtype=q.dtype))


@pytest.mark.parametrize("name", ALL)
def test_logit_gradient_is_what_the_head_weight_receives(name):
    """Gᵀ X equals the gradient of the last linear map's weight in training (X: that map's input)."""
    head = make(name)
    h, t = batch()
    head.loss(h, t).backward()
    g, _ = head.logit_gradient(h, t)
    if name == "lowrank":
        x, grad = h @ head.B.detach().T, head.A.grad
    elif name == "mos":
        x, grad = torch.tanh(h @ head.contexts.weight.detach().T).reshape(-1, D), head.weight.grad
    else:
        x, grad = h, head.weight.grad
    torch.testing.assert_close(g.T @ x, grad)


@pytest.mark.parametrize("name,forward_rank,backward_rank", [
    ("linear", D, D), ("tied", D, D), ("lowrank", R, R), ("gradproj", D, R), ("mos", None, D)])
def test_ranks(name, forward_rank, backward_rank):
    """Rank of the (many h) x V logit matrix (row-centred log-probs) and of the gradient the backbone receives."""
    head = make(name)
    h = batch(n=5 * D)[0].requires_grad_()
    t = torch.randint(0, V, (len(h),))
    logp = head.log_probs(h)
    centred = logp - logp.mean(dim=1, keepdim=True)
    if forward_rank is None:  # the mixture breaks the softmax bottleneck: rank above D
        assert numerical_rank(centred.detach()) > D + 5
    else:
        assert numerical_rank(centred.detach()) == forward_rank
    head.loss(h, t).backward()
    assert numerical_rank(h.grad) == backward_rank == head.rank


def test_gradproj_forward_equals_linear_with_the_same_weight():
    linear, gradproj = make("linear"), make("gradproj")
    gradproj.weight.data.copy_(linear.weight.data)
    h, t = batch()
    torch.testing.assert_close(gradproj.loss(h, t), linear.loss(h, t))
    torch.testing.assert_close(gradproj.log_probs(h), linear.log_probs(h))


def test_gradproj_backbone_receives_g_w_p_r():
    linear, gradproj = make("linear"), make("gradproj")
    gradproj.weight.data.copy_(linear.weight.data)
    h, t = batch()
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    linear.loss(h1, t).backward()
    gradproj.loss(h2, t).backward()
    w = gradproj.weight.detach()
    g = F.softmax(h @ w.T, dim=-1) - F.one_hot(t.clamp(min=0), V) * 1.0
    g = g * (t != -100)[:, None] / (t != -100).sum()  # (N, V)
    vr = torch.linalg.svd(w, full_matrices=False)[2][:R].T  # (D, r) top right singular vectors
    torch.testing.assert_close(h2.grad, g @ w @ vr @ vr.T)
    torch.testing.assert_close(h1.grad, g @ w)
    assert not torch.allclose(h1.grad, h2.grad)
    torch.testing.assert_close(gradproj.weight.grad, linear.weight.grad)  # W's own gradient is untouched


def test_gradproj_q_is_top_left_singular_subspace():
    head = make("gradproj")
    _, q = head.logit_gradient(*batch())
    u = torch.linalg.svd(head.weight.detach(), full_matrices=False)[0][:, :R]
    torch.testing.assert_close(q @ q.T, u @ u.T)


def test_lowrank_q_comes_from_the_factor():
    head = make("lowrank")
    _, q = head.logit_gradient(*batch())
    a = head.A.detach()
    torch.testing.assert_close(q @ (q.T @ a), a)  # col(A) inside span(Q), with rank(A) = R columns


def test_tied_head_shares_the_embedding():
    emb = nn.Embedding(V, D)
    head = HEADS.get("tied")(V, D, None, emb)
    assert head.weight is emb.weight
    head.loss(torch.randn(10, D), torch.randint(0, V, (10,))).backward()
    assert emb.weight.grad is not None


def test_lowrank_init_scale_matches_linear():
    lin, low = make("linear", vocab=2000, d=64), make("lowrank", vocab=2000, d=64, rank=4)
    ratio = (low.A @ low.B).std() / lin.weight.std()
    assert 0.8 < ratio < 1.25


def test_mos_components_parameter():
    head = make("mos", components=2)
    assert head.k == 2 and head.logit_gradient(*batch())[0].shape == (2 * 40, V)
    with pytest.raises(ConfigError, match="components"):
        head_params(HEADS.get("mos"), {"components": 0})


def test_mos_loss_is_chunked(monkeypatch):
    """A tiny chunk budget splits the tokens into many checkpointed chunks with the same loss and gradient."""
    import spamlang.loss as L
    head = make("mos")
    h, t = batch()
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    full = head.loss(h1, t)
    full.backward()
    monkeypatch.setitem(L.CHUNK_ELEMENTS, "cpu", 3 * head.k * V)
    chunked = head.loss(h2, t)
    chunked.backward()
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(h2.grad, h1.grad)


@pytest.mark.parametrize("name,vocab,d,rank,embed_dim,match", [
    ("linear", 100, 16, 4, 16, "takes no rank"),
    ("tied", 100, 16, 4, 16, "takes no rank"),
    ("mos", 100, 16, 4, 16, "takes no rank"),
    ("tied", 100, 16, None, 8, "embed_dim"),
    ("lowrank", 100, 16, None, 16, "needs a rank"),
    ("lowrank", 100, 16, 0, 16, "head_rank"),
    ("lowrank", 100, 16, 17, 16, "head_rank"),
    ("gradproj", 100, 16, None, 16, "needs a rank"),
    ("gradproj", 100, 16, 0, 16, "head_rank"),
    ("gradproj", 100, 16, 17, 16, "head_rank"),
    ("lowrank", 10, 16, 11, 16, r"min\(d_model, vocab_size\)=10"),
])
def test_check_rejects_impossible_combinations(name, vocab, d, rank, embed_dim, match):
    with pytest.raises(ConfigError, match=match):
        HEADS.get(name).check(vocab, d, rank, embed_dim)


@pytest.mark.parametrize("name,rank,embed_dim", [("linear", None, 8), ("tied", None, 16), ("mos", None, 16),
                                                  ("lowrank", 1, 16), ("lowrank", 16, 16), ("gradproj", 16, 8)])
def test_check_accepts_valid_combinations(name, rank, embed_dim):
    HEADS.get(name).check(100, 16, rank, embed_dim)


def test_rank_may_exceed_nothing_but_min_of_width_and_vocab():
    HEADS.get("lowrank").check(10, 64, 3, 64)  # D > V is fine as long as r <= V
