"""The remedy heads (adaptive, sampled, sigsoftmax, classfactor, mlp) against float64 references written here, their
full distributions, parameters, floors, training and every head's declared training compute."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from spamlang.config import RunConfig
from spamlang.errors import ConfigError
from spamlang.heads.base import HEADS, head_params
from spamlang.scoring.floorfit import build_head
from spamlang.scoring.floors import FloorSpec, expressivity_floor
from spamlang.task import make_task
from spamlang.training.loop import train
from spamlang.training.model import LanguageModel
from spamlang.training.resources import parameter_count
from tests.conftest import assert_user_error
from tests.test_heads import D, V, batch  # the same shapes and batches as the other heads' tests

#: each remedy with parameters that suit V, D (the adaptive's tails: 15 tokens of width 4, 25 of width 2)
REMEDIES = {"adaptive": {"cutoffs": "0.2,0.5"}, "sampled": {"negatives": 12}, "sigsoftmax": {},
            "classfactor": {"classes": 6}, "mlp": {"width": 20}}


def make(name, vocab=V, d=D, seed=0, **params):
    torch.manual_seed(seed)
    return build_head(name, vocab, d, None, {**REMEDIES[name], **params})


def next_negatives(head):
    """The negatives the sampled head's next loss call draws, from a copy of its generator."""
    return head.draw(copy.deepcopy(head.generator))


def mean_nll(log_p, t):
    """Mean of -log_p over the non-ignored targets; log_p (N,) holds each row's target log-probability."""
    valid = t != -100
    return -(log_p * valid).sum() / valid.sum()


# -- float64 references: each head's logits Z (the tensor G is taken against) and its loss as a function of them ---
def reference(head, h, t):
    """(Z, loss(Z), the maps M with Z = h Mᵀ where the backbone receives G M, or None)."""
    safe = t.clamp(min=0)
    if head.name == "adaptive":
        a = head.adaptive
        bounds = [0] + list(a.cutoffs)  # 0, c_1, ..., V
        shortlist, k = bounds[1], len(bounds) - 2
        maps = [a.head.weight] + [o.weight @ p.weight for p, o in a.tail]

        def loss(z):
            head_lp = z[:, :shortlist + k].log_softmax(-1)
            columns, at = [head_lp[:, :shortlist]], shortlist + k
            for i in range(k):
                size = bounds[i + 2] - bounds[i + 1]
                columns.append(head_lp[:, shortlist + i, None] + z[:, at:at + size].log_softmax(-1))
                at += size
            return mean_nll(torch.cat(columns, 1).gather(1, safe[:, None]).squeeze(1), t)
        m = torch.cat(maps)
    elif head.name == "sampled":
        negatives, k = next_negatives(head), head.k
        m = head.weight

        def loss(z):  # the log-q correction written out: log(k / V) off every candidate's logit
            correction = math.log(k / V)
            target = z.gather(1, safe[:, None]).squeeze(1) - correction
            others = (z[:, negatives] - correction).masked_fill(negatives == safe[:, None], -math.inf)
            return mean_nll(target - torch.cat([target[:, None], others], 1).logsumexp(1), t)
    elif head.name == "sigsoftmax":
        m = head.weight

        def loss(z):
            p = z.exp() * torch.sigmoid(z)
            return mean_nll((p / p.sum(1, keepdim=True)).log().gather(1, safe[:, None]).squeeze(1), t)
    elif head.name == "classfactor":
        c = head.params.classes
        members = [[v for v in range(V) if v * c // V == k] for k in range(c)]
        m = torch.cat([head.class_weight, head.weight])

        def loss(z):
            class_lp = z[:, :c].log_softmax(-1)
            lp = torch.empty(len(z), V, dtype=z.dtype)
            for k, tokens in enumerate(members):
                lp[:, tokens] = class_lp[:, k, None] + z[:, [c + v for v in tokens]].log_softmax(-1)
            return mean_nll(lp.gather(1, safe[:, None]).squeeze(1), t)
    else:  # mlp: GELU by its definition x Φ(x)
        hidden = h @ head.hidden.T
        m = None
        z = (hidden * 0.5 * (1 + torch.erf(hidden / math.sqrt(2)))) @ head.weight.T
        return z, lambda z: mean_nll(z.log_softmax(-1).gather(1, safe[:, None]).squeeze(1), t), m
    return h @ m.T, loss, m


@pytest.mark.parametrize("name", REMEDIES)
def test_loss_gradients_match_a_float64_reference(name):
    """The head's loss and its gradients w.r.t. h and every parameter, against autograd through the reference."""
    head = make(name).double()
    h, t = batch()
    h.requires_grad_()
    params = list(head.parameters())
    z, loss, _ = reference(head, h, t)
    expected = loss(z)
    ref_grads = torch.autograd.grad(expected, [h] + params)
    got = head.loss(h, t)
    grads = torch.autograd.grad(got, [h] + params)
    torch.testing.assert_close(got, expected)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("name", REMEDIES)
def test_logit_gradient_matches_autograd_and_q_spans_the_maps(name):
    head = make(name).double()
    h, t = batch()
    z, loss, m = reference(head, h, t)
    torch.testing.assert_close(head.logits(h), z)
    z = z.detach().requires_grad_()
    (expected,) = torch.autograd.grad(loss(z), z)
    g, q = head.logit_gradient(h, t)
    torch.testing.assert_close(g, expected)
    assert q.shape == (z.shape[1], head.rank)
    torch.testing.assert_close(q.T @ q, torch.eye(head.rank, dtype=q.dtype))
    m = head.weight if m is None else m  # mlp: the kept subspace is col(W) of its last map
    torch.testing.assert_close(q @ (q.T @ m.detach()), m.detach())


@pytest.mark.parametrize("name", ["adaptive", "sampled", "sigsoftmax", "classfactor"])
def test_the_backbone_receives_g_times_the_maps(name):
    head = make(name).double()
    h, t = batch()
    g, _ = head.logit_gradient(h, t)
    m = reference(head, h, t)[2].detach()
    h.requires_grad_()
    head.loss(h, t).backward()
    torch.testing.assert_close(h.grad, g @ m)


@pytest.mark.parametrize("name", REMEDIES)
def test_log_probs_are_a_distribution_over_all_of_v(name):
    head = make(name)  # float32
    h = 3 * torch.randn(64, D, generator=torch.Generator().manual_seed(2))
    log_p = head.log_probs(h)
    assert log_p.shape == (64, V) and torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["adaptive", "sigsoftmax", "classfactor", "mlp"])
def test_the_training_loss_is_the_cross_entropy_of_log_probs(name):
    head = make(name).double()
    h, t = batch()
    torch.testing.assert_close(head.loss(h, t), F.nll_loss(head.log_probs(h), t))


@pytest.mark.parametrize("name", ["adaptive", "sampled", "sigsoftmax", "classfactor"])
def test_chunked_loss_has_the_same_value_and_gradient(name, monkeypatch):
    """A tiny chunk budget splits the tokens into many checkpointed chunks, some of one row."""
    import spamlang.loss as L
    head = make(name).double()
    h, t = batch(n=41)
    state = head.generator.get_state() if name == "sampled" else None
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    full = head.loss(h1, t)
    full.backward()
    if state is not None:
        head.generator.set_state(state)
    monkeypatch.setitem(L.CHUNK_ELEMENTS, "cpu", 1)
    chunked = head.loss(h2, t)
    chunked.backward()
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(h2.grad, h1.grad)


def test_sampled_negatives_are_distinct_uniform_and_seeded():
    head = make("sampled", negatives=49)
    draws = [next_negatives(head)]
    h, t = batch()
    for _ in range(200):
        head.loss(h.float(), t)
        draws.append(next_negatives(head))
    assert all(len(set(d.tolist())) == 49 and 0 <= int(d.min()) and int(d.max()) < V for d in draws)
    assert len({tuple(d.tolist()) for d in draws}) > 1  # each call draws afresh
    counts = torch.bincount(torch.cat(draws)[::49].long(), minlength=V)  # the first negative of each draw
    assert counts.max() < 4 * 201 / V  # no token favoured
    assert torch.equal(next_negatives(make("sampled", negatives=49)), draws[0])  # the same seed, the same draws
    assert not torch.equal(next_negatives(make("sampled", negatives=49, seed=1)), draws[0])


def test_sampled_logit_gradient_leaves_the_generator_alone():
    head = make("sampled")
    before = head.generator.get_state()
    head.logit_gradient(*batch())
    assert torch.equal(head.generator.get_state(), before)
    head.loss(batch()[0].float(), batch()[1])
    assert not torch.equal(head.generator.get_state(), before)


def test_sampled_accidental_hits_are_left_out():
    """With k = V - 1 negatives, a position whose target was drawn is scored among the drawn tokens (its target counted
    once), one whose target was not among all V."""
    head = make("sampled", negatives=V - 1).double()
    h, t = batch()
    negatives = next_negatives(head)
    missing = [v for v in range(V) if v not in negatives.tolist()]
    t[1:6] = missing[0]
    z = h @ head.weight.detach().T
    safe = t.clamp(min=0)
    drawn = torch.isin(safe, negatives)
    assert drawn[t != -100].any() and not drawn[t != -100].all()
    nll = torch.where(drawn, z[:, negatives].logsumexp(1), z.logsumexp(1)) - z.gather(1, safe[:, None]).squeeze(1)
    torch.testing.assert_close(head.loss(h, t), mean_nll(-nll, t))


def test_the_cli_lists_the_remedies_with_their_parameters(run_cli):
    out = run_cli("heads")
    assert out.code == 0
    lines = {line.split()[0]: line for line in out.out.splitlines() if line.strip()}
    rows = {r["name"]: r for r in json.loads(run_cli("heads", "--json").out)}
    for name, declared in [("adaptive", ["cutoffs", "div_value"]), ("sampled", ["negatives"]), ("sigsoftmax", []),
                           ("classfactor", ["classes"]), ("mlp", ["width"])]:
        assert name in lines and HEADS.description(name) in lines[name]
        assert [p["name"] for p in rows[name]["params"]] == declared
        for p in declared:
            assert any(line.strip().startswith(f"{p}=") for line in out.out.splitlines())
        assert not rows[name]["uses_rank"]


@pytest.mark.parametrize("name", REMEDIES)
def test_a_tiny_training_run_completes(name):
    record = train(RunConfig(task="spam", vocab_size=64, d_model=16, steps=30, head=name, device="cpu"))
    assert record.status == "ok"
    losses = [p.train_loss for p in record.history[1:]] + [p.test_loss for p in record.history]
    assert losses and all(math.isfinite(x) for x in losses)
    assert record.rank == build_head(name, 64, 16, None).rank
    assert record.final.update_cosine is not None and math.isfinite(record.final.grad_destroyed)


@pytest.mark.parametrize("name", REMEDIES)
def test_the_model_builds_on_the_meta_device_for_its_parameter_count(name):
    """The resource check counts parameters of the model built on "meta" (``spamlang train`` runs it first)."""
    config = RunConfig(task="spam", vocab_size=64, d_model=16, head=name)
    with torch.random.fork_rng():
        expected = sum(p.numel() for p in LanguageModel(config).parameters())
    assert parameter_count(config) == expected


def test_sampled_training_is_deterministic():
    config = RunConfig(task="spam", vocab_size=32, d_model=8, steps=8, eval_every=4, eval_sequences=16,
                       head="sampled", head_params={"negatives": 4}, device="cpu")
    first, second = train(config), train(config)
    assert [p.train_loss for p in first.history] == [p.train_loss for p in second.history]
    assert first.final.loss == second.final.loss


@pytest.mark.parametrize("name,params,vocab,d,field", [
    ("sampled", {"negatives": 64}, 64, 16, "negatives"),
    ("sampled", {"negatives": 0}, 64, 16, "negatives"),
    ("mlp", {"width": 0}, 64, 16, "width"),
    ("classfactor", {"classes": 0}, 64, 16, "classes"),
    ("classfactor", {"classes": 65}, 64, 16, "classes"),
    ("adaptive", {"cutoffs": "0.5,0.25"}, 64, 16, "cutoffs"),
    ("adaptive", {"cutoffs": "half"}, 64, 16, "cutoffs"),
    ("adaptive", {"cutoffs": "0.25,1.0"}, 64, 16, "cutoffs"),
    ("adaptive", {"cutoffs": "0.001"}, 64, 16, "cutoffs"),  # rounds to cut-off 0
    ("adaptive", {"cutoffs": "0.5,0.505"}, 64, 16, "cutoffs"),  # both round to 32
    ("adaptive", {"div_value": 8.0}, 64, 16, "div_value"),  # tail 2 of width 16 // 64 = 0
    ("adaptive", {"div_value": 0.5}, 64, 16, "div_value"),
    ("sigsoftmax", {"k": 1}, 64, 16, "takes no parameters"),
])
def test_bad_parameters_are_refused_naming_the_field(name, params, vocab, d, field):
    with pytest.raises(ConfigError, match=field) as error:
        RunConfig(task="spam", vocab_size=vocab, d_model=d, head=name, head_params=params).resolve()
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=field):
        build_head(name, vocab, d, None, params)


def test_the_cli_refuses_too_many_negatives_in_one_line(run_cli, tmp_path):
    result = run_cli("train", "--task", "spam", "--vocab-size", 16, "--d-model", 8, "--steps", 1, "--head", "sampled",
                     "--head-param", "negatives=16", "--out", tmp_path)
    assert_user_error(result, "negatives", "[1, 15]")


@pytest.mark.parametrize("name,params,d,expected", [
    ("sampled", {}, 16, 16), ("sigsoftmax", {}, 16, 15), ("mlp", {}, 16, 16), ("mlp", {"width": 5}, 16, 5),
    ("classfactor", {}, 16, 9), ("classfactor", {"classes": 64}, 16, 16), ("classfactor", {"classes": 40}, 16, 0),
    ("adaptive", {}, 16, 4), ("adaptive", {"div_value": 4.0}, 16, 1)])
def test_declared_forward_ranks(name, params, d, expected):
    """At V = 64: classfactor gives up one coordinate per class of two or more tokens (C = 8: 7; C = 40: 24 of
    them); adaptive one per tail cluster and no more than a tail narrower than its cluster (widths 8 and 4, or 4
    and 1)."""
    assert FloorSpec(make_task("spam"), 64, 16, name, d, None, params).forward_rank == expected


def emulate(head, u, x):
    """Set the head's weights and return hidden states (N, D) whose log-probabilities are (or, in the limit its
    declaration describes, approach) those of the rank-r linear head with weights u (V, r) at x (N, r)."""
    r, z = u.shape[1], x @ u.T  # z (N, V): the linear head's logits
    h = torch.zeros(len(x), head.d_model, dtype=x.dtype)
    h[:, :r] = x
    if head.name == "sigsoftmax":  # one more coordinate adds a large constant c: f(z + c) -> z + c
        head.weight[:] = 0
        head.weight[:, :r], head.weight[:, r] = u, 1
        h[:, r] = 40
    elif head.name == "mlp":  # (2 / eps) W GELU(eps A h) -> W A h
        eps = 1e-4
        head.hidden[:] = 0
        head.hidden[:r, :r] = eps * torch.eye(r)
        head.weight[:] = 0
        head.weight[:, :r] = 2 / eps * u
    elif head.name == "classfactor":  # one coordinate per class of two or more tokens carries its log-sum-exp
        members = [head.members[j][~head.padding[j]] for j in range(head.c)]
        multi = [j for j in range(head.c) if len(members[j]) >= 2]
        free, ref = (multi[1:], multi[0]) if len(multi) == head.c else (multi, None)
        head.weight[:] = 0
        head.weight[:, :r] = u
        head.class_weight[:] = 0
        for j in range(head.c):
            if len(members[j]) == 1:
                head.class_weight[j, :r] = u[members[j][0]]
        shift = 0 if ref is None else z[:, members[ref]].logsumexp(1)
        for k, j in enumerate(free):
            head.class_weight[j, r + k] = 1
            h[:, r + k] = z[:, members[j]].logsumexp(1) - shift
    else:  # adaptive: the shortlist and the tails read x, one coordinate per cluster carries its log-sum-exp
        a = head.adaptive
        bounds = [0] + list(a.cutoffs)
        shortlist = bounds[1]
        a.head.weight[:] = 0
        a.head.weight[:shortlist, :r] = u[:shortlist]
        for i, (projection, output) in enumerate(a.tail):
            tokens = slice(bounds[i + 1], bounds[i + 2])
            a.head.weight[shortlist + i, r + i] = 1
            h[:, r + i] = z[:, tokens].logsumexp(1)
            projection.weight[:] = 0
            projection.weight[:r, :r] = torch.eye(r)
            output.weight[:] = 0
            output.weight[:, :r] = u[tokens]
    return h


@pytest.mark.parametrize("name,d,params", [
    ("sigsoftmax", 3, {}), ("mlp", 2, {"width": 2}), ("classfactor", 5, {"classes": 4}),
    ("classfactor", 6, {"classes": 12}), ("adaptive", 8, {"cutoffs": "0.25,0.5"})])
def test_a_head_reaches_the_linear_heads_of_its_declared_forward_rank(name, d, params):
    """The construction behind each declaration, with one coordinate fewer it is not declared: at V = 16, rank 2
    (classfactor with 4 classes of 4 tokens spends 3 coordinates, with 12 classes the 4 classes of 2 tokens; the
    adaptive head one coordinate per tail cluster, whose widths 4 and 2 read x)."""
    spam = make_task("spam")
    assert FloorSpec(spam, 16, 16, name, d, None, params).forward_rank == 2
    assert FloorSpec(spam, 16, 16, name, d - 1, None, params).forward_rank < 2
    gen = torch.Generator().manual_seed(3)
    u = 2 * torch.randn(16, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    target = (x @ u.T).log_softmax(1)
    head = build_head(name, 16, d, None, params).double()
    with torch.no_grad():
        log_p = head.log_probs(emulate(head, u, x))
    assert float((target.exp() * (target - log_p)).sum(1).mean()) < 1e-6


@pytest.mark.parametrize("name", ["sampled", "sigsoftmax", "classfactor", "mlp", "adaptive"])
def test_spam_has_an_analytic_zero_floor(name):
    out = expressivity_floor(FloorSpec(make_task("spam"), 64, 16, name, 16, None))
    assert out["method"] == "analytic" and out["floor"] == 0.0


def test_a_one_wide_tail_cluster_has_an_estimated_floor_well_above_zero():
    """A width-1 tail scores its tokens along one line: only its two end tokens can be the most likely, so most of
    a cluster of 8 cannot be predicted with certainty (V = 16, D = 4: tails of 4 and 8 tokens, widths 2 and 1)."""
    out = expressivity_floor(FloorSpec(make_task("spam"), 16, 16, "adaptive", 4, None, {"cutoffs": "0.25,0.5"}))
    assert out["method"] == "estimated" and out["exhaustive"]
    assert out["floor"] > 0.1


def count_macs(name, vocab, d, rank, params):
    """Multiply-adds of one training loss and backward per position, counted by torch's FLOP counter (in-place
    addmm, which it skips, counted as addmm), on targets covering every token equally."""
    def addmm_(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs):
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    torch.manual_seed(0)
    head = HEADS.get(name).build(vocab, d, rank, nn.Embedding(vocab, d), params)
    n = 4 * vocab
    h = torch.randn(n, d, requires_grad=True)
    with flop_counter.FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_}) as counter:
        head.loss(h, torch.arange(n) % vocab).backward()
    return counter.get_total_flops() / 2 / n


@pytest.mark.parametrize("name,rank,params,uncounted", [
    ("linear", None, {}, 0), ("tied", None, {}, 0), ("lowrank", 3, {}, 0), ("mos", None, {"components": 2}, 0),
    ("gradproj", 3, {}, -256 * 16 ** 2 / 1024),  # the per-step WᵀW (V D² multiply-adds), left out
    ("adaptive", None, {}, 0), ("sigsoftmax", None, {}, 0), ("classfactor", None, {}, 0), ("mlp", None, {}, 0),
    ("sampled", None, {}, 4 * 16)])  # the target's logit, a row-wise product the counter does not see
def test_train_macs_is_the_counted_matrix_work(name, rank, params, uncounted):
    declared = HEADS.get(name).train_macs(256, 16, rank, head_params(HEADS.get(name), params))
    assert declared == pytest.approx(count_macs(name, 256, 16, rank, params) + uncounted)
